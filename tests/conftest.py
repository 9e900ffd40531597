"""Shared fixtures and markers of the test suite.

- ``one_torch_thread``: a module-scoped fixture; a module that compares runs bit for bit asks for
  it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` (module scope, so it comes
  before module-scoped training runs: bitwise-equal comparisons need one thread count).
- ``slow`` (declared in pyproject.toml): end-to-end tests. ``make test`` runs everything;
  ``make test-quick`` (``pytest -m "not slow"``) skips them while editing.
"""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
