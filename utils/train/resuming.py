"""Where training starts: the settings a checkpoint must share with the flags to be resumed
(:func:`check_same_run`), and the weights, potentials and position it gives (:func:`load_start`), for the
project's checkpoints, the reference's and plain state dicts (``--resume``, ``--pretrained``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch.nn as nn

from net import Potentials
from net.presets import BACKBONES, MODEL_FLAGS, WB_BACKBONES, flags_for, model_config
from utils.checkpoints import (
    CheckpointError,
    LoopState,
    epoch_losses_from,
    is_reference_checkpoint,
    is_training_checkpoint,
    load_network,
    load_weights,
    potentials_state_from,
    read_checkpoint,
    resolve_checkpoint,
)
from utils.data.degradations import DE_IDS, repeat_factor
from utils.dataset_utils import DatasetError, check_de_types, parse_repeats
from utils.errors import counted
from utils.train.losses import OBJECTIVES
from utils.train.options import OBJECTIVE_SETTINGS, ConfigError, flag_of
from utils.train.run_log import Console


def _load_potentials_if_they_fit(pots: Potentials | None, obj: Any, source: str) -> bool | None:
    """Load the file's potentials into ``pots``: True if loaded, False if they do not fit, None if absent."""
    sd = potentials_state_from(obj, source) if pots is not None else None
    if sd is None:
        return None
    try:
        load_weights(pots, sd, f"{source} (potentials)")
    except CheckpointError:
        return False
    return True


# The settings that make a run what it is: the networks' shapes (backbone, preset, K sources, patch
# size for the potentials), the data (the degradation types and their repetition, hence lambda), the
# objective (the two reference trainers' differ) and the optimiser (its saved state fits only itself).
# A checkpoint resumes only into them.
RUN_SETTINGS = ("backbone", "preset", "dim", "num_blocks", "num_refinement_blocks", "heads", "de_type", "patch_size",
                "repeat", "objective", "reg_weight", "contrastive_eps", "potentials_steps", "optimizer", "Sigma",
                "ablate")


# Which script trains each --objective by default: named when a run is resumed with the other one.
OBJECTIVE_SCRIPTS = {"single": "trainer_bary.py", "ddp": "trainer_bary_ddp.py"}


# The settings whose value left out is chosen by another setting: the widths by --preset, the repetition factors by
# --de-type, the objective's weights by --objective. Not given on either side, they differ only with that setting,
# which names the difference.
CHOSEN_BY = {**dict.fromkeys(MODEL_FLAGS, "preset"), "repeat": "de_type",
             **dict.fromkeys(OBJECTIVE_SETTINGS[1:], "objective")}


