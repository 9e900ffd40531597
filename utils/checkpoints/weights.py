"""The network's weights out of a checkpoint of any of the three formats, checked before a network is built
from them or they are loaded into one."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from utils.checkpoints.guard import MAX_MODULE_VISITS, MAX_NESTING, CheckpointError
from utils.checkpoints.identify import differences, differences_text, identify, shapes_of
from utils.checkpoints.unpickling import _Inert
from utils.errors import LIST_LIMIT, counted, listing, one_or_many

# Tensors that reference checkpoints carry but no forward pass uses
# (tests/conformance/legacy_unused_keys.txt).
LEGACY_UNUSED_KEYS = frozenset({
    "chnl_reduce1.weight", "chnl_reduce2.weight", "chnl_reduce3.weight",
    "reduce_noise_channel_1.weight", "reduce_noise_channel_2.weight", "reduce_noise_channel_3.weight",
})


_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers


def check_config_matches_weights(obj: Mapping[str, Any], source: str) -> None:
    """Refuse a project checkpoint whose ``model_config`` is not a sane configuration, or whose network
    would have a parameter count far from the weights the file holds, before anything is built from it.

    The network is laid out on the ``meta`` device (no memory) to count its parameters exactly.
    """
    from net.presets import BACKBONES, ModelConfigError, check_model_config, model_config

    stored = obj["model_config"]
    backbone = obj.get("backbone") if obj.get("backbone") in BACKBONES else "BaryNet"
    where = f"checkpoint {source}: its model_config"
    try:
        cfg = model_config("paper", source=where, backbone=backbone, **check_model_config(stored, where, backbone))
    except ModelConfigError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        weights = model_state_from(obj, source)
    except CheckpointError:
        return  # no weights to compare with; loading them reports it
    with torch.device("meta"):
        implied = sum(p.numel() for p in BACKBONES[backbone](**cfg).state_dict().values())
    present = sum(t.numel() for t in weights.values())
    if implied > 1.1 * present + 1000 or present > 1.1 * implied + 1000:
        raise CheckpointError(f"refusing to use checkpoint {source}: its model_config describes a {backbone} of "
                              f"{implied:,} weights but the file holds {present:,}; the file is damaged, or pass "
                              f"--preset and the model flags that describe it")


def _walk_module(obj: Any, prefix: str, out: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Collect parameters and persistent buffers of a placeholder module, as ``state_dict()`` would.

    Iterative, in ``state_dict()`` order; a chain of modules deeper than :data:`MAX_NESTING`, or a tree of more
    than :data:`MAX_MODULE_VISITS` modules counting a shared one once per path to it, is a :class:`CheckpointError`
    (no real network nests more than a dozen levels or has more than a few thousand modules).
    """
    stack = [(obj, prefix, 0)]
    skip_sets: dict[int, set] = {}  # each pickled _non_persistent_buffers_set as a set, once however many share it
    visits = 0
    while stack:
        module, where, depth = stack.pop()
        visits += 1
        if visits > MAX_MODULE_VISITS:
            raise CheckpointError(f"refusing to use checkpoint {source}: its modules make a tree of more than "
                                  f"{MAX_MODULE_VISITS:,} (a module shared along many paths?); the file is damaged "
                                  f"or crafted, use another checkpoint")
        state = getattr(module, "_pickled_state", None)
        if not isinstance(state, dict):
            continue
        if depth > MAX_NESTING:
            raise CheckpointError(f"refusing to use checkpoint {source}: its modules nest more than {MAX_NESTING} "
                                  f"levels deep; the file is damaged or crafted, use another checkpoint")
        parameters, buffers, modules = (_mapping(state.get(key) or {}, where + key, source)
                                        for key in ("_parameters", "_buffers", "_modules"))
        skip = state.get("_non_persistent_buffers_set") or ()
        skip = skip if isinstance(skip, (set, frozenset, list, tuple)) else ()
        if id(skip) not in skip_sets:  # a list of a million names looked through for each of a million buffers:
            skip_sets[id(skip)] = {n for n in skip if isinstance(n, str)}  # hours
        skip = skip_sets[id(skip)]
        for name, tensor in [*parameters.items(), *((n, t) for n, t in buffers.items() if n not in skip)]:
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"refusing to use checkpoint {source}: its module entry {where}{name} is a "
                                      f"{type(tensor).__name__}, not a tensor; the file is damaged or crafted, use "
                                      f"another checkpoint")
            out[where + name] = tensor.detach()
        children = [(c, f"{where}{n}.", depth + 1) for n, c in modules.items() if c is not None]
        stack.extend(reversed(children))


