"""trainer_bary_ddp.py under torchrun: 2 CPU processes (gloo) train, agree, save once, resume."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_data import make_train_tree, train_flags

from utils.checkpoints import list_checkpoints

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(TORCHRUN is None or not torch.distributed.is_available(),
                                 reason="torchrun / torch.distributed not available")]


def torchrun(flags: list[str], port: int) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
           str(REPO / "trainer_bary_ddp.py"), *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_identically_save_once_and_resume(tmp_path):
    data = make_train_tree(tmp_path / "data")
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "2"]
    first = torchrun(flags + ["--nEpochs", "1", "--gpus=0"], free_port())
    assert first.returncode == 0, first.stdout + first.stderr
    # the reference DDP trainer ignores --gpus (it would put every rank on one GPU): so do we, once, aloud
    assert (first.stdout + first.stderr).count("--gpus 0 is ignored under torchrun") == 1
    ckpt_dir = tmp_path / "ckpt"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["epoch_001.pth"]
    assert first.stdout.count("=> checkpoint ") == 1  # rank 0 alone prints and saves
    assert "2 processes, backend gloo" in first.stdout

    second = torchrun(flags + ["--nEpochs", "2", "--resume", "auto"], free_port())
    assert second.returncode == 0, second.stdout + second.stderr
    assert "continuing at epoch 2" in second.stdout
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["epoch_001.pth", "epoch_002.pth"]

    epochs = [json.loads(line) for line in (ckpt_dir / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:  # the sha256 digests of both ranks' BaryNet + Potentials bytes
        assert len(r["rank_digests"]) == 2 and r["rank_digests"][0] == r["rank_digests"][1]
    ck = torch.load(ckpt_dir / "epoch_002.pth", weights_only=True)
    assert (ck["epoch"], ck["global_step"]) == (2, 4)
    # trainer_bary_ddp.py trains the reference DDP trainer's objective, and says so in every checkpoint
    assert (ck["args"]["objective"], ck["args"]["reg_weight"], ck["args"]["potentials_steps"],
            ck["args"]["contrastive_eps"]) == ("ddp", 0.02, 1, 1e-6)
    assert all(torch.isfinite(v).all() for v in ck["potentials"].values())
