"""trainer_bary_ddp.py under torchrun: 2 CPU processes (gloo) train, agree, save once, resume."""
import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from _processes import TORCHRUN, descendants, free_port, kill_tree, run_script
from _train_data import make_train_tree, train_flags

from utils.checkpoints import list_checkpoints

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(TORCHRUN is None or not torch.distributed.is_available(),
                                 reason="torchrun / torch.distributed not available")]


def torchrun(flags: list[str], port: int) -> subprocess.CompletedProcess:
    return run_script([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
                       str(REPO / "trainer_bary_ddp.py"), *flags], timeout=300)


def test_two_processes_train_identically_save_once_and_resume(tmp_path):
    data = make_train_tree(tmp_path / "data")
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "2", "--tensorboard"]
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

    # Rank 0 alone chooses the checkpoint to start from; when it cannot, the other rank stops with it.
    wrong = torchrun(flags + ["--nEpochs", "3", "--resume", str(tmp_path / "nope.pth")], free_port())
    said = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and said.count("no such file or folder; nothing was written") == 1, said
    [line] = [line for line in said.splitlines() if line.startswith("error:")]  # rank 1 stops quietly
    assert line.startswith(f"error: --resume {tmp_path / 'nope.pth'}: no such file or folder; nothing was written")
    # A failure every rank meets alike is one error line (rank 0's), not one per rank: a bad flag found by argparse
    # or by the checks after the process group formed, and data missing.
    for bad in (["--batchSize", "abc"], ["--lr", "-1"], ["--derain_dir", str(tmp_path / "nowhere")]):
        done = torchrun(flags + ["--nEpochs", "3"] + bad, free_port())
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
        assert done.returncode != 0 and len(errors) == 1, (bad, done.stdout + done.stderr)

    # TensorBoard: rank 0 alone writes (one event file per run), and the resumed run continues the curves
    from test_tensorboard import read_events, steps
    assert len(list((ckpt_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    board = read_events(ckpt_dir / "tensorboard")
    assert steps(board, "loss/map") == [1, 2, 3, 4] and steps(board, "train/lr") == [1, 2, 3, 4]
    assert steps(board, "epoch/map") == [2, 4]  # one point per epoch, at its last global step


def readme_rendezvous(port: int) -> list[str]:
    """The torchrun flags of the README's 2-GPU DDP command (rendezvous, restarts), on ``port``."""
    from test_readme import COMMANDS
    cmd = next(c for c in COMMANDS if c.startswith("CUDA_VISIBLE_DEVICES=0,1 torchrun"))
    words = shlex.split(cmd)
    flags = words[words.index("torchrun") + 1:words.index("trainer_bary_ddp.py")]
    return [re.sub(r"(localhost)?([:=])9833$", rf"127.0.0.1\g<2>{port}" if "localhost" in f else rf"\g<2>{port}", f)
            for f in flags if not f.startswith("--nproc_per_node")]


def rank_pid(launcher: subprocess.Popen, local_rank: int, deadline: float) -> int:
    """The PID of the first attempt's rank ``local_rank`` under ``launcher`` (torchrun)."""
    want = {f"LOCAL_RANK={local_rank}".encode(), b"TORCHELASTIC_RESTART_COUNT=0"}
    while time.monotonic() < deadline:
        for pid in descendants(launcher.pid):
            try:
                env = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= env:
                return pid
        time.sleep(0.05)
    raise AssertionError("rank not found")


def test_a_killed_rank_is_restarted_and_the_run_ends_as_if_uninterrupted(tmp_path):
    """The README's elastic command: SIGKILL one rank after the first checkpoint; torchrun restarts both,
    they resume from the newest checkpoint, and the final weights equal an uninterrupted run's, which
    here runs as two one-process "nodes" meeting through c10d on this machine."""
    data = make_train_tree(tmp_path / "data")
    common = ["--iters-per-epoch", "6", "--nEpochs", "2", "--save-every", "2", "--resume", "auto"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    port = free_port()
    nodes = [subprocess.Popen([TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv-id=nodes", "--rdzv-backend=c10d",
                               f"--rdzv-endpoint=127.0.0.1:{port}", "trainer_bary_ddp.py",
                               *train_flags(data, tmp_path / "nodes"), *common],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        outputs = [n.communicate(timeout=150)[0] for n in nodes]
    finally:  # a timeout must not leave both agents and their ranks running into the next tests
        for n in nodes:
            if n.poll() is None:
                kill_tree(n.pid)
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(outputs)
    assert "2 processes, backend gloo" in "".join(outputs)

    killed = subprocess.Popen([TORCHRUN, "--nproc_per_node=2", *readme_rendezvous(free_port()), "trainer_bary_ddp.py",
                               *train_flags(data, tmp_path / "killed"), *common],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120  # the whole run takes about 40 s
        while not (tmp_path / "killed" / "ckpt" / "iter_e001_i000002.pth").exists():
            assert time.monotonic() < deadline and killed.poll() is None, "no first checkpoint"
            time.sleep(0.02)
        os.kill(rank_pid(killed, 1, deadline), signal.SIGKILL)
        output = killed.communicate(timeout=150)[0]
    finally:
        if killed.poll() is None:  # only a live process: a reaped one's pid may belong to another by now
            kill_tree(killed.pid)
    assert killed.returncode == 0, output
    assert "=> resumed " in output and "continuing " in output  # at an epoch, or after a mid-epoch checkpoint
    done = torch.load(tmp_path / "killed" / "ckpt" / "epoch_002.pth", weights_only=True)
    ref = torch.load(tmp_path / "nodes" / "ckpt" / "epoch_002.pth", weights_only=True)
    assert done["global_step"] == ref["global_step"] == 12
    for part in ("model", "potentials"):
        assert all(torch.equal(done[part][k], ref[part][k]) for k in ref[part]), part


def start_time(pid: int) -> str | None:
    """``pid``'s start time (from /proc) while it runs; None once it has ended (gone, or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def test_ranks_whose_torchrun_is_killed_save_stop_and_the_run_resumes(tmp_path):
    """torchrun killed outright (kill -9, the OOM killer): its ranks went on training with no parent, holding
    the output folder (a resume was refused as in use) and, on GPUs, the devices. Now each stops as SIGTERM
    stops it: a checkpoint, the folder released, exit; ``--resume auto`` continues from there."""
    data = make_train_tree(tmp_path / "data")
    flags = train_flags(data, tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    said = tmp_path / "output.txt"  # a file, not a pipe: the ranks go on writing after torchrun is gone
    with said.open("w") as out:
        launcher = subprocess.Popen([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1",
                                     f"--master_port={free_port()}", str(REPO / "trainer_bary_ddp.py"), *flags,
                                     "--nEpochs", "5"],  # minutes: far longer than the wait below
                                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    ranks: dict[int, str | None] = {}
    try:
        log = tmp_path / "ckpt" / "log.jsonl"
        deadline = time.monotonic() + 120
        while not (log.is_file() and log.read_text().count('"kind": "iter"') >= 2):
            assert time.monotonic() < deadline and launcher.poll() is None, said.read_text()
            time.sleep(0.05)
        ranks = {pid: start_time(pid) for pid in (rank_pid(launcher, r, deadline) for r in (0, 1))}
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 30  # the save takes a second or two
        while any(start_time(pid) == started for pid, started in ranks.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid, started in ranks.items() if start_time(pid) == started]
    finally:  # neither torchrun nor its ranks may run into the next tests
        for pid, started in ranks.items():
            if started is not None and start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            kill_tree(launcher.pid)
    output = said.read_text()
    assert not left, f"ranks {left} outlived torchrun by 30 s:\n{output[-3000:]}"
    stop = re.search(r"=> stopped by torchrun's death at epoch 1, iteration (\d+); continue with --resume auto",
                     output)
    assert stop, output[-3000:]
    done = int(stop.group(1))
    assert 2 <= done < 10
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == [f"iter_e001_i{done:06d}.pth"]

    resumed = torchrun(flags + ["--nEpochs", "1", "--iters-per-epoch", "20", "--resume", "auto"], free_port())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr  # not "in use by another trainer"
    assert f"0 epochs done and {done} iterations of batch 3 x 2 processes of epoch 1; continuing after them" \
        in resumed.stdout
    steps = [json.loads(line)["global_step"] for line in log.read_text().splitlines()
             if json.loads(line)["kind"] == "iter"]
    assert steps == list(range(1, 21))  # every iteration once


def test_a_signal_to_one_rank_is_named_with_its_rank(tmp_path):
    """SIGTERM to rank 1 alone stops every rank after the same iteration; rank 0, which prints, said
    "stopped by signal None" (its own signal: none)."""
    data = make_train_tree(tmp_path / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    launcher = subprocess.Popen([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1",
                                 f"--master_port={free_port()}", str(REPO / "trainer_bary_ddp.py"),
                                 *train_flags(data, tmp_path), "--nEpochs", "5"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        log = tmp_path / "ckpt" / "log.jsonl"
        deadline = time.monotonic() + 120
        while not (log.is_file() and log.read_text().count('"kind": "iter"') >= 2):
            assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()[0]
            time.sleep(0.05)
        os.kill(rank_pid(launcher, 1, deadline), signal.SIGTERM)
        output = launcher.communicate(timeout=120)[0]
    finally:
        if launcher.poll() is None:
            kill_tree(launcher.pid)
    assert launcher.returncode == 0, output
    assert re.search(r"=> stopped by SIGTERM to rank 1 at epoch 1, iteration \d+; continue with --resume auto",
                     output), output[-3000:]