def _mapping(value: Any, where: str, source: str) -> Mapping:
    """A pickled module's ``_parameters``/``_buffers``/``_modules``, which must be a mapping."""
    if not isinstance(value, Mapping):
        raise CheckpointError(f"refusing to use checkpoint {source}: {where} of a pickled module is a "
                              f"{type(value).__name__}, not a mapping; the file is damaged or crafted, use another "
                              f"checkpoint")
    return value


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def model_state_from(obj: Any, source: str = "checkpoint", key: str = "model") -> dict[str, torch.Tensor]:
    """The network's state dict inside any accepted checkpoint format (prefixes stripped, legacy keys dropped).

    ``key`` picks the network in a project checkpoint (``model``, or ``potentials``).
    """
    if isinstance(obj, _Inert):
        sd: dict[str, torch.Tensor] = {}
        _walk_module(obj, "", sd, source)
    elif isinstance(obj, Mapping) and "BaryIR" in obj:
        return model_state_from(obj["BaryIR"], source, key)
    elif isinstance(obj, Mapping) and isinstance(obj.get(key), _Inert):
        return model_state_from(obj[key], source, key)  # reference --pretrained files: {'model': module}
    elif isinstance(obj, Mapping) and key in obj and _is_state_dict(obj[key]):
        sd = dict(obj[key])
    elif isinstance(obj, Mapping) and any(_is_state_dict(obj.get(k)) for k in ("state_dict", "params")):
        sd = dict(next(obj[k] for k in ("state_dict", "params") if _is_state_dict(obj.get(k))))
    elif _is_state_dict(obj):
        sd = dict(obj)
    elif isinstance(obj, torch.nn.Module):
        sd = obj.state_dict()
    else:
        keys = list(obj)[:LIST_LIMIT] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source} holds no network weights under '{key}', 'BaryIR', 'state_dict' "
                              f"or as a plain state dict (found: {keys})")
    if not sd:
        raise CheckpointError(f"{source} contains a module with no parameters")
    return normalise_state_dict(sd)


def normalise_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.``/``_orig_mod.`` prefixes and drop the reference's unused legacy tensors.

    A PyTorch-Lightning state dict (PromptIR's released ``.ckpt`` files: the network is the Lightning
    module's ``net``) has every key under ``net.``; that prefix goes first.
    """
    if sd and all(name.startswith("net.") for name in sd):
        sd = {name[len("net."):]: tensor for name, tensor in sd.items()}
    out = {}
    for name, tensor in sd.items():
        start = 0  # prefixes counted, then cut once: cutting one at a time copies a crafted name of millions of
        while name.startswith(_PREFIXES, start):  # prefixes millions of times (hours for a 28 MB key)
            start = name.index(".", start) + 1
        name = name[start:]
        if name not in LEGACY_UNUSED_KEYS:
            out[name] = tensor
    return out


def load_weights(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint",
                 identify_other: bool = True) -> None:
    """Strictly load ``sd`` into ``model``; a mismatch is one :class:`CheckpointError` line.

    When ``sd`` is exactly another of the project's networks (:func:`~utils.checkpoints.identify.identify`; not
    asked with ``identify_other=False``, for a file that records its own, nor for a model that is not a backbone),
    the line names it and the flags that build it; otherwise it counts the missing, unexpected and reshaped keys,
    with two of each.
    """
    expected = shapes_of(model)
    missing, unexpected, shapes = differences(expected, sd)
    if missing or unexpected or shapes:
        cfg = getattr(model, "config", None)
        built = type(model).__name__ + (f" (dim={cfg['dim']}, num_blocks={cfg['num_blocks']})" if cfg else "")
        identify_other = identify_other and cfg is not None  # a backbone (not the Potentials): others are named
        found = identify(sd) if identify_other else None
        if found is not None:
            from net.presets import flags_for
            backbone, other = found
            raise CheckpointError(f"{source} holds the weights of a {backbone} (dim={other['dim']}, num_blocks="
                                  f"{other['num_blocks']}), not of the {built} these flags build: pass "
                                  f"{flags_for(other, backbone)}")
        fix = ("no --backbone, --preset and model flags of this project build a network of these keys and shapes "
               "(the weights of another project's network, or a damaged file)" if identify_other else
               "pick the matching --backbone and --preset (or model flags) for this checkpoint")
        raise CheckpointError(f"{source} does not fit {built}: " + differences_text(missing, unexpected, shapes)
                              + f"; {fix}.")
    bad = [k for k, v in sd.items() if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        hold = one_or_many(len(bad), "holds", "hold")
        raise CheckpointError(f"refusing to load {source}: {counted(len(bad), 'weight tensor')} {hold} NaN or Inf ("
                              + listing(bad, sep=", ", lead="") + "); the training that wrote it diverged, "
                              "use an earlier checkpoint")
    model.load_state_dict(sd, strict=True)


def load_network(model: torch.nn.Module, obj: Any, source: str, key: str = "model") -> None:
    """Load the network weights found in ``obj`` (a checkpoint object of any accepted format, read by
    :func:`utils.checkpoints.reading.read_checkpoint` from ``source``) into ``model``; mismatches are one error,
    naming the network the weights are for unless the file records it (its ``backbone`` and ``model_config``)."""
    records = isinstance(obj, Mapping) and isinstance(obj.get("backbone"), str) and obj.get("model_config") is not None
    load_weights(model, model_state_from(obj, str(source), key), str(source), identify_other=not records)


def potentials_state_from(obj: Any, source: str) -> dict[str, torch.Tensor] | None:
    """The Potentials' weights in a project or reference checkpoint, or None when it has none."""
    if is_training_checkpoint(obj):
        sd = obj.get("potentials")
        return dict(sd) if sd else None
    if isinstance(obj, Mapping):
        for key in ("Pots", "discr", "potentials"):
            if obj.get(key) is not None:
                try:
                    return model_state_from(obj[key], f"{source} ['{key}']")
                except CheckpointError:
                    return None
    return None


def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "format_version" in obj and "model" in obj


def is_reference_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "BaryIR" in obj
