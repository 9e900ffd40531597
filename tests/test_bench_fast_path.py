"""bench/bench_fast_path.py's two measures: the first iteration's largest relative loss difference, and how
far one run's smoothed curve departs from another's (0 for the same curve, scale-free)."""
import importlib.util
import json
from pathlib import Path

import pytest
from _disks import tear_figure_saves

from utils.owned_outputs import record_outputs

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_fast_path", BENCH / "bench_fast_path.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def records(values: list[float], key: str = "transport") -> list[dict]:
    return [{"global_step": i + 1, key: v} for i, v in enumerate(values)]


def test_first_iteration_gap_names_the_worst_part(bench):
    eager = {"map": 100.0, "l1": 0.5, "potentials": -0.02, "sec": 1.0}
    fast = {"map": 100.01, "l1": 0.5, "potentials": -0.0201, "sec": 9.0}  # sec is not a loss
    gap, part = bench.first_iteration_gap(eager, fast)
    assert part == "potentials" and gap == pytest.approx(0.005)


def test_departure_is_zero_for_the_same_curve_and_scale_free(bench):
    base = [1.0, 0.8, 0.7, 0.65, 0.6, 0.58]
    assert bench.departure(records(base), records(base), "transport") == 0.0
    shifted = [v * 1.1 for v in base]
    d = bench.departure(records(shifted), records(base), "transport")
    assert d == pytest.approx(0.1, rel=1e-9)  # a 10 % larger curve departs by 0.1 ...
    scaled = bench.departure(records([1000 * v for v in shifted]), records([1000 * v for v in base]), "transport")
    assert scaled == pytest.approx(d, rel=1e-9)  # ... in any unit


def _fake_runs(bench, monkeypatch, calls: list):
    """bench_fast_path without training: each run returns three logged iterations (and is recorded in ``calls``)."""
    def run(name, mode, root, work, a, threads=None, seed=0):
        calls.append(name)
        return [{"global_step": i + 1, "sec": 0.1, **{k: 1.0 + i for k in bench.PARTS}} for i in range(3)]
    monkeypatch.setattr(bench, "run", run)
    monkeypatch.setattr(bench, "build_demo_data", lambda *a, **kw: {})


def test_outputs_are_checked_before_the_runs_and_an_earlier_file_is_kept(bench, monkeypatch, tmp_path, capsys):
    """--json in a folder that cannot be written failed after every training run (the results lost); an existing
    --json file (the user's, an earlier run's) was replaced without a word: now the folder is checked first and the
    file moved to bench_fast_path.before-<time>/."""
    calls: list = []
    _fake_runs(bench, monkeypatch, calls)
    monkeypatch.chdir(tmp_path)  # its record of what it wrote: results/bench/ here
    (tmp_path / "file").write_text("not a folder")
    flags = ["--iters", "3", "--skip", "1", "--control-threads", "0", "--no-seed-control", "--fig",
             str(tmp_path / "fig.png")]
    assert bench.main([*flags, "--json", str(tmp_path / "file" / "out.json")]) == 2
    assert calls == [] and capsys.readouterr().err.startswith("error: --json ")
    mine = tmp_path / "out.json"
    mine.write_text("my notes")
    assert bench.main([*flags, "--json", str(mine)]) == 0
    assert json.loads(mine.read_text())["first_gap"] == 0.0
    kept = list(tmp_path.glob("bench_fast_path.before-*/out.json"))
    assert [p.read_text() for p in kept] == ["my notes"]


def test_ctrl_c_while_the_figure_is_saved_leaves_the_earlier_figure(bench, monkeypatch, tmp_path, capsys):
    """The figure was written in place by savefig: Ctrl-C (or a full disk) there left half a PNG over the earlier
    (committed) figure; now it is written whole, then renamed into place."""
    _fake_runs(bench, monkeypatch, [])
    fig = tmp_path / "fig.png"
    fig.write_bytes(b"the earlier figure")
    monkeypatch.chdir(tmp_path)
    record_outputs([fig], bench.OUTPUTS_RECORD)  # an earlier run's: replaced, not moved aside
    tear_figure_saves(monkeypatch)
    assert bench.main(["--iters", "3", "--skip", "1", "--control-threads", "0", "--no-seed-control", "--fig",
                       str(fig)]) == 130
    assert fig.read_bytes() == b"the earlier figure"
    assert capsys.readouterr().err.splitlines()[-1] == "error: interrupted"


def test_a_figure_of_the_users_is_moved_aside_and_a_rerun_replaces_its_own(bench, monkeypatch, tmp_path, capsys):
    """--fig at a file of the user's replaced it without a word (only --json's was kept); every earlier --json was
    moved aside, a rerun's own too, piling up folders."""
    _fake_runs(bench, monkeypatch, [])
    monkeypatch.chdir(tmp_path)  # the record of what it wrote: in results/bench/ of the current folder
    fig, curves = tmp_path / "figs" / "fig.png", tmp_path / "figs" / "curves.json"
    fig.parent.mkdir()
    fig.write_bytes(b"my figure")
    flags = ["--iters", "3", "--skip", "1", "--control-threads", "0", "--no-seed-control", "--fig", str(fig),
             "--json", str(curves)]
    assert bench.main(flags) == 0
    kept = list(fig.parent.glob("bench_fast_path.before-*/fig.png"))
    assert [p.read_bytes() for p in kept] == [b"my figure"] and fig.read_bytes().startswith(b"\x89PNG")
    assert f"moved to {kept[0].parent}/" in capsys.readouterr().out
    assert bench.main(flags) == 0  # its own figure and curves: replaced
    assert len(list(fig.parent.glob("*.before-*"))) == 1 and fig.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in fig.parent.iterdir() if "before" not in p.name) == ["curves.json", "fig.png"]
    assert "moved to" not in capsys.readouterr().out
