"""``tester_bary.py --resume``: a benchmark run continued from the ``results.json`` an earlier run of the same
command left in ``--save`` (stopped by Ctrl-C, SIGTERM, a bad image or a full disk; or complete).

The images that run scored are kept with their scores, as long as their restorations are still where its record
says (or it saved none and this run saves none either, ``--no-images``) and their degraded and target files are
still those it read (the SHA-256 of each, :func:`input_digests`, in its record; older records hold none and are
trusted by name); every other image is evaluated. The
earlier run must have scored as this one does: the same protocol, device, model and model configuration
(:func:`check_same_run`), else the two halves would not make one table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from utils.errors import UsageError
from utils.eval.outputs import output_names, recorded_figures
from utils.eval.report import results_texts
from utils.eval.tasks import EvalItem, EvalSet
from utils.owned_outputs import as_written, file_digest

# What may differ between a stopped run and its continuation: the cut to --max-images (a run of the first 100
# images continues to the whole set), which says nothing about how an image is scored.
_MAY_DIFFER = ("max_images",)


@dataclass
class KeptImage:
    """An image the earlier run scored: its entry of ``results["tasks"][row]["images"]``, and the row's notes that
    name it (automatic tiling: a tiled restoration makes its paper column not comparable, kept or not)."""
    image: dict[str, Any]
    notes: list[str] = field(default_factory=list)


# Done images, by row then by image name.
EarlierImages = Mapping[str, Mapping[str, KeptImage]]

# The keys of an image's record that hold the SHA-256 of the files it was scored on (``target_sha256`` is another
# file: the 8-bit target saved into --savetar).
INPUT_DIGESTS = ("degraded_file_sha256", "target_file_sha256")


def _input_files(item: EvalItem) -> list[tuple[str, Path]]:
    """``(key of INPUT_DIGESTS, path)`` of each file ``item`` is scored on: its degraded image (none when
    synthesised) and its target."""
    return [(key, path) for key, path in zip(INPUT_DIGESTS, (item.degraded, item.target)) if path is not None]


def input_digests(item: EvalItem) -> dict[str, str]:
    """The SHA-256 of the files ``item`` is scored on (:func:`_input_files`), under the keys of
    :data:`INPUT_DIGESTS`: recorded with its scores, so that ``--resume`` scores it again once a file of the same
    name holds other content. :class:`OSError` when one cannot be read."""
    return {key: file_digest(path) for key, path in _input_files(item)}


def _inputs_changed(image: Mapping[str, Any], item: EvalItem) -> bool:
    """Whether a file ``image`` (an earlier record's entry) was scored on holds other content now (or cannot be
    read); False for a record without digests (written before they were recorded)."""
    files = [(key, path) for key, path in _input_files(item) if isinstance(image.get(key), str)]
    try:
        return any(file_digest(path) != image[key] for key, path in files)
    except OSError:
        return True


def read_earlier_results(save: Path) -> dict[str, Any]:
    """The ``results.json`` in ``save`` that ``--resume`` continues: :class:`UsageError` when there is none, or
    it is not a benchmark run's record."""
    path = save / "results.json"
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"--resume: no results.json in {save} to continue (an earlier run writes it there, also "
                         f"when stopped): drop --resume, or pass the --save of the run to continue") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume: {path} cannot be read as a tester's results ({exc}): drop --resume to start "
                         f"afresh (the file is then moved aside)") from None
    if not isinstance(record, dict) or not isinstance(record.get("tasks"), dict) \
            or not isinstance(record.get("protocol"), dict):
        raise UsageError(f"--resume: {path} is not the record of a benchmark run (--tasks or --degset/--tarset): "
                         f"drop --resume to start afresh (the file is then moved aside)")
    return record


def check_same_run(earlier: Mapping[str, Any], now: Mapping[str, Any], path: Path, same_weights: bool = False
                   ) -> None:
    """:class:`UsageError` naming each setting of the run description ``now`` (protocol, device, model: what
    :func:`utils.eval.evaluation.run_description` gives) that the earlier record's ``protocol`` has otherwise.
    ``same_weights``: the checkpoint's digest is the one the record holds (:func:`recorded_digest`), so the path it
    was given by (``model``: relative, from another folder, through a link) may differ."""
    may_differ = (*_MAY_DIFFER, "model") if same_weights else _MAY_DIFFER
    keys = [k for k in dict.fromkeys([*now, *earlier]) if k not in may_differ]
    differ = [f"{k}: {earlier.get(k)!r} there, {now.get(k)!r} now" for k in keys if earlier.get(k) != now.get(k)]
    if differ:
        raise UsageError(f"--resume: the run recorded in {path} scored otherwise than this one would "
                         f"({'; '.join(differ[:4])}{'; ...' if len(differ) > 4 else ''}), so their images would "
                         f"not make one table: run with that run's flags and model, or drop --resume to start "
                         f"afresh (its files are then moved aside)")


def recorded_digest(earlier: Mapping[str, Any]) -> str | None:
    """The checkpoint digest the earlier record holds (``provenance.model_sha256``), None in older records."""
    made = earlier.get("provenance")
    return made.get("model_sha256") if isinstance(made, dict) else None


