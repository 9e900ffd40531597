"""Train BaryIR on several processes with ``torchrun`` (NCCL on GPUs, gloo on the CPU).

One node, 3 GPUs; a rank that dies is restarted and the run continues from its newest checkpoint::

    torchrun --nproc_per_node=3 --rdzv-backend=c10d --rdzv-endpoint=localhost:9833 --max-restarts=3 \\
        trainer_bary_ddp.py --batchSize=3 --nEpochs=65 --de_type derain dehaze deblur denoise_25 lowlight \\
        --patch_size=144 --step=35 --backbone=BaryNet --resume auto

Two nodes of 4 GPUs (the same command on each node)::

    torchrun --nnodes=2 --nproc_per_node=4 --rdzv-id=bary --rdzv-backend=c10d --rdzv-endpoint=HOST0:29500 \\
        --max-restarts=3 trainer_bary_ddp.py ... --resume auto --output-dir /nfs/checkpoint

``--batchSize`` is per process. Rank 0 prints and writes checkpoints; ``--resume auto`` needs
``--output-dir`` on a file system every node sees. Started without torchrun it trains as one
process. The training engine is :mod:`utils.train.engine`, shared with ``trainer_bary.py``.
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
    with lean_shutdown():  # each rank ends about a second sooner
        # the reference's DDP trainer defaults to 4 loader workers per process
        sys.exit(main(get_args_parser(threads_default=4, objective="ddp").parse_args()))
