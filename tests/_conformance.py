"""Access to the reference implementation's test vectors in ../shared/conformance.

The folder sits beside the repository (set BARYIR_CONFORMANCE_DIR to use another place);
tests that need it are skipped with that reason when it is absent.
"""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = Path(os.environ.get("BARYIR_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))

needs_conformance = pytest.mark.skipif(
    not (CONFORMANCE / "golden_3d.pt").is_file(),
    reason=f"conformance vectors not found at {CONFORMANCE} (set BARYIR_CONFORMANCE_DIR)")


def weights_module():
    """The conformance folder's deterministic_weights.py, imported from its file."""
    spec = importlib.util.spec_from_file_location("deterministic_weights", CONFORMANCE / "deterministic_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def key_spec(name):
    """``[(name, shape), ...]`` from one of the ``*_keys.txt`` files."""
    return weights_module().read_spec(CONFORMANCE / name)


def golden():
    return torch.load(CONFORMANCE / "golden_3d.pt", weights_only=True)


def golden_weights(keys_file, dtype=torch.float64):
    mod = weights_module()
    return mod.deterministic_state_dict(mod.read_spec(CONFORMANCE / keys_file), 0, dtype)
