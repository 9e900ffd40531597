"""Train BaryIR on one device (GPU or CPU).

    python trainer_bary.py --de_type denoise_15 denoise_25 denoise_50 derain dehaze --batchSize 4
    python trainer_bary.py --preset tiny --device cpu --iters-per-epoch 50 --nEpochs 2   # a CPU smoke run
    python trainer_bary.py ... --resume auto                                               # continue

The work is done by :mod:`utils.train.engine`, which ``trainer_bary_ddp.py`` shares; see
``python trainer_bary.py --help`` for every flag.
"""
import sys

from utils.errors import stopped_while_starting
from utils.train.signals import stop_with_the_launcher

stop_with_the_launcher()  # before torch loads: a rank whose torchrun dies stops as SIGTERM stops it

with stopped_while_starting():
    from utils.runtime import lean_shutdown, stop_signals_as_interrupt
    from utils.train.engine import run_cli
    from utils.train.options import get_args_parser


def main(args):
    return run_cli(args)


if __name__ == "__main__":
    stop_signals_as_interrupt()  # kill / timeout before training starts: one line; training installs its own stop
    with lean_shutdown():  # the process ends about a second sooner
        sys.exit(main(get_args_parser().parse_args()))
