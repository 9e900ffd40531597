"""utils/train/distributed.py: the collectives training needs, between two real processes (gloo, spawned: no
torchrun, a few seconds), and what a process alone or on another node sees.

The ranks are spawned, not forked: a fork of a pytest worker copies whatever locks its other threads hold
(xdist's channel, gloo or OpenMP threads of earlier tests), which can hang the child."""
import multiprocessing
import os
import queue
import traceback

import pytest
import torch
import torch.distributed as dist
from _processes import free_port

from utils.train.distributed import (
    DistInfo,
    all_reduce_sum,
    average_gradients,
    broadcast_int,
    broadcast_module,
    broadcast_text,
    cleanup,
    elastic_store,
    gather_ints,
    init_distributed_mode,
    weights_digest,
)


def as_torchrun_rank(rank: int, port: int) -> None:
    """This spawned process is ``rank`` of two, with the environment torchrun would give it."""
    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)


def run_pair(target, answers: int) -> list:
    """Spawn ``target(rank, port, results)`` for ranks 0 and 1 and return the first ``answers`` of what they put
    in ``results``; fails the test when they do not answer within 60 s. Both processes are gone on return."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=target, args=(rank, port, results)) for rank in range(2)]
    for p in procs:
        p.start()
    try:
        return [results.get(timeout=60) for _ in range(answers)]
    except queue.Empty:
        pytest.fail(f"the two ranks gave fewer than {answers} answers within 60 s")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def small_net(rank: int) -> torch.nn.Module:
    """A Linear and a BatchNorm (a buffer) whose values depend on ``rank``."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (rank + 1) + i)
        net[1].running_mean.fill_(rank + 1.0)
    return net


def one_rank(rank: int, port: int, results) -> None:
    try:
        as_torchrun_rank(rank, port)
        said = {"log": []}
        info = init_distributed_mode("cpu", log=said["log"].append)
        net = small_net(rank)
        broadcast_module(net, info)
        params = [torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4, dtype=torch.float64)),
                  torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(5))]
        params[0].grad = torch.full((2, 3), rank + 1.0)  # ranks 1 and 2: mean 1.5
        params[1].grad = torch.arange(4, dtype=torch.float64) * (1 + 2 * rank)  # x1 and x3: mean x2
        params[3].grad = torch.full((5,), 10.0 * rank)  # 0 and 10: mean 5 (params[2] has no gradient)
        average_gradients(params, info)
        said |= {"info": info, "int": broadcast_int(7 + rank, info), "text": broadcast_text(f"from rank {rank}", info),
                 "sum": all_reduce_sum(torch.tensor([rank + 1.0, 2.0]), info).tolist(),
                 "gathered": gather_ints(100 + rank, info), "digest": weights_digest(net),
                 "grads": [p.grad.tolist() if p.grad is not None else None for p in params]}
        cleanup(info)
        said["left"] = not dist.is_initialized()
        results.put((rank, said))
    except BaseException:
        results.put((rank, traceback.format_exc()))


def test_two_ranks_agree_on_rank_0s_values_sums_means_and_weights():
    """The seed and the checkpoint path are rank 0's, the logged losses and validation scores sums over ranks,
    the Potentials' gradients the mean, every rank's weights rank 0's, and the epoch record's digests in rank
    order."""
    said = dict(run_pair(one_rank, answers=2))
    for rank in range(2):
        assert isinstance(said[rank], dict), said[rank]
        assert said[rank]["info"] == DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        assert said[rank]["log"] == (["=> distributed: 2 processes, backend gloo"] if rank == 0 else [])
        assert said[rank]["left"]  # the process group is left at the end
        assert said[rank]["int"] == 7 and said[rank]["text"] == "from rank 0"
        assert said[rank]["sum"] == [3.0, 4.0] and said[rank]["gathered"] == [100, 101]
        assert said[rank]["grads"] == [[[1.5] * 3] * 2, [0.0, 2.0, 4.0, 6.0], None, [5.0] * 5]
        assert said[rank]["digest"] == weights_digest(small_net(0))  # parameters and buffers are rank 0's


def rank_that_loses_its_peer(rank: int, port: int, results) -> None:
    """Rank 1 joins and dies (os._exit, as a SIGKILL leaves no goodbye); rank 0 then sums over both, as every
    training iteration does, and reports what run_main would print for the failure."""
    try:
        as_torchrun_rank(rank, port)
        info = init_distributed_mode("cpu", log=lambda _: None)
        all_reduce_sum(torch.ones(1), info)  # both are in
        if rank == 1:
            os._exit(0)
        import time
        time.sleep(1.0)
        from utils.errors import failure_message
        try:
            all_reduce_sum(torch.ones(1), info)
            results.put((rank, "the sum went through without its peer"))
        except RuntimeError as exc:
            results.put((rank, (failure_message(exc), traceback.format_exc())))
    except BaseException:
        results.put((rank, traceback.format_exc()))


def test_a_rank_whose_peer_died_says_so_in_one_line_not_gloos_traceback():
    """One rank killed mid-epoch: the other printed a 30-line traceback ending in gloo's 'Read error ...
    Connection reset by peer', which the project did not recognise as a failure the user acts on."""
    [(rank, said)] = run_pair(rank_that_loses_its_peer, answers=1)
    assert rank == 0 and isinstance(said, tuple), said
    found, trace = said
    assert found is not None, trace
    message, status = found
    assert status == 1 and message.startswith("another process of this torchrun group stopped, and this one lost "
                                              "its connection to it (") and "\n" not in message, message
    assert message.endswith("fix the cause, then continue with --resume auto"), message


