"""One (arm, seed) run of the study: trained by the real trainer (``utils.train.engine``), evaluated by the
tester's engine (``utils.eval.evaluation``), embedded for the probe, and cached in its folder
(``<out>/runs/<arm>/seed<k>/``: ``train/``, ``eval.json``, ``embeddings.npz``); the study's folder
(``study_config.json``). The machine it ran on: :func:`utils.runtime.machine_info`."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.checkpoints import load_model
from utils.data.degradations import num_sources
from utils.errors import STOPPED_STATUSES, StopSignal
from utils.eval.evaluation import evaluate_tasks
from utils.eval.protocol import Protocol
from utils.files import atomic_write, write_text
from utils.streams import PIPE_CLOSED_STATUS, OutputClosed
from utils.study.arms import ARMS, ID_TASKS, OOD_TASKS, Arm, arm_model_config, override_flags
from utils.study.errors import StudyError
from utils.study.probe import ProbeView, embed
from utils.train.distributed import DistInfo
from utils.train.engine import run_cli
from utils.train.options import get_args_parser as trainer_parser
from utils.train.run_checks import MemoryFit, memory_fit

# --------------------------------------------------------------------------- data and training

def balanced_repeats(manifest: dict, min_samples: int) -> dict[str, int]:
    """``--repeat`` factors giving each family (noise, rain, haze) about the same share of an epoch.

    The paper's factors balance the paper's data sizes (derain x360 for 200 images); on the demo
    data they would make an epoch 97% rain. Noise levels split the noise family's share equally.
    The epoch holds at least ``min_samples`` samples, so capped epochs never run short.
    """
    files = manifest["files"]
    n_clean = sum(rel.startswith("Train/Denoise/") for rel in files)
    n_rain = sum(rel.startswith("Train/Derain/rainy/") for rel in files)
    n_haze = sum(rel.startswith("Train/Dehaze/synthetic/") for rel in files)
    per_type = {"denoise_15": (n_clean, 3), "denoise_25": (n_clean, 3), "denoise_50": (n_clean, 3),
                "derain": (n_rain, 1), "dehaze": (n_haze, 1)}
    share = max(max(n * k for n, k in per_type.values()), math.ceil(min_samples / 3))
    while True:
        reps = {de: max(1, round(share / (n * k))) for de, (n, k) in per_type.items()}
        if sum(reps[de] * n for de, (n, _) in per_type.items()) >= min_samples:
            return reps
        share += max(1, share // 10)


def trainer_argv(args: argparse.Namespace, arm: Arm, seed: int, root: Path, train_dir: Path,
                 repeats: dict[str, int]) -> list[str]:
    """The trainer's command line for ``arm`` with ``seed``: the demo data under ``root`` (``repeats``: its
    ``--repeat`` factors), the budget of ``args``, outputs in ``train_dir``, ``--resume auto``."""
    train = root / "Train"
    return ["--preset", "tiny", "--backbone", arm.backbone, *override_flags(arm),
            *(["--ablate", *arm.ablate] if arm.ablate else []),
            "--de-type", *ID_TASKS, "--denoise-dir", str(train / "Denoise"), "--derain-dir", str(train / "Derain"),
            "--dehaze-dir", str(train / "Dehaze"), "--data-file-dir", "",  # scan the synthetic folders
            "--repeat", *(f"{k}={v}" for k, v in repeats.items()),
            "--batch-size", str(args.batch_size), "--patch-size", str(args.patch_size),
            "--epochs", str(args.epochs), "--iters-per-epoch", str(args.iters // args.epochs),
            "--step", str(max(1, args.epochs - 1)), "--lr", str(args.lr), "--seed", str(seed),
            "--device", args.device, "--threads", "0", "--output-dir", str(train_dir),
            "--figs-dir", str(train_dir), "--save-every", "50", "--keep", "2", "--log-every", "10",
            "--resume", "auto", "--degset", ""]


def memory_fits(args: argparse.Namespace, arms: list[str], root: Path,
                device: torch.device) -> dict[str, MemoryFit] | None:
    """Per arm of ``arms``, its run's memory on ``device`` by the trainer's own estimate and check
    (:func:`~utils.train.run_checks.memory_fit`), from the trainer's arguments that run gets (:func:`trainer_argv`,
    parsed by the trainer's parser); None where the free memory is not known. Every seed's run needs the same."""
    seed, fits = args.seeds[0], {}
    for name in arms:
        train_dir = Path(args.out) / "runs" / name / f"seed{seed}" / "train"
        # --repeat sizes an epoch, not a batch: the factors of the built data (balanced_repeats) change no memory
        targs = trainer_parser().parse_args(trainer_argv(args, ARMS[name], seed, root, train_dir,
                                                         dict.fromkeys(ID_TASKS, 1)))
        fit = memory_fit(targs, num_sources(targs.de_type), DistInfo(device=device))
        if fit is None:
            return None
        fits[name] = fit
    return fits


def finished_checkpoint(train_dir: Path, epochs: int) -> Path | None:
    """The run's final checkpoint, or None while it is missing or unfinished."""
    from utils.checkpoints import CheckpointError, read_checkpoint, read_latest
    latest = read_latest(train_dir) if train_dir.is_dir() else None
    if latest is None:
        return None
    try:
        obj = read_checkpoint(latest)
    except CheckpointError as exc:  # "copy or download it again": not what a study's user can do
        raise StudyError(f"{exc} — here: delete {latest} and run the same command again, which continues that run "
                         f"from its checkpoint before (or trains it again); the other runs are kept") from None
    return latest if int(obj.get("epoch", 0)) >= epochs and int(obj.get("iteration", 0)) == 0 else None


