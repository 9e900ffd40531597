"""The small-scale study of BaryIR's claims (``bench/study.py``, ``STUDY.md``), one module per part.

- :mod:`utils.study.arms`: the tasks, the arms (network and objective), the comparisons, parameter counts;
- :mod:`utils.study.budget`: iterations and seeds (full and ``--quick``), the cost of a run, the printed plan;
- :mod:`utils.study.runs`: one (arm, seed) run: trained, evaluated, embedded, cached; the ``--out`` folder;
- :mod:`utils.study.probe`: the probe's views and embeddings, the logistic-regression probe;
- :mod:`utils.study.stats`: paired differences, their tests and verdicts, the summary over seeds;
- :mod:`utils.study.report`: the markdown tables and the figures;
- :mod:`utils.study.errors`: the study's errors.

``bench/study.py`` is the command line (its flags, and ``main``, which runs these in order).
"""
