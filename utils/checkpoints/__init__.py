"""Checkpoints, all in one place: reading every format without running code, the training
checkpoint's format, saving (atomic, rotated, with a ``latest`` pointer), and resuming.

Everything is imported from here (``from utils.checkpoints import read_checkpoint``); the modules are

- :mod:`~utils.checkpoints.guard`: the limits a file must pass before it is loaded at all;
- :mod:`~utils.checkpoints.unpickling`: loading without running code (the restricted unpickler);
- :mod:`~utils.checkpoints.weights`: the network's weights out of any format, checked;
- :mod:`~utils.checkpoints.identify`: which of the project's networks a state dict holds (for a refusal to name);
- :mod:`~utils.checkpoints.reading`: :func:`read_checkpoint`, the guard, the load and the checks in one call;
- :mod:`~utils.checkpoints.folder`: a run's output folder (names, ``latest``, rotation, the newest checkpoint);
- :mod:`~utils.checkpoints.network`: :func:`load_model`, the network a checkpoint needs, built and loaded;
- :mod:`~utils.checkpoints.training`: the training checkpoint, RNG states, and choosing where to resume.

Reading. Three formats are accepted wherever weights are loaded:

- a plain state dict (``{name: tensor}``), optionally under ``state_dict``/``params`` (PyTorch-Lightning
  files, as PromptIR's released weights: ``state_dict`` with every key under ``net.``, which is stripped);
- the project's own checkpoint (a dict of state dicts, the network under ``model``);
- a reference BaryIR checkpoint: a whole pickled module under the key ``BaryIR``.

Plain and project files are read with ``torch.load(weights_only=True)``. A reference
file needs its pickled classes, which ``weights_only`` refuses; it is read by
:class:`~utils.checkpoints.unpickling._InertUnpickler`, which honours only an allow-list of tensor-rebuilding and
container globals and turns every other class into an inert placeholder. Nothing named
in the file is imported or called; calling anything that is not allow-listed (the way a
malicious pickle runs code) is refused. Python's unrestricted unpickler is never used.

Writing. The training checkpoint (what the trainers write and resume from) is a dict of state
dicts (loadable with ``torch.load(weights_only=True)``):

=====================  ==========================================================
``format_version``     :data:`FORMAT_VERSION`
``model``              BaryNet (or Restormer) state dict, no ``module.`` prefixes
``potentials``         Potentials state dict (None for the Restormer baseline)
``optimizer``          the map's optimizer state dict
``potentials_optimizer``  the potentials' optimizer state dict (None for Restormer)
``scaler``             GradScaler state dict ({} unless ``--precision fp16``)
``epoch``              epochs completed (the reference's meaning: resume at epoch+1)
``iteration``          iterations completed in epoch ``epoch+1`` (0 at an epoch's end)
``global_step``        iterations since the run began
``epoch_losses``       ``{"count": n, "sums": {loss: sum}}`` over the epoch's iterations so far: mid-epoch,
                       the epoch record's means continue from them on resume; at an epoch's end, the epoch
                       record is written from them when the run stopped before writing it
``rng``                rank 0's python, numpy, torch and CUDA generator states (tensors, plain types)
``model_config``       the network's constructor arguments
``backbone``           ``BaryNet`` or ``Restormer``; ``preset`` the ``--preset`` it was built from
``lambdas``            the barycenter weights; ``domains`` their family names, ``domain_counts``
``world_size``         processes that trained it (the data order of a resumed epoch depends on it)
``args``               the command-line arguments as a plain dict
=====================  ==========================================================

Files in ``--output-dir``: ``epoch_003.pth`` after epoch 3, ``iter_e004_i000500.pth`` after
500 iterations of epoch 4, and ``latest`` (JSON, written atomically after the checkpoint)
naming the newest. Only the newest ``keep`` checkpoints are kept (0 keeps all); the one
``latest`` names is never removed.

Limits. A checkpoint is untrusted input: before ``torch.load`` sees a file,
:func:`utils.checkpoints.guard.inspect_checkpoint` refuses archives that unpack hugely, pickles
that import or build too much or nest too deeply, and tensors whose shape does not fit their
storage; after loading, every tensor is checked again, a project checkpoint's ``model_config``
must describe its weights, a training checkpoint's RNG and optimizer states must have their
expected shapes, and :func:`load_weights` refuses non-finite weights. Saving serializes in
memory first, so a full disk is refused (or reported) with the bytes needed, and stale
temporaries of killed writers are removed.
"""
from utils.checkpoints.folder import (
    CHECKPOINT_DIR,
    CHECKPOINT_SUFFIXES,
    DEAD_WRITER_GRACE_SECONDS,
    LATEST,
    LOG_NAME,
    REFERENCE_MODEL_NAME,
    STALE_TEMP_SECONDS,
    checkpoint_name,
    default_model,
    latest_names,
    list_checkpoints,
    model_or_default,
    newest_checkpoint,
    progress_of,
    read_latest,
    remove_stale_temporaries,
    resolve_checkpoint,
    rotate,
    save_atomic,
)
from utils.checkpoints.guard import CheckpointError
from utils.checkpoints.network import load_model
from utils.checkpoints.reading import (
    check_rng_state,
    load_model_weights,
    read_checkpoint,
)
from utils.checkpoints.training import (
    FORMAT_VERSION,
    LatestNotUpdated,
    LoopState,
    all_finite,
    check_optimizer_state,
    epoch_losses_from,
    latest_record,
    plain_args,
    restore_training_state,
    resume_candidates,
    rng_state,
    save_training_checkpoint,
    set_rng_state,
    training_checkpoint,
)
from utils.checkpoints.unpickling import (
    MAX_PICKLE_GLOBALS,
)
from utils.checkpoints.weights import (
    LEGACY_UNUSED_KEYS,
    check_config_matches_weights,
    is_reference_checkpoint,
    is_training_checkpoint,
    load_network,
    load_weights,
    model_state_from,
    normalise_state_dict,
    potentials_state_from,
)

__all__ = [
    "CHECKPOINT_DIR", "CHECKPOINT_SUFFIXES", "DEAD_WRITER_GRACE_SECONDS", "LATEST", "LOG_NAME", "REFERENCE_MODEL_NAME",
    "model_or_default", "STALE_TEMP_SECONDS", "checkpoint_name", "default_model", "list_checkpoints",
    "newest_checkpoint", "progress_of", "latest_names", "read_latest", "remove_stale_temporaries",
    "resolve_checkpoint", "rotate", "save_atomic", "CheckpointError", "load_model", "check_rng_state",
    "load_model_weights", "read_checkpoint",
    "FORMAT_VERSION", "LatestNotUpdated", "LoopState", "all_finite", "check_optimizer_state", "epoch_losses_from",
    "latest_record", "plain_args", "restore_training_state", "resume_candidates", "rng_state",
    "save_training_checkpoint",
    "set_rng_state", "training_checkpoint", "MAX_PICKLE_GLOBALS", "LEGACY_UNUSED_KEYS", "check_config_matches_weights",
    "is_reference_checkpoint", "is_training_checkpoint", "load_network", "load_weights", "model_state_from",
    "normalise_state_dict", "potentials_state_from",
]