def train_run(argv: list[str], train_dir: Path, epochs: int, progress: bool) -> Path:
    """Train (or continue) one run with the real trainer; its console output goes to ``train/stdout.txt``.

    ``run_cli`` and its parser are what ``trainer_bary.py``'s ``main`` runs; the script itself is not importable
    here (``python bench/study.py`` puts bench/, not the repository root, on sys.path, and the package
    installs only ``net`` and ``utils``)."""
    targs = trainer_parser().parse_args(argv)
    targs.status_on_stop = True  # a signal's stop returns 128 + it: the study names SIGTERM, not "interrupted"
    train_dir.mkdir(parents=True, exist_ok=True)
    with open(train_dir / "stdout.txt", "a") as fh, contextlib.redirect_stdout(fh), \
            (contextlib.redirect_stderr(fh) if not progress else contextlib.nullcontext()):
        rc = run_cli(targs)
    if rc in STOPPED_STATUSES:  # Ctrl-C, SIGTERM or SIGHUP, while the trainer started or trained: the study stops so
        raise StopSignal(rc - 128)
    if rc == PIPE_CLOSED_STATUS:  # --progress: the console's reader went away; the trainer saved and stopped
        raise OutputClosed("the output's reader has gone")  # the study ends as every script does (status 141)
    if rc:
        raise StudyError(f"training failed (exit code {rc}); see {train_dir}/stdout.txt. Fix it, then rerun the "
                         f"same command: finished runs are kept")
    ckpt = finished_checkpoint(train_dir, epochs)
    if ckpt is None:  # stopped otherwise (a closed pipe past its status): the trainer saved a checkpoint
        raise KeyboardInterrupt
    return ckpt


# --------------------------------------------------------------------------- evaluation

def evaluate_model(model: torch.nn.Module, root: Path, device: torch.device) -> dict[str, Any]:
    """Per-task mean and per-image PSNR/SSIM on the nine tasks (the reference protocol)."""
    res = evaluate_tasks(model, ID_TASKS + OOD_TASKS, root / "test", Protocol(), device, progress=False)
    out = {}
    for row, r in res["tasks"].items():
        if row.split("/")[0] in out:
            raise StudyError(f"{root / 'test'}: task {row.split('/')[0]} has several sets; the study expects the "
                             f"demo layout (one set per task)")
        out[row.split("/")[0]] = {"row": row, "psnr": r["psnr"], "ssim": r["ssim"],
                                  "images": {im["name"]: [im["psnr"], im["ssim"]] for im in r["images"]}}
    return out


# --------------------------------------------------------------------------- one run, its folder, the machine

def check_network(arm_name: str, network: dict | None, source: Path) -> None:
    """Refuse a run (a checkpoint, or a cached evaluation) of another network than the arm's today, e.g.
    after MATCHED_DIM changed: its results would be reported under the arm's name. Caches written before
    the check existed carry no ``network`` and pass."""
    if network is None:
        return
    arm = ARMS[arm_name]
    want, have = arm_model_config(arm), network.get("model_config") or {}
    differ = [f"{k} {have.get(k)!r} there, {v!r} now" for k, v in want.items() if have.get(k) != v]
    if network.get("backbone") != arm.backbone:
        differ.insert(0, f"backbone {network.get('backbone')!r} there, {arm.backbone!r} now")
    if differ:
        raise StudyError(f"{source} holds a run of another network than arm {arm_name} ({'; '.join(differ)}). "
                         f"Delete {source.parent if source.name == 'eval.json' else source.parents[1]} to "
                         f"retrain it, or pass another --out")


def damaged(path: Path, exc: BaseException, fix: str, why: str | None = None) -> StudyError:
    """The error for a file of the study's that cannot be read (cut short by a crash or a full disk, or edited):
    it names ``path`` and why (``why``, else ``exc``'s text), then ``fix``; returns it for the caller to raise."""
    why = why or " ".join(str(exc).split()) or type(exc).__name__
    return StudyError(f"{path} is damaged and cannot be read ({type(exc).__name__}: {why}) — {fix}")