def check_same_weights(earlier: Mapping[str, Any], model_digest: str, model: str, path: Path) -> None:
    """:class:`UsageError` when the earlier record's checkpoint digest (``provenance.model_sha256``; older records
    have none) is not ``model_digest``: the same file name held other weights then (a fresh training run in its
    folder writes its checkpoints under the same names), and the two halves would not make one table."""
    then = recorded_digest(earlier)
    if then and then != model_digest:
        raise UsageError(f"--resume: the run recorded in {path} scored {model} when it held other weights (its "
                         f"SHA-256 then differs from the file's now: written again since, e.g. by training in its "
                         f"folder), so their images would not make one table: drop --resume to evaluate afresh (its "
                         f"files are then moved aside)")


def earlier_images(record: Mapping[str, Any], sets: Sequence[EvalSet], save: Path, subfolders: bool,
                   saves_images: bool) -> tuple[EarlierImages, list[str]]:
    """The images of ``sets`` that the earlier run (its parsed ``record``) scored and this one keeps: recorded
    under the row and name this run gives them, with their restoration still at the recorded place when this
    run saves images (``saves_images``); a record without restorations when it does not; and with the same
    degraded and target files as it scored (where the record holds their digests). Also the images left out for
    the last reason, as ``"ROW/NAME"``: their inputs were replaced since, and they are scored again."""
    kept: dict[str, dict[str, KeptImage]] = {}
    changed: list[str] = []
    for s in sets:
        row = record["tasks"].get(s.name)
        images = row.get("images") if isinstance(row, dict) else None
        notes = [n for n in (row.get("notes") if isinstance(row, dict) else None) or [] if isinstance(n, str)]
        by_name = {im.get("name"): im for im in images or [] if isinstance(im, dict) and _scored(im)}
        prefix = f"{s.name}/" if subfolders else ""
        for item, out_name in zip(s.items, output_names([item.name for item in s.items])):
            image = by_name.get(item.name)
            if image is None:
                continue
            output = image.get("output")
            if saves_images and (output != prefix + out_name or not (save / output).is_file()):
                continue  # its restoration is not there: restored again
            if _inputs_changed(image, item):
                changed.append(f"{s.name}/{item.name}")
                continue  # scored on files replaced since: its scores are not this data's
            named = f"note: {item.degraded or item.target} ("  # how restore_array's notes begin
            kept.setdefault(s.name, {})[item.name] = KeptImage(image, [n for n in notes if n.startswith(named)])
    return kept, changed


def _scored(image: Mapping[str, Any]) -> bool:
    return all(isinstance(image.get(k), (int, float)) for k in ("psnr", "ssim", "input_psnr", "input_ssim",
                                                               "seconds"))


def own_targets(kept: EarlierImages, savetar: Path) -> set[Path]:
    """The targets in ``savetar`` (``--savetar``) of the images ``--resume`` keeps that the earlier run saved there
    and nobody has changed since (its record holds each one's ``target_sha256``): they stay where they are, as their
    restorations do, instead of going aside into a ``results.before-*`` folder at every resume."""
    own = set()
    for row in kept.values():
        for k in row.values():
            output, digest = k.image.get("output"), k.image.get("target_sha256")
            if not isinstance(output, str) or not isinstance(digest, str):
                continue
            if as_written(savetar / output, digest):
                own.add(savetar / output)
    return own


def kept_outputs(kept: EarlierImages, save: Path) -> set[Path]:
    """The restorations of the images ``--resume`` keeps: they stay where they are (not moved aside)."""
    return {save / k.image["output"] for row in kept.values() for k in row.values() if k.image.get("output")}


def own_results_files(record: Mapping[str, Any], sets: Sequence[EvalSet], save: Path) -> set[Path]:
    """The ``results.json``/``.csv``/``.md`` in ``save`` that ``--resume`` replaces in place rather than moving
    aside: each exactly as the earlier run wrote it for its parsed ``record`` (:func:`~utils.eval.report.results_texts`;
    a file edited since, or a link, is the user's and goes aside), and only when this run's ``sets`` cover every image
    the record holds, so that the new record describes all of it (a record of other rows or of images past a smaller
    --max-images goes aside with the restorations it alone describes). Each resumed run otherwise left a
    ``results.before-*`` folder of its own earlier results."""
    names = {s.name: {item.name for item in s.items} for s in sets}
    tasks = record.get("tasks") or {}
    for row, r in tasks.items():
        images = r.get("images") if isinstance(r, dict) else None
        if row not in names or not isinstance(images, list) \
                or any(not isinstance(im, dict) or im.get("name") not in names[row] for im in images):
            return set()
    try:
        texts = results_texts(record)
    except (KeyError, TypeError, ValueError, AttributeError):  # a record this tester would not have written
        return set()
    own = set()
    for ext, text in texts.items():
        path, written = save / f"results.{ext}", text.encode("utf-8", "backslashreplace")  # as write_text does
        try:
            if not path.is_symlink() and path.is_file() and path.read_bytes() == written:
                own.add(path)
        except OSError:
            continue
    return own


def own_figures(record: Mapping[str, Any], figs_dir: Path) -> set[Path]:
    """The figures in ``figs_dir`` that the earlier run drew (its parsed ``record`` names each row's ``figure`` and
    its ``figure_sha256``: :func:`~utils.eval.outputs.recorded_figures`) and nobody has changed since: ``--resume``
    draws them again in place instead of moving them aside. Each resumed run with ``--figs`` otherwise left a
    ``results.before-*`` folder of its own figures."""
    own = set()
    for drawn, digest in recorded_figures(record).items():
        path = figs_dir / drawn.name
        try:
            same_place = drawn.resolve() == path.resolve()
        except OSError:
            continue
        if same_place and as_written(path, digest):
            own.add(path)
    return own
