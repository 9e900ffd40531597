"""bench/bench_fast_path.py's two measures: the first iteration's largest relative loss difference, and how
far one run's smoothed curve departs from another's (0 for the same curve, scale-free)."""
import importlib.util
from pathlib import Path

import pytest

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