def read_json(path: Path, fix: str, *keys: str) -> dict[str, Any]:
    """The JSON object in ``path``, holding ``keys``; a :class:`StudyError` (:func:`damaged`, with ``fix``) when
    it is not one (a truncated cache raised a traceback)."""
    try:
        found = json.loads(path.read_text())
        if not isinstance(found, dict):
            raise ValueError(f"a JSON {type(found).__name__}, not an object")
        missing = [k for k in keys if k not in found]
        if missing:
            raise ValueError(f"no {missing[0]!r}")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise damaged(path, exc, fix) from None
    return found


def read_eval(run_dir: Path) -> dict[str, Any]:
    """The cached evaluation of the run in ``run_dir`` (its ``eval.json``), checked readable."""
    return read_json(run_dir / "eval.json", f"delete it to have that run evaluated again from its finished checkpoint "
                                            f"(or delete {run_dir} to train it again); the other runs are kept",
                     "tasks", "train_seconds", "eval_seconds")


def read_embeddings(run_dir: Path) -> dict[str, np.ndarray]:
    """The cached embeddings of the run in ``run_dir`` (its ``embeddings.npz``), checked readable."""
    path = run_dir / "embeddings.npz"
    try:
        with np.load(path) as z:
            emb = dict(z)
        missing = [k for k in ("wb", "residual", "source", "cos") if k not in emb]
        if missing:
            raise ValueError(f"no {missing[0]!r} array")
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        fix = (f"delete it to have that run evaluated and embedded again from its finished checkpoint (or delete "
               f"{run_dir} to train it again); the other runs are kept")
        # numpy's own words for a file that is not an archive advise loading it with allow_pickle: not here
        raise damaged(path, exc, fix, why="not a whole .npz archive of the study's embeddings") from None
    return emb


def run_one(args, arm_name: str, seed: int, root: Path, repeats: dict, views: list[ProbeView],
            device: torch.device) -> tuple[dict, dict | None, float]:
    """Train, evaluate and embed one (arm, seed) run, or read its caches; returns (eval, embeddings, seconds)."""
    arm = ARMS[arm_name]
    run_dir = Path(args.out) / "runs" / arm_name / f"seed{seed}"
    eval_path, emb_path = run_dir / "eval.json", run_dir / "embeddings.npz"
    want_emb = arm.wb
    if eval_path.is_file() and (emb_path.is_file() or not want_emb):
        cached = read_eval(run_dir)
        check_network(arm_name, cached.get("network"), eval_path)
        return cached["tasks"], read_embeddings(run_dir) if want_emb else None, 0.0
    tic = time.time()
    train_dir = run_dir / "train"
    ckpt = finished_checkpoint(train_dir, args.epochs) or train_run(
        trainer_argv(args, arm, seed, root, train_dir, repeats), train_dir, args.epochs, args.progress)
    t_train = time.time() - tic
    model, info = load_model(ckpt)
    network = {"backbone": info["backbone"], "model_config": info["model_config"]}
    check_network(arm_name, network, ckpt)
    model.to(device).eval()
    tasks = evaluate_model(model, root, device)
    emb = embed(model, views, device) if want_emb else None
    if emb is not None:
        atomic_write(emb_path, lambda fh: np.savez(fh, **emb))
    write_text(eval_path, json.dumps({"checkpoint": str(ckpt), "network": network, "train_seconds": t_train,
                                      "eval_seconds": time.time() - tic - t_train, "tasks": tasks}, indent=1) + "\n")
    return tasks, emb, time.time() - tic


def _json_kind(value: Any) -> str:
    """What ``value`` is in JSON's words: "a string", "a number", "an object", ..."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    kinds = ((str, "a string"), ((int, float), "a number"), (dict, "an object"), (list, "an array"))
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def check_out_dir(out: Path, config: dict) -> None:
    """``--out`` keeps one setting: a different one would mix runs. Seeds and arms may be added."""
    path = out / "study_config.json"
    if path.is_file():
        fix = (f"it records the setting of the runs in {out}: pass another --out, or delete {out} to start over (or, "
               f"if every run there is of this command's setting, delete just it)")
        # every key, of its kind: `{}` (or a JSON of something else) was "runs of another setting (iters: None there"
        old = read_json(path, fix, *config)
        for key, now in config.items():
            kind = (int, float) if isinstance(now, (int, float)) else type(now)
            if isinstance(old[key], bool) or not isinstance(old[key], kind):
                why = f"its {key!r} is {_json_kind(old[key])}, not {_json_kind(now)}"
                raise damaged(path, ValueError(why), fix)
        diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
        if diff:
            listing = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise StudyError(f"{out} holds runs of another setting ({listing}). Pass another --out (and "
                             f"--figs-dir), or delete {out} to start over.")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(config, indent=1) + "\n")

