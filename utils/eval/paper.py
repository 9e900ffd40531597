"""The paper's tables: which rows of a run are the paper's columns, the paper's average over exactly
those columns, and the published BaryIR numbers to compare with (docs/METHOD.md §4).

The tester's own "Average" is over every row it evaluated (BSD68 and Kodak24 count separately, extra
sets count too); the paper averages its five columns:

- 3D: SOTS, Rain100L, BSD68 σ15, σ25, σ50;
- 5D: SOTS, Rain100L, BSD68 σ25, GoPro, LOL.

A row fills a column when its task and set say so: ``dehaze`` (or ``dehaze/<set with 'sots' in its
name>``, or ``dehaze/outdoor``) is SOTS, ``derain`` (or ``derain/Rain100L``) is Rain100L,
``denoise_<σ>/bsd68`` (or ``/cbsd68``) is BSD68 σ, ``deblur`` (or ``deblur/GoPro``) is GoPro, ``lowlight``
(or ``lowlight/LOL``, or ``lowlight/eval15``, LOL's own folder name) is LOL.

Names of other splits do not fill a column: a ``dehaze`` set named ``*indoor*`` (SOTS indoor) is not the
paper's SOTS outdoor, nor a ``lowlight`` set named ``*v2*`` (LOL-v2) its LOL.

A row that fills a column but is not scored as the paper's is flagged wherever it is compared
(:func:`caveat`): another number of images than the paper's set (``--max-images``, a partial download or
run, another split under the task's folder), images restored in tiles (MDTA attends over the whole image,
so a tiled restoration is another function), or a run scored by other rules than the paper's
(:func:`protocol_caveat`: ``--protocol pad``, ``--metric-space y``, ``--ssim gaussian``, ``--crop-border``,
``--precision`` other than fp32, ``--tile N``).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from utils.errors import table_cell

SETTINGS = {
    "3d": ("SOTS", "Rain100L", "BSD68 σ15", "BSD68 σ25", "BSD68 σ50"),
    "5d": ("SOTS", "Rain100L", "BSD68 σ25", "GoPro", "LOL"),
}
# The degradation families each setting trains on (a trainer checkpoint records its own as ``domains``).
SETTING_FAMILIES = {"3d": ("denoise", "derain", "dehaze"), "5d": ("denoise", "derain", "dehaze", "deblur", "lowlight")}
# Published BaryIR (PSNR, SSIM), TPAMI 2026, the tables reproduced in docs/METHOD.md §4.
PUBLISHED = {
    "3d": {"SOTS": (31.40, 0.980), "Rain100L": (39.02, 0.985), "BSD68 σ15": (34.16, 0.935),
           "BSD68 σ25": (31.54, 0.892), "BSD68 σ50": (28.25, 0.802)},
    "5d": {"SOTS": (31.20, 0.979), "Rain100L": (38.10, 0.982), "BSD68 σ25": (31.43, 0.891),
           "GoPro": (29.51, 0.889), "LOL": (23.37, 0.854)},
}
# Each task's column, the set names (lower case, contained in the row's set name) that mean it, and those
# that mean another split of the same data set.
_SET_OF = {"dehaze": ("SOTS", ("sots", "outdoor"), ("indoor",)), "derain": ("Rain100L", ("rain100l",), ()),
           "deblur": ("GoPro", ("gopro",), ()), "lowlight": ("LOL", ("lol", "eval15"), ("v2",))}
_BSD68_NAMES = ("bsd68", "cbsd68")
# Images in each of the paper's test sets (their standard sizes: SOTS outdoor, Rain100L, BSD68, GoPro test, LOL eval15).
SET_SIZES = {"SOTS": 500, "Rain100L": 100, "BSD68": 68, "GoPro": 1111, "LOL": 15}


def paper_column(row: str) -> str | None:
    """The paper column a result row fills (``'denoise_25/bsd68'`` -> ``'BSD68 σ25'``), None if none."""
    task, _, subset = row.partition("/")
    if task.startswith("denoise_") and task[8:].isdigit():
        return f"BSD68 σ{int(task[8:])}" if subset.lower() in _BSD68_NAMES else None
    if task in _SET_OF:
        column, keys, others = _SET_OF[task]
        name = subset.lower()
        if any(k in name for k in others):
            return None
        return column if not subset or any(k in name for k in keys) else None
    return None


def other_setting_rows(rows: Iterable[str], setting: str) -> dict[str, str]:
    """``{row: column}`` for the ``rows`` that fill a paper column the ``setting`` table has no number for (BSD68 σ15
    in 5D, GoPro and LOL in 3D) and another setting's table has (:func:`settings_with`); a column no table has (BSD68
    σ75, the study's unseen noise) is no paper set's, as a row of any other set."""
    return {row: column for row in rows
            if (column := paper_column(row)) and column not in SETTINGS[setting] and settings_with([column])}


def settings_with(columns: Iterable[str]) -> list[str]:
    """The settings whose tables have all of ``columns``."""
    return [s for s, have in SETTINGS.items() if all(c in have for c in columns)]


def only_in_table(columns: Iterable[str]) -> tuple[str, str]:
    """Where the paper has a number for ``columns``, which the compared table has not (:func:`other_setting_rows`),
    as the tester's warning and the comparison under the table say it: ``("only in the 3D table", "--compare-paper
    3d")``, the tables having them all (:func:`settings_with`) and the flags that compare with those."""
    settings = settings_with(columns)
    return (f"only in the {' or '.join(s.upper() for s in settings) or 'other'} table",
            " or ".join(f"--compare-paper {s}" for s in settings))


