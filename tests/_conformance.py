"""Access to the reference implementation's test vectors, shipped in ``tests/conformance/``.

The vectors were computed by running the authors' BaryIR code in float64 (see
``tests/conformance/README.md``); they travel with the repository, so every clone runs every
conformance test.
"""
import importlib.util
from pathlib import Path

import torch

CONFORMANCE = Path(__file__).resolve().parent / "conformance"


def weights_module():
    """``tests/conformance/deterministic_weights.py``, imported from its file."""
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

