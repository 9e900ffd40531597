"""What a score can be, wherever it is quoted: the PSNR of an image identical to its target.

A module of its own, without imports, so that a message outside the evaluation (``--degset`` and ``--tarset``
naming one folder, :mod:`utils.data.pairing`) quotes the cap without loading the metrics (torch, scikit-image,
SciPy); :mod:`utils.eval.metrics` computes with it and exports it.
"""

MAX_PSNR = 100.0  # dB, reported for identical images (an infinite PSNR) and the most any pair scores
