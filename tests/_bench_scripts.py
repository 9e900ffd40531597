"""The bench scripts loaded as modules, for the tests that call their ``main`` with stubs in place of the work."""
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(name: str, monkeypatch):
    """``bench/<name>.py`` as a fresh module; ``monkeypatch`` takes it out of ``sys.modules`` and ``bench/`` off
    ``sys.path`` after the test (the scripts import their siblings, as ``python bench/...`` lets them)."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module