def test_a_process_alone_leaves_every_value_as_it_is():
    """No process group exists here: a collective called would raise."""
    assert not dist.is_initialized()
    info = DistInfo()
    assert broadcast_int(5, info) == 5 and broadcast_text("x", info) == "x" and gather_ints(3, info) == [3]
    t = torch.tensor([2.0])
    assert all_reduce_sum(t, info) is t and t.item() == 2.0
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 3.0])
    average_gradients([p], info)
    assert p.grad.tolist() == [1.0, 3.0]


def test_the_main_rank_is_global_rank_0_not_each_nodes_first(monkeypatch):
    """On a second node, local rank 0 is global rank 2 or more: it must neither print nor write the log."""
    assert not DistInfo(rank=2, world_size=4, local_rank=0).is_main
    assert DistInfo(rank=0, world_size=4, local_rank=0).is_main
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = init_distributed_mode("cpu", log=None)
    assert (info.rank, info.local_rank, info.world_size, info.is_main) == (3, 1, 1, False)


def test_each_restart_attempt_meets_in_its_own_part_of_torchruns_store(monkeypatch):
    server = dist.HashStore()
    monkeypatch.setattr(dist, "TCPStore", lambda *args, **kwargs: server)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert elastic_store(2) is None  # not under torchrun's agent: MASTER_ADDR and MASTER_PORT as they are
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    for attempt in ("0", "2"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", attempt)
        elastic_store(2).set("key", f"attempt {attempt}")
    assert server.get("baryir/attempt_0/key") == b"attempt 0" and server.get("baryir/attempt_2/key") == b"attempt 2"


def test_the_weights_digest_sees_buffers_and_fits_a_signed_64_bit_integer():
    """The digests are gathered as torch.long: one of 2**63 or more would overflow."""
    net = small_net(0)
    before = weights_digest(net)
    net[1].running_mean += 1e-6
    assert weights_digest(net) != before
    digests = [weights_digest(small_net(rank)) for rank in range(16)]
    assert len(set(digests)) == 16 and all(0 <= d < 2 ** 63 for d in digests)
    assert weights_digest(None, small_net(3)) == weights_digest(small_net(3))  # no Potentials: skipped


def rank_scanning_its_data(folders: dict[int, list[str]], rank: int, port: int, results) -> None:
    """Each rank builds the training set from its own ``--dehaze_dir`` (``folders``: one per case, in rank order)
    and reports, for each case, the error line it would print (None: quiet) or that it built the set."""
    try:
        as_torchrun_rank(rank, port)
        os.environ.update(TORCHELASTIC_RUN_ID="test", GROUP_RANK="0")  # said_by_this_rank: one node of torchrun
        from utils.errors import failure_message
        from utils.train.engine import met_by_every_rank
        from utils.train.options import get_args_parser
        from utils.train.run_log import Console
        from utils.train.start import build_dataset
        info = init_distributed_mode("cpu", log=lambda _: None)
        said = []
        for case in folders[rank]:
            args = get_args_parser(objective="ddp").parse_args(
                ["--de_type", "dehaze", "--dehaze_dir", case, "--data_file_dir", "", "--repeat", "dehaze=1",
                 "--patch_size", "32"])
            try:
                build_dataset(args, 0, Console(False), info)
                said.append("built")
            except Exception as exc:
                quiet = rank != 0 and met_by_every_rank(exc)
                said.append(None if quiet else failure_message(exc)[0])
        cleanup(info)
        results.put((rank, said))
    except BaseException:
        results.put((rank, traceback.format_exc()))


def test_ranks_that_find_other_training_data_all_stop_and_say_which(tmp_path):
    """A data folder one rank could not read stopped that rank in silence (rank 0 says what every rank meets
    alike) and rank 0 said only that another process stopped; ranks that found other files (a node's copy of
    the data that differs) trained epochs of other lengths, and the longer one waited forever in a collective."""
    import functools

    from _train_data import make_train_tree
    full = str(make_train_tree(tmp_path / "full")["dehaze"])
    fewer = str(make_train_tree(tmp_path / "fewer", n=1)["dehaze"])
    missing = str(tmp_path / "nowhere")
    folders = {0: [full, full, full], 1: [missing, fewer, full]}
    said = dict(run_pair(functools.partial(rank_scanning_its_data, folders), answers=2))
    assert isinstance(said[0], list) and isinstance(said[1], list), said
    (lost_0, differ_0, same_0), (lost_1, differ_1, same_1) = said[0], said[1]
    assert lost_1 is not None and "nowhere" in lost_1, said  # the rank that failed says why itself
    assert lost_0 is not None and lost_0.startswith("rank 1 could not use the training data"), lost_0
    assert differ_1 is None and differ_0.startswith(  # one line, rank 0's, for a failure every rank raises
        "the ranks found different training data (rank 0: 6 samples per epoch; rank 1: 2 samples per epoch)"), differ_0
    assert same_0 == same_1 == "built"
