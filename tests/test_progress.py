"""The training console: one readable progress line, a steady rate and the time left."""
import pytest

from utils.train.progress import Rate, progress_line

LOSSES = {"map": 2130.5, "l1": 0.21306, "transport": 0.0717, "orthogonality": 0.0062, "contrastive": 0.0,
          "potential": 0.1288, "potentials": 0.00053, "congruence": 0.0174}


def test_progress_line_names_every_part_once_with_rate_and_eta():
    rate = Rate()
    for _ in range(20):
        rate.update(0.5)
    line = progress_line(3, 100, 1300, LOSSES, 1e-4, rate)
    assert line.startswith("epoch 3 [100/1300] l1 0.2131, transport 0.0717, orthogonality 0.0062, contrastive 0, "
                           "potential term 0.1288, potentials step 0.00053, congruence 0.0174 | lr 0.0001 | ")
    assert "map" not in line  # the total is l1 x --Sigma plus the same parts: the log keeps it
    assert line.endswith("2.00 it/s, epoch ETA 0:10:00")  # 1200 iterations left at 0.5 s


def test_rate_is_a_median_so_one_slow_iteration_does_not_swing_it():
    rate = Rate()
    for _ in range(50):
        rate.update(0.25)
    rate.update(10.0)  # a validation pause, a page-in
    assert rate.per_second == 4.0
    assert Rate().eta(5) == "0:00:00" and Rate().per_second == 0.0


def test_a_progress_bar_is_the_main_ranks_and_drawn_only_on_a_terminal(monkeypatch):
    """Other ranks draw none, or every rank's bar fights over one terminal line; without a terminal the trainer
    prints plain lines instead (``bar.disable``)."""
    import io
    import sys

    from utils.train.progress import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stderr", Terminal())
    for enabled in (True, False):
        with progress(range(3), 3, "epoch 1", enabled=enabled) as bar:
            assert bar.disable is not enabled
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress(range(3), 3, "epoch 1") as bar:
        assert bar.disable


def test_plain_progress_lines_without_a_terminal_come_now_and_then_not_at_every_logged_iteration(monkeypatch, capsys):
    """Output redirected to a file (nohup, a scheduler's log) got one progress line per --log-every iteration: at
    the paper's pace (about 4 iterations a second, 71,765 an epoch) a line every 2.5 s, some 860,000 lines (about
    170 MB) over 120 epochs, the same values log.jsonl keeps. Now: the epoch's first, one every 30 s, its last."""
    import types

    import torch

    from utils.checkpoints import LoopState
    from utils.train import engine
    from utils.train.distributed import DistInfo
    from utils.train.run_log import Console

    clock = iter(range(10_000))  # each iteration takes one second
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    monkeypatch.setattr(engine, "train_step", lambda *a, **k: {"l1": 0.1, "map": 1.0})
    training = types.SimpleNamespace(model=torch.nn.Linear(1, 1), potentials=None, compile_mode="off",
                                     info=DistInfo())
    logged = types.SimpleNamespace(records=[], write=lambda r: logged.records.append(r))
    state = LoopState(epoch=1)
    means, stopped = engine.train_one_epoch(training, [None] * 100, state, 100, 1e-4,
                                            stop=types.SimpleNamespace(requested=False), log=logged,
                                            console=Console(), log_every=1)
    assert not stopped and state.iteration == 100 and means["l1"] == pytest.approx(0.1)
    assert [r["iteration"] for r in logged.records] == list(range(1, 101))  # the log keeps every one
    shown = [int(line.split("[")[1].split("/")[0]) for line in capsys.readouterr().out.splitlines()]
    assert shown == [1, 31, 61, 91, 100]

