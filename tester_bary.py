"""Evaluate a BaryIR (or Restormer) checkpoint, or restore your own images.

Three modes, and defaults for running it with no arguments at all:

    # as the reference's `python tester_bary.py`: the authors' checkpoint
    # (checkpoint/model_allBaryNet__61_1.0_5D.pt) if present, else the newest under checkpoint/,
    # on every paper task present under data/test; each choice is printed
    python tester_bary.py

    # the benchmark (docs/METHOD.md §4 layout under --data-root), one table for all tasks
    python tester_bary.py --model checkpoint/model.pth --data-root data/test \\
        --tasks denoise_15 denoise_25 denoise_50 derain dehaze deblur lowlight

    # one folder of degraded images against their targets (the reference's flags)
    python tester_bary.py --model ckpt.pth --degset data/test/derain/Rain100L/input/ \\
        --tarset data/test/derain/Rain100L/target/ --save results/derain/OUT --savetar results/derain/TAR

    # restore images without targets (no metrics)
    python tester_bary.py --model ckpt.pth --input photos/ --save restored/

Results (the protocol, a row per task or set, per-image numbers) go to
``<save>/results.{json,csv,md}``; restored PNGs to ``<save>/<row>/`` (``--tasks``) or ``<save>/``
(``--degset``/``--input``), named ``NAME.png`` after the input ``NAME.EXT`` (inputs sharing a name:
``a.png`` -> ``a.png``, ``a.jpg`` -> ``a_jpg.png``). ``--input`` photos are turned upright by their
EXIF orientation tag; benchmark images are read as stored, as the reference reads them. The flags
are :mod:`utils.eval.options`, the engine :mod:`utils.eval.tester` (tasks, protocol, evaluation, report and
outputs beside it).

Safety: the output folders are checked before the model is loaded (writable; not equal to or inside
a folder the run reads, unless ``--overwrite``; never at the path of an image the run reads, even with
``--overwrite``); files are written whole then renamed into place,
so a symbolic link at an output path is replaced, never written through. An unreadable image stops
the run after writing the results so far (marked partial), or with ``--skip-bad-files`` is left out
and listed; an output that cannot be written (a full disk) stops it so too. Every failure the user
can fix is one ``error:`` line and a non-zero exit status (2 for flags that cannot work); ``--debug``
shows the traceback.
"""
import sys

from utils.errors import UsageError, run_main, stopped_while_starting  # noqa: F401  (the script's names)

with stopped_while_starting():
    from utils.checkpoints import default_model  # noqa: F401
    from utils.eval.options import REFERENCE_MODEL, get_args_parser  # noqa: F401  (as callers use them)
    from utils.eval.tester import RunStopped, main  # noqa: F401
    from utils.runtime import lean_shutdown, stop_signals_as_interrupt, tune_cpu_allocator

if __name__ == "__main__":
    tune_cpu_allocator()  # reuse freed activation memory instead of page-faulting it in again
    stop_signals_as_interrupt()  # kill / timeout / a closed terminal: the results so far are written, as on Ctrl-C
    with lean_shutdown():  # the process ends about a second sooner
        cli_args = get_args_parser().parse_args()
        sys.exit(run_main(main, cli_args, debug=cli_args.debug))
