"""One rank of the 2-process objective test (run by tests/test_objective.py, not by pytest).

Usage: python _objective_worker.py RANK WORLD PORT OUT_DIR OBJECTIVE
Builds the tiny BaryNet and Potentials of ``objective_case`` in float64, runs ONE engine
iteration under DistributedDataParallel (gloo), and rank 0 saves both state dicts.
"""
import os
import sys

import torch
import torch.distributed as dist
from objective_case import LAMBDAS, batch_for_rank, nets
from torch.nn.parallel import DistributedDataParallel

from utils.train.distributed import DistInfo, cleanup
from utils.train.iteration import Training, train_step
from utils.train.losses import OBJECTIVES
from utils.train.optim import build_optimizer


def main(rank: int, world: int, port: int, out_dir: str, objective: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    info = DistInfo(rank=rank, world_size=world)
    model, pots = nets()
    ddp = DistributedDataParallel(model)
    training = Training(ddp, model, pots, build_optimizer("RMSprop", model.parameters(), 1e-4),
                        build_optimizer("RMSprop", pots.parameters(), 1e-4), LAMBDAS, info=info,
                        objective=OBJECTIVES[objective])
    train_step(training, batch_for_rank(rank))
    if rank == 0:
        torch.save({"model": model.state_dict(), "potentials": pots.state_dict()}, os.path.join(out_dir, "rank0.pt"))
    dist.barrier()
    # The engine's teardown: nothing may hold the group when it is destroyed. A DDP wrapper left alive
    # (here it was a local while destroy_process_group ran) is freed at interpreter exit, and its gloo
    # threads' destruction there once aborted a rank: "terminate called without an active exception".
    del training, ddp, model, pots
    cleanup(info)


if __name__ == "__main__":
    r, w, p, out, obj = sys.argv[1:6]
    main(int(r), int(w), int(p), out, obj)
