"""The tester's output: the per-task table, the protocol lines, ``results.{json,csv,md}`` and the
side-by-side comparison figure."""
from __future__ import annotations

import csv
import io
import math
import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from utils.errors import counted, table_cell
from utils.eval.paper import comparison_lines, paper_averages
from utils.files import json_text, write_text
from utils.scores import MAX_PSNR

# --------------------------------------------------------------------------- tables and files

def _fmt(v: Any, digits: int) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summary_table(results: Mapping[str, Any], markdown: bool = False) -> str:
    """The per-row table (markdown) with the average, plus the paper's one-line PSNR/SSIM layout and the notes under
    it. ``markdown``: for ``results.md``, where a name in a line of text is escaped as in a cell (:func:`table_cell`:
    ``*x*_.png`` is shown as written, not as emphasis); the console's lines, plain text, keep names as written."""
    shown: Callable[[str], str] = table_cell if markdown else str
    tasks = results.get("tasks", {})
    has_lpips = any("lpips" in r for r in tasks.values())
    has_fid = any("fid" in r for r in tasks.values())  # one value per set, not per image
    head = ["Task", "Images", "Degraded PSNR", "Degraded SSIM", "PSNR", "SSIM"] + (["LPIPS"] if has_lpips else []) + \
        (["FID"] if has_fid else []) + ["Best PSNR", "Worst PSNR", "Best SSIM", "Worst SSIM", "s/image", "Skipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in tasks.items():
        cells = [table_cell(name) + (" (partial)" if r.get("partial") else ""), str(r["count"]),
                 _fmt(r.get("input_psnr"), 2), _fmt(r.get("input_ssim"), 4), _fmt(r["psnr"], 2), _fmt(r["ssim"], 4)]
        cells += [_fmt(r.get("lpips"), 4)] if has_lpips else []
        cells += [_fmt(r.get("fid"), 2)] if has_fid else []
        cells += [_fmt(_extreme(r, "best_psnr"), 2), _fmt(_extreme(r, "worst_psnr"), 2),
                  _fmt(_extreme(r, "best_ssim"), 4), _fmt(_extreme(r, "worst_ssim"), 4),
                  _fmt(r["seconds_per_image"], 3), str(r.get("skipped", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    avg = results.get("average") or {}
    if avg:
        cells = ["Average", "", _fmt(avg.get("input_psnr"), 2), _fmt(avg.get("input_ssim"), 4), _fmt(avg["psnr"], 2),
                 _fmt(avg["ssim"], 4)]
        cells += [_fmt(avg.get("lpips"), 4)] if has_lpips else []
        lines.append("| " + " | ".join(cells + [""] * (len(head) - len(cells))) + " |")
        paper = "  ".join(f"{shown(n)} {r['psnr']:.2f}/{r['ssim']:.3f}" for n, r in tasks.items() if r.get("count"))
        lines += ["", f"PSNR/SSIM: {paper}  Average {avg['psnr']:.2f}/{avg['ssim']:.3f}",
                  f"Average: the mean over the {counted(avg['rows'], 'row')} above with scored images (each set counts "
                  f"once). Degraded: the input as given to the network, scored against the target like the "
                  f"restoration."]
        for setting, pa in paper_averages(tasks, results.get("protocol")).items():
            caveats = "; ".join(f"{c}: {why}" for c, why in pa.get("caveats", {}).items())
            lines.append(f"Paper {setting.upper()} average over its columns ({', '.join(pa['rows'])}): "
                         f"{pa['psnr']:.2f}/{pa['ssim']:.3f}" + (f" — not comparable with the paper's ({caveats})"
                                                                 if caveats else ""))
    if results.get("compare_paper"):
        lines += [""] + comparison_lines(tasks, results["compare_paper"], results.get("protocol"),
                                         results.get("compare_paper_note"))
    return "\n".join(lines + _notes(results, shown))


def _extreme(row: Mapping[str, Any], key: str) -> float | None:
    """The value of ``row[key]`` (``best_psnr`` ... ``worst_ssim``), ``None`` for a row without images."""
    entry = row.get(key)
    return entry[key.split("_")[1]] if entry else None


def _notes(results: Mapping[str, Any], shown: Callable[[str], str] = str) -> list[str]:
    """Lines under the table: tiled images, images identical to their target (PSNR capped at :data:`MAX_PSNR`),
    images left out as unreadable, and where a stopped run stopped. ``shown`` writes each name, file and message
    (:func:`table_cell` for ``results.md``)."""
    lines = []
    for name, r in results.get("tasks", {}).items():
        row = shown(name)
        lines += [f"Tiled ({row}): {shown(n.removeprefix('note: '))}" for n in r.get("notes", [])]
        for key, what in (("psnr", "restored"), ("input_psnr", "degraded")):
            same = [shown(i["name"]) for i in r.get("images", []) if isinstance(i.get(key), (int, float))
                    and i[key] >= MAX_PSNR]
            if same:
                lines.append(f"Identical to the target ({row}, {what}): {counted(len(same), 'image')} "
                             f"({', '.join(same[:3])}{', ...' if len(same) > 3 else ''}) score {MAX_PSNR:g} dB, the "
                             f"cap for an infinite PSNR, which the row's mean PSNR includes")
        for b in r.get("bad_files", []):
            lines.append(f"Skipped unreadable image ({row}): {shown(b['name'])}: {shown(b['error'])}")
    stop = results.get("partial")
    if stop:
        lines.append(f"PARTIAL RESULTS: stopped in {shown(stop['row'])} at {shown(stop['file'])}: "
                     f"{shown(stop['error'])}")
        if stop.get("rows_not_evaluated"):
            lines.append(f"Not evaluated: {', '.join(shown(n) for n in stop['rows_not_evaluated'])}")
    return [""] + lines if lines else []


def protocol_lines(protocol: Mapping[str, Any]) -> list[str]:
    """``results.md``'s list of the protocol's fields, the checkpoint's path among them, escaped as written
    (:func:`markdown_item`)."""
    keys = ("protocol", "protocol_rule", "metric_space", "metric_space_rule", "ssim", "ssim_rule", "crop_border",
            "bit_depth", "precision", "tile", "tile_overlap", "tile_batch", "lpips", "fid", "noise", "device",
            "model", "backbone", "config_from", "model_config", "average")
    return [markdown_item(k, protocol[k]) for k in keys if k in protocol] + \
        [markdown_item(k, v) for k, v in protocol.items() if k not in keys and k != "lpips_input"]


def markdown_item(key: str, value: Any) -> str:
    """``- key: value``, one item of a Markdown list, with ``value`` (a path, the command as typed) shown as written:
    escaped as a cell is (:func:`table_cell`), so ``--degset '[a](b)'`` is no link and a line break no new line."""
    return f"- {key}: {table_cell(str(value))}"


def protocol_summary(protocol: Mapping[str, Any]) -> str:
    """The protocol in two lines (the console's); every rule is spelt out in ``results.md``/``.json``."""
    p = protocol
    tile = p.get("tile")  # a size, 0 (never tiled) or the text of automatic tiling
    tiles = f", {tile}x{tile} tiles" if isinstance(tile, int) and tile else \
        ", tiled only where an image would not fit the free memory" if tile else ""
    extra = "".join(f", {m.upper()}" for m in ("lpips", "fid") if p.get(m))
    line = (f"Protocol: {p.get('protocol')} ({p.get('metric_space')} PSNR, {p.get('ssim')} SSIM, crop border "
            f"{p.get('crop_border')}{extra}), {p.get('precision')}{tiles} on {p.get('device')}")
    if "model" in p:
        line += (f"\nModel: {p['model']} ({p.get('backbone')}, configuration from {p.get('config_from')}); "
                 f"every rule in results.md")
    return line


def format_report(results: Mapping[str, Any]) -> str:
    """What the tester prints: the protocol in two lines, then the table."""
    return protocol_summary(results["protocol"]) + "\n\n" + summary_table(results)


def write_results(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``results.md`` into ``out_dir``; returns their paths.

    The CSV is one table of results (the protocol is in the JSON and Markdown files), columns
    ``kind,task,name,psnr,ssim,input_psnr,input_ssim,lpips,seconds,count,best_psnr,worst_psnr,best_ssim,
    worst_ssim`` (``input_*``: the degraded input scored against the target);
    ``kind`` is ``image``, ``skipped`` (``name``: the file and why), ``task``, ``average`` or
    ``partial`` (the run stopped: ``task`` is the row, ``name`` the file and its error). Results marked partial
    (``results["partial"]``, see :func:`evaluate_sets`) say so in all three files. Each file is
    written whole then renamed into place (:func:`utils.files.write_text`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"results.{ext}" for ext in ("json", "csv", "md")}
    for ext, text in results_texts(results).items():
        write_text(paths[ext], text)
    return paths


def results_texts(results: Mapping[str, Any]) -> dict[str, str]:
    """The text of ``results.json``, ``results.csv`` and ``results.md`` (keys ``json``, ``csv``, ``md``) as
    :func:`write_results` writes them for ``results``: also how ``--resume`` tells the files an earlier run wrote,
    unchanged since, from files a user edited (:func:`utils.eval.resuming.own_results_files`)."""
    cols = ["kind", "task", "name", "psnr", "ssim", "input_psnr", "input_ssim", "lpips", "fid", "seconds", "count",
            "best_psnr", "worst_psnr", "best_ssim", "worst_ssim"]
    fh = io.StringIO(newline="")
    w = csv.DictWriter(fh, fieldnames=cols)
    w.writeheader()
    for task, r in results.get("tasks", {}).items():
        for im in r["images"]:
            w.writerow({"kind": "image", "task": task, **{c: im.get(c) for c in
                                                          ("name", "psnr", "ssim", "input_psnr", "input_ssim",
                                                           "lpips", "seconds")}})
        for name in r.get("skipped_files", []):
            w.writerow({"kind": "skipped", "task": task, "name": name})
        w.writerow({"kind": "task", "task": task, "psnr": r["psnr"], "ssim": r["ssim"],
                    "input_psnr": r.get("input_psnr"), "input_ssim": r.get("input_ssim"), "lpips": r.get("lpips"),
                    "fid": r.get("fid"), "seconds": r["seconds_per_image"], "count": r["count"],
                    **{k: _extreme(r, k) for k in ("best_psnr", "worst_psnr", "best_ssim", "worst_ssim")}})
    avg = results.get("average") or {}
    if avg:
        w.writerow({"kind": "average", "task": "Average", "psnr": avg["psnr"], "ssim": avg["ssim"],
                    "input_psnr": avg.get("input_psnr"), "input_ssim": avg.get("input_ssim"), "lpips": avg.get("lpips"),
                    "count": avg.get("rows")})
    stop = results.get("partial")
    if stop:
        w.writerow({"kind": "partial", "task": stop["row"], "name": f"{stop['file']}: {stop['error']}"})

    title = "# Evaluation results" + (" (PARTIAL: the run stopped, see the end of the summary)" if stop else "")
    made = results.get("provenance") or {}
    md = [title, "", "## Protocol", "", *protocol_lines(results["protocol"]), "",
          *(["## Run", "", *(markdown_item(k, v) for k, v in made.items()), ""] if made else []),
          "## Summary", "", summary_table(results, markdown=True), ""]
    for task, r in results.get("tasks", {}).items():
        has_lpips = "lpips" in r
        md += [f"## {table_cell(task)}", ""]  # names as written: no emphasis, link or HTML made of them
        if r.get("count"):
            shown = {k: table_cell(r[k]["name"]) for k in ("best_psnr", "worst_psnr", "best_ssim", "worst_ssim")}
            md += [f"Best PSNR {r['best_psnr']['psnr']:.2f} ({shown['best_psnr']}), worst "
                   f"{r['worst_psnr']['psnr']:.2f} ({shown['worst_psnr']}); best SSIM "
                   f"{r['best_ssim']['ssim']:.4f} ({shown['best_ssim']}), worst {r['worst_ssim']['ssim']:.4f} "
                   f"({shown['worst_ssim']}).", ""]
        if r.get("skipped_files"):
            md += [f"Skipped ({len(r['skipped_files'])}): " + "; ".join(map(table_cell, r["skipped_files"])), ""]
        warned = [w for im in r["images"] for w in im.get("decoder_warnings", ())]
        if warned:  # scored as decoded over damage, as the reference's Pillow reads them
            md += [f"Decoded over damaged data ({len(warned)}; scored as decoded, as the reference reads them): "
                   + "; ".join(map(table_cell, warned)), ""]
        md += ["| Image | Degraded PSNR | Degraded SSIM | PSNR | SSIM |" + (" LPIPS |" if has_lpips else "") + " s |",
               "|---|---|---|---|---|" + ("---|" if has_lpips else "") + "---|"]
        for im in r["images"]:
            md.append(f"| {table_cell(im['name'])} | {_fmt(im.get('input_psnr'), 2)} | "
                      f"{_fmt(im.get('input_ssim'), 4)} | {im['psnr']:.2f} | {im['ssim']:.4f} |"
                      + (f" {im['lpips']:.4f} |" if has_lpips else "")
                      + f" {im['seconds']:.3f}{' (compiling included)' if im.get('compiling') else ''} |")
        md.append("")
    return {"json": json_text(results), "csv": fh.getvalue(), "md": "\n".join(md)}


def save_comparison_figure(rows: Sequence[tuple], path: str | Path, title: str, caption: str = "") -> Path:
    """degraded | restored | target, one line per image; ``rows`` of ``(name, deg, out, tar, psnr, ssim,
    input_psnr, input_ssim)``: the restoration's and the degraded input's scores against the target.
    ``caption`` (under the title) says how they were scored (:meth:`utils.eval.protocol.Protocol.scores_caption`)."""
    from utils.plotting import new_figure, save_figure

    fig = new_figure(figsize=(9, 3 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (name, deg, out, tar, p, s, p_in, s_in) in enumerate(rows):
        for c, (img, label) in enumerate(((deg, f"degraded: PSNR {p_in:.2f} dB, SSIM {s_in:.3f}\n{name}"),
                                          (out, f"restored: PSNR {p:.2f} dB, SSIM {s:.3f}"),
                                          (tar, "target"))):
            axes[r, c].imshow(img)
            axes[r, c].set_title(label, fontsize=8)
            axes[r, c].axis("off")
    wrapped = "\n".join(textwrap.wrap(caption, 95))  # one line of a 9-inch figure at this size: no word cut off
    fig.suptitle(f"{title}\n{wrapped}" if caption else title, fontsize=9 if caption else None)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)  # a link at ``path`` is replaced, not written through