# The paper's scoring (docs/METHOD.md §4): each protocol field, its value there, and how another reads.
_PAPER_RULES = (("protocol", "reference", "--protocol {}"), ("metric_space", "rgb", "{}-channel PSNR/SSIM"),
                ("ssim", "skimage", "{} SSIM"), ("crop_border", 0, "--crop-border {}"),
                ("precision", "fp32", "{} inference"))


def protocol_caveat(protocol: Mapping[str, Any] | None) -> str | None:
    """Why a run scored under ``protocol`` (results.json's ``"protocol"``) is not scored as the paper's, None
    when it is: its rules in :data:`_PAPER_RULES`, or every image restored in tiles (``--tile N``)."""
    if not protocol:
        return None
    why = [text.format(protocol[key]) for key, paper, text in _PAPER_RULES
           if key in protocol and protocol[key] != paper]
    tile = protocol.get("tile")
    if type(tile) is int and tile > 0:
        why.append(f"restored in {tile}x{tile} tiles (--tile {tile})")
    return ", ".join(why) or None


def caveat(column: str, result: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> str | None:
    """Why a row filling ``column`` is not scored as the paper's (None when it is): another number of images
    than the paper's set, a run stopped in it, tiled restorations, or the run's rules (:func:`protocol_caveat`)."""
    why = []
    size = SET_SIZES[column.split(" ")[0]]
    count = result.get("count", 0)
    if count != size:
        why.append(f"{count} of the paper's {size} images" if count < size
                   else f"{count} images where the paper's set has {size}")
    if result.get("partial"):
        why.append("stopped partway")
    if result.get("notes"):
        why.append("restored in tiles")
    if rules := protocol_caveat(protocol):
        why.append(rules)
    return ", ".join(why) or None


def paper_columns(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{column: row}`` for the rows of ``tasks`` (the tester's per-row results) that hold scores and fill
    a paper column; a column two rows could fill (``derain`` and ``derain/Rain100L``) takes the first."""
    found: dict[str, str] = {}
    for row, r in tasks.items():
        column = paper_column(row)
        if column and r.get("count") and column not in found:
            found[column] = row
    return found


def paper_averages(tasks: Mapping[str, Mapping[str, Any]],
                   protocol: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{setting: {"psnr", "ssim", "rows"}}`` for each paper setting whose five columns are all present:
    the mean over exactly those columns, as the paper's "Average"; ``"caveats"`` (:func:`caveat`, under the
    run's ``protocol``) names the columns not scored as the paper's."""
    columns = paper_columns(tasks)
    out = {}
    for setting, needed in SETTINGS.items():
        if all(c in columns for c in needed):
            rows = [tasks[columns[c]] for c in needed]
            caveats = {c: why for c in needed if (why := caveat(c, tasks[columns[c]], protocol))}
            out[setting] = {"psnr": sum(r["psnr"] for r in rows) / len(rows),
                            "ssim": sum(r["ssim"] for r in rows) / len(rows),
                            "rows": {c: columns[c] for c in needed}, **({"caveats": caveats} if caveats else {})}
    return out


def setting_note(domains: Any, setting: str) -> str | None:
    """What to say when a checkpoint trained on the families ``domains`` (its record, e.g. ``['denoise', 'derain',
    'dehaze']``) is compared with the published ``setting`` but was not trained on that setting's families (the other
    setting's, a ``single`` K=1 run, ...); None when it was, or when nothing is recorded (a reference checkpoint, a
    plain state dict: ``domains`` None)."""
    if not isinstance(domains, (list, tuple)) or not domains or not all(isinstance(d, str) for d in domains):
        return None
    wanted = SETTING_FAMILIES[setting]
    if set(domains) == set(wanted):
        return None
    other = next((s for s, families in SETTING_FAMILIES.items() if set(families) == set(domains)), None)
    trained = f"the {other.upper()} setting" if other else f"K={len(domains)} degradation famil" + \
        ("y" if len(domains) == 1 else "ies")
    return (f"this checkpoint was trained on {', '.join(domains)} ({trained}), not on the {setting.upper()} setting's "
            f"{', '.join(wanted)}: the published {setting.upper()} numbers are of a model trained otherwise, so the "
            f"differences measure the training as well as the method")


def comparison_lines(tasks: Mapping[str, Mapping[str, Any]], setting: str,
                     protocol: Mapping[str, Any] | None = None, note: str | None = None) -> list[str]:
    """A markdown table: each of ``setting``'s columns, this run's PSNR/SSIM, the published BaryIR
    numbers and the difference (missing columns say so), then the averages over the columns present
    in both; rows not scored as the paper's (:func:`caveat`, under the run's ``protocol``) say why, and rows filling a
    column only another setting's table has (:func:`other_setting_rows`) are named under it with that setting.
    ``note`` (:func:`setting_note`: a checkpoint trained on other families) is said above the table."""
    columns = paper_columns(tasks)
    published = PUBLISHED[setting]
    lines = [f"Against the published BaryIR {setting.upper()} results:", "",
             *([f"Note: {note}.", ""] if note else []),
             "| Column | Row | This run PSNR/SSIM | Published | Δ PSNR | Δ SSIM |", "|---|---|---|---|---|---|"]
    ours, theirs, flagged = [], [], []
    for column in SETTINGS[setting]:
        p_psnr, p_ssim = published[column]
        row = columns.get(column)
        if row is None:
            lines.append(f"| {column} | (not evaluated) | | {p_psnr:.2f}/{p_ssim:.3f} | | |")
            continue
        r = tasks[row]
        ours.append((r["psnr"], r["ssim"]))
        theirs.append((p_psnr, p_ssim))
        why = caveat(column, r, protocol)
        flagged += [column] if why else []
        lines.append(f"| {column} | {table_cell(row)}{f' (not comparable: {why})' if why else ''} | {r['psnr']:.2f}/"
                     f"{r['ssim']:.3f} | {p_psnr:.2f}/{p_ssim:.3f} | {r['psnr'] - p_psnr:+.2f} | "
                     f"{r['ssim'] - p_ssim:+.3f} |")
    if ours:
        n = len(ours)
        o = (sum(v[0] for v in ours) / n, sum(v[1] for v in ours) / n)
        t = (sum(v[0] for v in theirs) / n, sum(v[1] for v in theirs) / n)
        present = f"the {n} columns present" if n > 1 else "the 1 column present"
        label = "Average" if n == len(SETTINGS[setting]) else f"Average of {present}"
        lines.append(f"| {label} | | {o[0]:.2f}/{o[1]:.3f} | {t[0]:.2f}/{t[1]:.3f} | {o[0] - t[0]:+.2f} | "
                     f"{o[1] - t[1]:+.3f} |")
    if elsewhere := other_setting_rows([row for row, r in tasks.items() if r.get("count")], setting):
        where, flags = only_in_table(elsewhere.values())
        lines += ["", f"Left out, having a number {where}{f' ({flags})' if flags else ''}: "
                      f"{', '.join(f'{table_cell(row)} ({column})' for row, column in elsewhere.items())}."]
    if flagged:
        lines += ["", f"Not scored as the paper's: {', '.join(flagged)} (see the Row column); their differences, "
                      f"and the average over them, do not compare like with like."]
    return lines