def run_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`RUN_SETTINGS` a run's flags give (``vars(args)``, or the ``args`` a checkpoint saved), as the
    run trains them: a width flag left out is the preset's, the repetition is each --de-type's factor (--repeat's,
    else the paper's: ``{name: N}``), an objective weight left out is the --objective's, no --ablate is none.

    A resume compares these, not the flags as typed: ``--dim 16`` on ``--preset tiny``, or ``--repeat derain=360``,
    is the run that left them out. Settings ``values`` does not hold (a checkpoint of an older version) are left
    out; one that cannot be resolved (a configuration this version cannot build) stays as given."""
    out = {name: values[name] for name in RUN_SETTINGS if name in values}
    try:
        cfg = model_config(values["preset"], backbone=values["backbone"], **{k: values.get(k) for k in MODEL_FLAGS})
    except (KeyError, TypeError, ValueError):  # ModelConfigError is a ValueError
        cfg = {}
    out.update({k: cfg[k] for k in MODEL_FLAGS if k in out and k in cfg})
    if "repeat" in out:
        try:
            de_types, repeats = check_de_types(values["de_type"]), parse_repeats(values["repeat"])
            out["repeat"] = {de: repeat_factor(de, de_types, repeats) for de in sorted(de_types, key=DE_IDS.get)}
        except (DatasetError, KeyError, TypeError):
            pass
    objective = values.get("objective") or "single"
    base = OBJECTIVES.get(objective) if isinstance(objective, str) else None
    for name in OBJECTIVE_SETTINGS[1:]:
        if name in out and out[name] is None and base is not None:
            out[name] = getattr(base, name)
    if "ablate" in out and out["ablate"] is None:
        out["ablate"] = []
    return out


def _same_setting(name: str, a: Any, b: Any) -> bool:
    """Whether two values of the setting ``name`` (typed, or as :func:`run_settings` resolves them) are the same."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):  # repetition factors: of the types both train (--de-type
        return all(a[de] == b[de] for de in a.keys() & b.keys())  # names the others)
    if name in ("de_type", "repeat", "ablate") and isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return sorted(map(str, a)) == sorted(map(str, b))  # no order
    return a == b


def _shown(v: Any) -> str:
    if v is None:
        return "(default)"
    if isinstance(v, Mapping):
        return " ".join(f"{k}={n}" for k, n in v.items())
    return " ".join(map(str, v)) or "(none)" if isinstance(v, (list, tuple)) else str(v)


def check_same_run(args, ckpt: Mapping[str, Any], ckpt_path: Path | None) -> None:
    """Refuse to resume a training checkpoint into a run of other settings (:data:`RUN_SETTINGS`, compared as
    :func:`run_settings` resolves them on both sides), naming each difference: otherwise a 3D command finds a 5D
    run's checkpoint in a shared folder and fails on weight shapes, or, worse, trains on with other data."""
    saved = ckpt.get("args") or {}
    typed = vars(args)
    here, there = run_settings(typed), run_settings(saved)
    # an L1-only run trains the same whatever its objective settings (trainer_bary.py's or trainer_bary_ddp.py's)
    l1_only = args.backbone not in WB_BACKBONES and saved.get("backbone", args.backbone) not in WB_BACKBONES
    differ = {name: (there[name], here.get(name)) for name in RUN_SETTINGS
              if name in there and not (l1_only and name in OBJECTIVE_SETTINGS)
              and not _same_setting(name, here.get(name), there[name])}
    named = []
    for name, (then, now) in differ.items():
        if CHOSEN_BY.get(name) in differ and _same_setting(name, typed.get(name), saved[name]):
            continue  # given alike (or left out on both sides): the setting that chooses it is named
        if isinstance(then, Mapping) and isinstance(now, Mapping):  # the repetition factors that differ
            then, now = ({de: n for de, n in v.items() if de in then and de in now and then[de] != now[de]}
                         for v in (then, now))
        named.append(f"{flag_of(name)} {_shown(then)} there, {_shown(now)} here")
    if named:
        trained = saved.get("objective")
        script = f" (it was trained by {OBJECTIVE_SCRIPTS[trained]}: resume it with that script)" \
            if trained in OBJECTIVE_SCRIPTS and trained != args.objective and not l1_only else ""
        network = {"backbone", "preset", *MODEL_FLAGS} & differ.keys()  # its weights fit another network only
        if getattr(args, "resume", "auto") == "auto":
            other = "give this run its own --output-dir"
        elif network:
            other = "leave --resume out to train this network from scratch (its weights fit its own network only)"
        else:
            other = (f"start a run of these settings from its weights alone: --pretrained {ckpt_path} instead of "
                     f"--resume")
        raise ConfigError(f"--resume: {ckpt_path} belongs to a run with other settings ({'; '.join(named)}){script}. "
                          f"Resume it with its own settings, or {other}")


def load_start(args, ckpt_path: Path | None, obj: Any, model: nn.Module, pots: Potentials | None,
                console: Console) -> tuple[LoopState, dict | None]:
    """Weights from --resume or --pretrained; returns where to start and the training checkpoint (if any)."""
    state = LoopState(epoch=args.start_epoch, iteration=0, global_step=0)
    if obj is not None:  # resuming: --pretrained (and --start-epoch, but for weights only) start runs without one
        unused = [f"--pretrained {args.pretrained}"] if args.pretrained else []
        if args.start_epoch != 1 and (is_training_checkpoint(obj) or is_reference_checkpoint(obj)):
            unused.append(f"--start-epoch {args.start_epoch}")
        if unused:
            console(f"=> {' and '.join(unused)} not used: the run resumes {ckpt_path} and continues from its "
                    f"epoch ({'they start' if len(unused) > 1 else 'it starts'} a run that has no checkpoint yet)")
    if obj is not None and is_training_checkpoint(obj):
        check_same_run(args, obj, ckpt_path)
        load_network(model, obj, str(ckpt_path))
        if pots is not None:
            sd = potentials_state_from(obj, str(ckpt_path))
            if sd is None:
                raise CheckpointError(f"{ckpt_path} has no potentials (a Restormer run?); resume it with "
                                      f"--backbone {obj.get('backbone')}")
            load_weights(pots, sd, f"{ckpt_path} (potentials)")
        state = LoopState(epoch=int(obj["epoch"]) + 1, iteration=int(obj["iteration"]),
                          global_step=int(obj.get("global_step", 0)))
        if state.iteration:  # in the checkpoint's iterations: another batch continues elsewhere (continue_with_batch)
            batch, processes = (obj.get("args") or {}).get("batchSize"), obj.get("world_size")
            of = f" of batch {batch} x {counted(processes, 'process', 'processes')}" if batch and processes else ""
            console(f"=> resumed {ckpt_path}: {counted(obj['epoch'], 'epoch')} done and "
                    f"{counted(state.iteration, 'iteration')}{of} of "
                    f"epoch {state.epoch}; continuing after them")
        else:
            console(f"=> resumed {ckpt_path}: {counted(obj['epoch'], 'epoch')} done, continuing at epoch {state.epoch}")
        if state.iteration:
            losses = epoch_losses_from(obj)
            if losses is None:
                console.warn(f"{ckpt_path} does not keep its epoch's losses so far: epoch {state.epoch}'s record "
                             f"will give the means of the iterations after iteration {state.iteration} only")
            else:
                state.loss_sums, state.loss_count = losses
        return state, obj
    if obj is not None and is_reference_checkpoint(obj):
        load_network(model, obj, str(ckpt_path))
        loaded = _load_potentials_if_they_fit(pots, obj, str(ckpt_path))
        note = {True: "its potentials", False: "fresh potentials (the file's do not fit this --patch-size/--de-type)",
                None: "fresh potentials"}[loaded]
        epoch = int(obj.get("epoch", 0))
        state = LoopState(epoch=epoch + 1)
        console(f"=> resumed reference checkpoint {ckpt_path}: weights and epoch {epoch} (continuing at epoch "
                f"{epoch + 1}) with {note} and fresh optimizers")
        return state, None
    if obj is not None:  # a plain state dict or other weights-only file given to --resume
        load_network(model, obj, str(ckpt_path))
        console(f"=> {ckpt_path} holds weights only: starting at epoch {state.epoch} with fresh optimizers")
        return state, None
    if args.pretrained:
        if not Path(args.pretrained).exists():  # the reference trains from random weights here: an hour lost to a typo
            raise ConfigError(f"--pretrained {args.pretrained}: no such file; check the path, or leave "
                              f"--pretrained out to start from random weights")
        path, note = resolve_checkpoint(args.pretrained, "--pretrained")  # a run's folder or latest: its newest
        if note:
            console(f"=> {note}")
        pobj = read_checkpoint(path)
        stored = pobj.get("backbone") if isinstance(pobj, Mapping) else None
        if isinstance(stored, str) and stored != args.backbone:  # said as that, not as two lists of keys
            raise ConfigError(f"--pretrained {path}: the file holds a {stored} network, and this run builds "
                              f"{args.backbone} (--backbone {args.backbone}): pass --backbone {stored} with its "
                              f"configuration, or another checkpoint.{recorded_network(pobj)}")
        try:
            load_network(model, pobj, str(path))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}{recorded_network(pobj)}") from None
        loaded = _load_potentials_if_they_fit(pots, pobj, str(path))
        msg = {True: "network and potentials weights loaded", None: "network weights loaded",
               False: "network weights loaded; its potentials do not fit this run (another --patch-size or "
                      "number of --de-type domains) and start fresh"}[loaded]
        console(f"=> --pretrained {path}: {msg}")
    return state, None


def recorded_network(obj: Any) -> str:
    """The text " The file records its network: <flags>" for a project checkpoint that names its backbone and
    configuration (what a mismatch's fix needs), else ""."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model_config"), Mapping) or \
            obj.get("backbone") not in BACKBONES:
        return ""
    try:
        flags = flags_for(obj["model_config"], obj["backbone"])
    except (ValueError, TypeError):  # a configuration this version cannot build: nothing to name
        return ""
    return f" The file records its network: {flags}" if flags else ""
