"""Shared fixtures and markers of the test suite.

- ``one_torch_thread``: a module-scoped fixture; a module that compares runs bit for bit asks for
  it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` (module scope, so it comes
  before module-scoped training runs: bitwise-equal comparisons need one thread count).
- ``slow`` (declared in pyproject.toml): end-to-end tests. ``make test`` runs everything;
  ``make test-quick`` (``pytest -m "not slow"``) skips them while editing.
- Under pytest-xdist each worker, and each process a test starts, computes with its share of the cores
  (:func:`pytest_configure`).
- Temporary files, the suite's and those of every process it starts, go into one folder per pytest process,
  removed at its end (:func:`suite_temporary_folder`).
"""
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


def inductor_default_cache_dir() -> str:
    """Where inductor keeps its cache when ``TORCHINDUCTOR_CACHE_DIR`` is unset (``/tmp/torchinductor_<user>``)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        return default_cache_dir()
    except (ImportError, AttributeError):  # a torch that keeps it elsewhere: its own choice, unchanged below
        return ""


@contextlib.contextmanager
def temporary_folder_of_the_suite() -> Iterator[Path]:
    """``TMPDIR`` (and :mod:`tempfile`) pointed at a new folder of the system's temporary folder, removed at the end,
    with the environment as it was. Inductor's cache is kept where torch keeps it without the suite."""
    kept = {name: os.environ.get(name) for name in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR")}
    kept_tempdir = tempfile.tempdir
    if kept["TORCHINDUCTOR_CACHE_DIR"] is None and (inductor := inductor_default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor
    scratch = Path(tempfile.mkdtemp(prefix="baryir-tests-"))
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = kept_tempdir
        for name, value in kept.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def suite_temporary_folder():
    """One temporary folder per pytest process (:func:`temporary_folder_of_the_suite`). Each ``make test`` left about
    33 folders in the system's /tmp: torchrun's log folders (one per launch), gradio_client's empty download
    folders, Chromium's profile. It is made in the system's temporary folder, not in pytest's deeper ``tmp_path``
    tree: Chromium makes its singleton socket under ``TMPDIR``, and a Unix socket's path has at most 107 bytes."""
    with temporary_folder_of_the_suite() as scratch:
        yield scratch


@pytest.fixture(scope="module")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
