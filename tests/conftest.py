"""Shared fixtures and markers of the test suite.

- ``one_torch_thread``: a module-scoped fixture; a module that compares runs bit for bit asks for
  it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` (module scope, so it comes
  before module-scoped training runs: bitwise-equal comparisons need one thread count).
- ``slow`` (declared in pyproject.toml): end-to-end tests. ``make test`` runs everything;
  ``make test-quick`` (``pytest -m "not slow"``) skips them while editing.
- Under pytest-xdist each worker, and each process a test starts, computes with its share of the cores
  (:func:`pytest_configure`).
"""
import os

import pytest
import torch


def pytest_configure(config):
    """Give each xdist worker its share of the cores: torch's threads in the worker, ``OMP_NUM_THREADS`` for the
    processes its tests start (unless the caller set it). Each worker's torch took every core, so on 2 cores two
    workers ran 2 threads each, which wait on each other at every operation: the 1024x1024 tiling test took 40 s
    at 2 threads beside another process and 18 s at 1."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        share = max(1, cores // workers)
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))


@pytest.fixture(scope="module")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
