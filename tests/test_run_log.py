"""The training console: one readable progress line, a steady rate and the time left."""
import os
from pathlib import Path

import pytest
from _disks import FillingDisk

from utils.train.run_log import Rate, progress_line

LOSSES = {"map": 2130.5, "l1": 0.21306, "transport": 0.0717, "orthogonality": 0.0062, "contrastive": 0.0,
          "potential": 0.1288, "potentials": 0.00053, "congruence": 0.0174}


def test_progress_line_names_every_part_once_with_rate_and_eta():
    rate = Rate()
    for _ in range(20):
        rate.update(0.5)
    line = progress_line(3, 100, 1300, LOSSES, 1e-4, rate)
    assert line.startswith("epoch 3 [100/1300] l1 0.2131, transport 0.0717, orthogonality 0.0062, contrastive 0, "
                           "potential term 0.1288, potentials step 0.00053, congruence 0.0174 | lr 0.0001 | ")
    assert "map" not in line  # the total is l1 x --Sigma plus the same parts: the log keeps it
    assert line.endswith("2.00 it/s, epoch ETA 0:10:00")  # 1200 iterations left at 0.5 s


def test_rate_is_a_median_so_one_slow_iteration_does_not_swing_it():
    rate = Rate()
    for _ in range(50):
        rate.update(0.25)
    rate.update(10.0)  # a validation pause, a page-in
    assert rate.per_second == 4.0
    assert Rate().eta(5) == "0:00:00" and Rate().per_second == 0.0


def test_loss_figure_has_a_panel_per_part_and_is_drawn(tmp_path):
    import json

    from utils.train.run_log import plot_loss_curves, plotted_parts, smoothed
    records = [{"kind": "iter", "global_step": s, **LOSSES} for s in range(1, 31)]
    assert [label for _, label in plotted_parts(records)] == [
        "l1", "transport", "orthogonality", "contrastive", "potential term", "potentials step", "congruence"]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records)
                   + json.dumps({"kind": "epoch", "epoch": 1, "global_step": 30, "val_psnr": 27.5}) + "\n")
    assert plot_loss_curves(log, tmp_path / "fig.png").stat().st_size > 10_000
    assert smoothed([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]  # bias-corrected: a constant stays constant


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    """After a crash mid-write, the resumed run's first record was appended to the torn fragment and the
    reader skipped both; the log now ends the torn line first (and rewinding keeps it a line of its own)."""
    import json

    from utils.train.run_log import JsonlLog, read_log, rewind_log
    path = tmp_path / "log.jsonl"
    path.write_text('{"kind": "iter", "global_step": 1}\n{"kind": "iter", "global_st')
    assert rewind_log(path, 5) == 0
    log = JsonlLog(path)
    log.write({"kind": "run", "resumed": True, "loss": float("nan"), "nested": {"x": [1.0, float("inf")]}})
    log.write({"kind": "iter", "global_step": 2})
    records = read_log(path)
    assert [r["kind"] for r in records] == ["iter", "run", "iter"]
    assert records[1]["loss"] is None and records[1]["nested"] == {"x": [1.0, None]}  # strict JSON: no NaN
    for line in path.read_text().splitlines()[2:]:
        json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


def test_results_json_is_strict_json_and_fid_is_in_the_tables(tmp_path):
    """A NaN (an FID from a failed square root) was written as NaN, which strict parsers refuse; the FID the
    tester computes per set appeared in results.json only, not in the printed table or the CSV."""
    import csv
    import json

    from utils.eval.report import summary_table, write_results
    row = {"count": 2, "psnr": 30.0, "ssim": 0.9, "input_psnr": 20.0, "input_ssim": 0.5, "seconds_per_image": 0.1,
           "images": [], "fid": float("nan"), **{f"{k}_{m}": {"name": "x.png", m: 1.0} for k in ("best", "worst")
                                                  for m in ("psnr", "ssim")}}
    results = {"protocol": {"fid": True}, "tasks": {"a": row, "b": {**row, "fid": 12.345}},
               "average": {"psnr": 30.0, "ssim": 0.9, "rows": 2}}
    paths = write_results(results, tmp_path)
    saved = json.loads(paths["json"].read_text(), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert saved["tasks"]["a"]["fid"] is None and saved["tasks"]["b"]["fid"] == 12.345
    table = summary_table(results)
    assert "| FID |" in table and "| 12.35 |" in table
    with open(paths["csv"]) as fh:
        assert [r["fid"] for r in csv.DictReader(fh) if r["kind"] == "task"] == ["nan", "12.345"]


def test_a_full_disk_while_logging_names_the_log_and_leaves_no_part_of_the_record(tmp_path, monkeypatch):
    """A full disk in the middle of a record ended the run with 'disk full while writing a file' (no file, no
    folder, unlike a checkpoint's) and left the log ending in part of the record, which stayed in the log."""
    import json

    from utils.errors import failure_message
    from utils.files import DiskFullError
    from utils.train import run_log
    path = tmp_path / "run" / "log.jsonl"
    log = run_log.JsonlLog(path)
    log.write({"kind": "run", "global_step": 0})
    log.write({"kind": "iter", "global_step": 1, "l1": 0.5})
    before = path.read_bytes()
    FillingDisk(monkeypatch, run_log, b'"global_step": 2')
    with pytest.raises(DiskFullError) as full:
        log.write({"kind": "iter", "global_step": 2, "l1": 0.25})
    message, status = failure_message(full.value)
    assert status == 1 and message.startswith(f"disk full: writing log.jsonl to {tmp_path / 'run'} needs ")
    assert "free space there or choose another folder (log.jsonl ends at its last complete record)" in message
    assert path.read_bytes() == before  # no part of the record
    assert [json.loads(line)["global_step"] for line in path.read_text().splitlines()] == [0, 1]


def test_a_quota_while_logging_is_a_full_disk_too(tmp_path, monkeypatch):
    import errno

    from utils.files import DiskFullError
    from utils.train import run_log
    path = tmp_path / "log.jsonl"
    disk = FillingDisk(monkeypatch, run_log, b'"iter"', room=0)
    disk.error = OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(DiskFullError, match=r"disk full: writing log.jsonl to .* needs \d+ bytes and "):
        run_log.JsonlLog(path).write({"kind": "iter", "global_step": 1})
    assert path.read_bytes() == b""


def test_mending_a_log_removes_the_records_cut_short_and_keeps_every_complete_one(tmp_path):
    """A record cut short (a kill mid-write) stayed in the log, ended with a newline by the resumed run, and jq or
    pandas refused the whole log at that line."""
    import json

    from utils.train.run_log import mend_log
    path = tmp_path / "log.jsonl"
    whole = ['{"kind": "run", "global_step": 0}\n', '{"kind": "iter", "global_step": 1}\n',
             '{"kind": "iter", "global_step": 2}\n', '{"kind": "iter", "global_step": 3}']
    mid, last = '{"kind": "iter", "global_st\n', '{"kind": "epoch", "epoch": 1, "global_step": 3, "l1": 0.'
    path.write_text(whole[0] + mid + whole[1] + whole[2] + last)
    assert mend_log(path) == (2, len(mid) + len(last))
    assert path.read_text() == "".join(whole[:3])
    path.write_text("".join(whole))  # complete, only its newline missing: kept, and ended
    assert mend_log(path) == (0, 0) and path.read_text() == "".join(whole) + "\n"
    assert mend_log(path) == (0, 0) and mend_log(tmp_path / "none.jsonl") == (0, 0)
    path.write_bytes(path.read_bytes() + b"\0" * 4096)  # a power cut: the file's end is zeros
    assert mend_log(path) == (1, 4096)
    assert [json.loads(line)["global_step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_a_full_disk_while_rewinding_names_the_discarded_file_and_changes_neither(tmp_path, monkeypatch):
    """Rewinding appended the discarded records with a buffered write: a full disk there said 'disk full while
    writing a file' and could leave part of a record in log.discarded.jsonl."""
    import json

    from utils.files import DiskFullError
    from utils.train import run_log
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"kind": "iter", "global_step": i}) + "\n" for i in range(1, 5)))
    discarded = run_log.discarded_log(path)
    discarded.write_text(json.dumps({"kind": "iter", "global_step": 9}) + "\n")
    before = path.read_bytes(), discarded.read_bytes()
    FillingDisk(monkeypatch, run_log, b'"global_step": 4')
    with pytest.raises(DiskFullError, match=rf"^disk full: writing log.discarded.jsonl to {tmp_path} needs .*"
                                            r"\(log.discarded.jsonl ends at its last complete line\)$"):
        run_log.rewind_log(path, 2)
    assert (path.read_bytes(), discarded.read_bytes()) == before


def test_records_are_not_appended_through_a_link_to_a_file_elsewhere(tmp_path):
    """A run folder resumed in place (one downloaded, say) whose log.discarded.jsonl is a link to ~/.bashrc: the
    rewind appended the log's records past the checkpoint, the folder's own text, to the file the link names."""
    import json

    from utils.errors import UserError
    from utils.train import run_log
    elsewhere = tmp_path / "home" / ".bashrc"
    elsewhere.parent.mkdir()
    elsewhere.write_text("# mine\n")
    run = tmp_path / "run"
    run.mkdir()
    path = run / "log.jsonl"
    path.write_text("".join(json.dumps({"kind": "iter", "global_step": i, "x": "$(touch pwned)"}) + "\n"
                            for i in range(1, 5)))
    run_log.discarded_log(path).symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"log.discarded.jsonl is a symbolic link \(to .*\.bashrc\): its lines are "
                                        r"not appended through it"):
        run_log.rewind_log(path, 2)
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"log.jsonl is a symbolic link .*: its records are not appended"):
        run_log.JsonlLog(path).write({"kind": "run"})
    assert elsewhere.read_text() == "# mine\n"


def test_reading_a_log_skips_what_is_not_a_record(tmp_path):
    """A stray byte that is not UTF-8 ended the loss figure in a traceback, and a JSON line that is not an object
    (``[1]``) in an AttributeError."""
    from utils.train.run_log import read_log, read_loss_history
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"kind": "iter", "global_step": 1, "l1": 0.5}\n[1]\n\xff\xfe\n{"kind": "iter", "global_st\n'
                     b'{"kind": "iter", "global_step": 2, "l1": "x"}\n{"kind": "epoch", "epoch": [2], "val_psnr": 1}\n')
    assert [r["global_step"] for r in read_log(path) if r["kind"] == "iter"] == [1, 2]
    history = read_loss_history(path)  # the loss figure's reader: a value that is not a number is not drawn
    assert history.iterations == 2 and [list(a) for a in history.points("l1")] == [[1], [0.5]]
    assert history.epochs == [{"val_psnr": 1}] and history.means() == []


def test_a_record_after_a_complete_log_is_on_the_next_line_with_no_blank_line(tmp_path):
    """A resumed run appends to a log that ends in a newline (or, once, in a complete record without one)."""
    from utils.train.run_log import JsonlLog
    path = tmp_path / "log.jsonl"
    path.write_text('{"kind": "iter", "global_step": 1}\n')
    JsonlLog(path).write({"kind": "run", "global_step": 1})
    assert path.read_text() == '{"kind": "iter", "global_step": 1}\n{"kind": "run", "global_step": 1}\n'
    path.write_text('{"kind": "iter", "global_step": 1}')
    JsonlLog(path).write({"kind": "run", "global_step": 1})
    assert path.read_text() == '{"kind": "iter", "global_step": 1}\n{"kind": "run", "global_step": 1}\n'
    empty = tmp_path / "empty.jsonl"
    JsonlLog(empty).write({"kind": "run", "global_step": 0})
    assert empty.read_text() == '{"kind": "run", "global_step": 0}\n'


def test_only_the_main_rank_writes_the_log_and_prints(tmp_path, capsys):
    """Under torchrun every rank holds a log and a console: the others' are off, or each record and warning
    comes once per rank."""
    from utils.train.run_log import Console, JsonlLog
    path = tmp_path / "run" / "log.jsonl"
    JsonlLog(path, enabled=False).write({"kind": "iter", "global_step": 1})
    Console(False)("progress")
    Console(False).warn("trouble")
    assert not path.parent.exists() and capsys.readouterr() == ("", "")
    Console(True).warn("trouble")
    assert "!! WARNING: trouble" in capsys.readouterr().err


def test_rewinding_puts_the_moved_records_on_the_disk_before_the_log_loses_them(tmp_path, monkeypatch):
    """The log is replaced atomically; the records it loses must be durable in the discarded file first, or a
    power cut in between loses them."""
    import json
    import os

    from utils.train import run_log
    path = tmp_path / "log.jsonl"
    before = "".join(json.dumps({"kind": "iter", "global_step": i}) + "\n" for i in range(1, 5))
    path.write_text(before)
    real_fsync, synced = os.fsync, []

    def fsync(fd):
        real_fsync(fd)
        synced.append((os.fstat(fd).st_ino, path.read_text()))
    monkeypatch.setattr(os, "fsync", fsync)
    assert run_log.rewind_log(path, 2) == 2
    discarded = run_log.discarded_log(path)
    assert [json.loads(line)["global_step"] for line in discarded.read_text().splitlines()] == [3, 4]
    assert (discarded.stat().st_ino, before) in synced  # on the disk while the log still held them


def test_a_lost_epoch_record_is_told_by_any_record_from_the_epochs_start_on(tmp_path):
    """With --log-every 0 the log holds no iteration: the run record (epoch 1) or the previous epoch's record,
    both at the step the epoch began after, tell that the run reached the epoch whose record is missing."""
    import json

    from utils.train.run_log import record_lost
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"kind": "run", "global_step": 0}) + "\n")
    assert record_lost(path, 1, 0)
    path.write_text(json.dumps({"kind": "run", "global_step": 0}) + "\n"
                    + json.dumps({"kind": "epoch", "epoch": 1, "global_step": 3}) + "\n")
    assert not record_lost(path, 1, 0) and record_lost(path, 2, 3)
    assert not record_lost(path, 3, 6)  # the log stops before epoch 3 began: not this log's epoch
    assert not record_lost(tmp_path / "none.jsonl", 1, 0)


def test_the_loss_figure_draws_each_part_by_global_step_and_the_psnr_by_epoch(tmp_path, monkeypatch):
    import json

    from utils import plotting
    from utils.train.run_log import plot_loss_curves
    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kwargs: drawn.append(fig) or path)
    iters = [{"kind": "iter", "global_step": s, "l1": l1, "transport": 0.1} for s, l1 in ((2, 0.5), (4, 0.4), (6, 0.3))]
    epochs = [{"kind": "epoch", "epoch": e, "global_step": 3 * e, "val_psnr": p} for e, p in ((1, 20.0), (2, 22.5))]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in iters + epochs))
    plot_loss_curves(log, tmp_path / "fig.png")
    panels = {ax.get_title(): ax for ax in drawn[0].axes if ax.get_title()}
    assert set(panels) == {"l1", "transport", "validation PSNR (dB)"}
    raw = panels["l1"].get_lines()[0]  # the faint curve: the logged values themselves
    assert list(raw.get_xdata()) == [2, 4, 6] and list(raw.get_ydata()) == [0.5, 0.4, 0.3]
    psnr = panels["validation PSNR (dB)"].get_lines()[0]
    assert list(psnr.get_xdata()) == [1, 2] and list(psnr.get_ydata()) == [20.0, 22.5]


def test_a_run_folder_moved_whole_keeps_drawing_its_own_loss_figure(tmp_path, capsys):
    """A run folder moved (mv, rsync) and resumed drew its curves into train_losses_<new name>.png, saying that its
    own train_losses.png was 'the loss figure of the run in <old folder>', which then never changed again. A figure
    in the run's own folder of the same first start is its own now, redrawn in place (through a link too); one of
    another run there, a copy of the run's in a shared --figs-dir, or a user's file is still not replaced."""
    import json
    import shutil

    from utils.train.run_log import Console, _figure_source, draw_loss_figure

    def make_run(folder: Path, started: str) -> Path:
        folder.mkdir(parents=True)
        (folder / "log.jsonl").write_text(json.dumps({"kind": "run", "started": started}) + "\n" + "".join(
            json.dumps({"kind": "iter", "global_step": i, "l1": 1.0 / i}) + "\n" for i in range(1, 5)))
        return folder

    def draw(run: Path, figs: Path | None = None) -> Path:
        return draw_loss_figure(run / "log.jsonl", (figs or run) / "train_losses.png", Console())

    run = make_run(tmp_path / "run1", "2026-12-01T10:00:00.000001+00:00")
    assert draw(run) == run / "train_losses.png"
    moved = tmp_path / "elsewhere" / "run1moved"
    moved.parent.mkdir()
    run.rename(moved)
    (tmp_path / "link").symlink_to(moved)
    for folder in (moved, tmp_path / "link", moved, Path(os.path.relpath(moved))):
        assert draw(folder) == folder / "train_losses.png"
    assert sorted(p.name for p in moved.iterdir()) == ["log.jsonl", "train_losses.png"]
    assert _figure_source(moved / "train_losses.png").startswith(f"BaryIR training run in {moved}, started 2026-12-01")
    assert capsys.readouterr().out == ""
    other = make_run(tmp_path / "other", "2026-12-01T11:00:00.000001+00:00")  # another run's figure, copied in
    draw(other)
    shutil.copy(other / "train_losses.png", moved / "train_losses.png")
    assert draw(moved) == moved / "train_losses_run1moved.png"
    assert (moved / "train_losses.png").read_bytes() == (other / "train_losses.png").read_bytes()
    assert f"is the loss figure of the run in {other}" in capsys.readouterr().out
    figs = tmp_path / "figs"  # a copy of the run sharing a --figs-dir: each keeps its own figure there
    figs.mkdir()
    shutil.copytree(moved, tmp_path / "twin")
    assert draw(moved, figs) == figs / "train_losses.png"
    assert draw(tmp_path / "twin", figs) == figs / "train_losses_twin.png"
    assert draw(moved, figs) == figs / "train_losses.png"
    (moved / "train_losses.png").write_bytes(b"the user's own picture")
    assert draw(moved) == moved / "train_losses.png"
    assert [p.read_bytes() for p in moved.glob("figure.before-*/train_losses.png")] == [b"the user's own picture"]


def test_a_progress_bar_is_the_main_ranks_and_drawn_only_on_a_terminal(monkeypatch):
    """Other ranks draw none, or every rank's bar fights over one terminal line; without a terminal the trainer
    prints plain lines instead (``bar.disable``)."""
    import io
    import sys

    from utils.train.run_log import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stderr", Terminal())
    for enabled in (True, False):
        with progress(range(3), 3, "epoch 1", enabled=enabled) as bar:
            assert bar.disable is not enabled
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress(range(3), 3, "epoch 1") as bar:
        assert bar.disable


def test_a_loss_figure_of_one_logged_iteration_shows_its_points_without_warnings(tmp_path, monkeypatch):
    """An epoch that logged one iteration (a short DDP run) drew empty panels (a line of one point has no length)
    and a log axis over one value, with matplotlib's 'divide by zero' warnings in the console."""
    import json
    import warnings

    from utils import plotting
    from utils.train.run_log import plot_loss_curves
    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kwargs: drawn.append(fig) or path)
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"kind": "iter", "global_step": 1, "l1": 0.07, "transport": 0.2}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_loss_curves(log, tmp_path / "fig.png")
        drawn[0].canvas.draw()
    for ax in drawn[0].axes:
        if ax.get_title():
            assert ax.get_yscale() == "linear"
            assert any(line.get_marker() == "o" for line in ax.get_lines()), ax.get_title()


def test_a_log_without_iteration_records_draws_the_epochs_mean_losses(tmp_path, monkeypatch):
    """--log-every 0 writes no iteration records: the loss figure drew the validation PSNR alone (or nothing),
    though every epoch record holds the mean of each part of the objective."""
    import json

    from utils import plotting
    from utils.train.run_log import plot_loss_curves
    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kwargs: drawn.append(fig) or path)
    epochs = [{"kind": "epoch", "epoch": e, "global_step": 4 * e, "l1": l1, "transport": 0.1, "val_psnr": 20.0 + e}
              for e, l1 in ((1, 0.5), (2, 0.4))]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in epochs))
    plot_loss_curves(log, tmp_path / "fig.png")
    panels = {ax.get_title(): ax for ax in drawn[0].axes if ax.get_title()}
    assert set(panels) == {"l1 (epoch means)", "transport (epoch means)", "validation PSNR (dB)"}
    means = panels["l1 (epoch means)"].get_lines()
    assert len(means) == 1 and list(means[0].get_xdata()) == [4, 8] and list(means[0].get_ydata()) == [0.5, 0.4]
    assert "mean over each epoch" in drawn[0]._suptitle.get_text()


def test_the_loss_figures_title_fits_a_one_panel_figure(tmp_path, monkeypatch):
    """An L1-only backbone trained without validation draws one panel, 3.6 inches wide: its title ran off both
    sides of the figure."""
    import json

    from utils import plotting
    from utils.train.run_log import plot_loss_curves
    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kwargs: drawn.append(fig) or path)
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"kind": "iter", "global_step": s, "l1": 1 / s}) + "\n" for s in range(1, 6)))
    plot_loss_curves(log, tmp_path / "fig.png")
    fig = drawn[0]
    fig.canvas.draw()
    title = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= title.x0 and title.x1 <= fig.bbox.width and title.y1 <= fig.bbox.height
    assert "logged values" in fig._suptitle.get_text()


def test_epochs_logged_without_iterations_after_some_with_show_their_means(tmp_path, monkeypatch):
    """A run resumed with --log-every 0 after epochs logged at each iteration: its curves stopped where the
    iteration records did, the later epochs' means left out."""
    import json

    from utils import plotting
    from utils.train.run_log import plot_loss_curves
    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kwargs: drawn.append(fig) or path)
    iters = [{"kind": "iter", "epoch": 1, "global_step": s, "l1": 0.5} for s in (1, 2)]
    epochs = [{"kind": "epoch", "epoch": e, "global_step": 2 * e, "l1": l1} for e, l1 in ((1, 0.5), (2, 0.3))]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in iters + epochs))
    plot_loss_curves(log, tmp_path / "fig.png")
    panels = {ax.get_title(): ax for ax in drawn[0].axes if ax.get_title()}
    lines = panels["l1"].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1, 2], [4]]  # the logged values (too few to smooth), epoch
    # 2's mean
    assert list(lines[1].get_ydata()) == [0.3]
    assert "squares: the means of epochs" in drawn[0]._suptitle.get_text().replace("\n", " ")


def test_a_short_runs_smoothed_loss_curve_ends_where_its_values_end(tmp_path, monkeypatch):
    """The loss figure smoothed every run with TensorBoard's weight of 0.9 (an average over about 19 points): a
    short run's 40 logged values of a falling loss drew a solid curve that ended well above where the values
    ended. The span now grows with the run (a twentieth of its points, at most 19) and the caption says it."""
    import json

    from utils import plotting
    from utils.train.run_log import plot_loss_curves, smoothing_span
    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kwargs: drawn.append(fig) or path)
    values = [1.0 / s for s in range(1, 41)]  # 40 logged values, falling fast then slowly
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"kind": "iter", "global_step": s, "l1": v}) + "\n"
                           for s, v in enumerate(values, 1)))
    plot_loss_curves(log, tmp_path / "fig.png")
    solid = drawn[0].axes[0].get_lines()[-1]
    end = solid.get_ydata()[-1]
    assert abs(end - values[-1]) / values[-1] < 0.15, (end, values[-1])  # 0.9's curve ended near 0.04, 60 % above
    assert "moving average over about 2" in drawn[0]._suptitle.get_text().replace("\n", " ")
    assert smoothing_span(40) == 2 and smoothing_span(10) == 1 and smoothing_span(10_000) == pytest.approx(19)
    drawn.clear()
    log.write_text("".join(json.dumps({"kind": "iter", "global_step": s, "l1": 1.0 / s}) + "\n"
                           for s in range(1, 201)))
    plot_loss_curves(log, tmp_path / "fig.png")
    lines = drawn[0].axes[0].get_lines()
    assert len(lines) == 2 and "moving average over about 10" in drawn[0]._suptitle.get_text().replace("\n", " ")


def test_plain_progress_lines_without_a_terminal_come_now_and_then_not_at_every_logged_iteration(monkeypatch, capsys):
    """Output redirected to a file (nohup, a scheduler's log) got one progress line per --log-every iteration: at
    the paper's pace (about 4 iterations a second, 71,765 an epoch) a line every 2.5 s, some 860,000 lines (about
    170 MB) over 120 epochs, the same values log.jsonl keeps. Now: the epoch's first, one every 30 s, its last."""
    import types

    import torch

    from utils.checkpoints import LoopState
    from utils.train import engine
    from utils.train.distributed import DistInfo
    from utils.train.run_log import Console

    clock = iter(range(10_000))  # each iteration takes one second
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    monkeypatch.setattr(engine, "train_step", lambda *a, **k: {"l1": 0.1, "map": 1.0})
    training = types.SimpleNamespace(model=torch.nn.Linear(1, 1), potentials=None, compile_mode="off",
                                     info=DistInfo())
    logged = types.SimpleNamespace(records=[], write=lambda r: logged.records.append(r))
    state = LoopState(epoch=1)
    means, stopped = engine.train_one_epoch(training, [None] * 100, state, 100, 1e-4,
                                            stop=types.SimpleNamespace(requested=False), log=logged,
                                            console=Console(), log_every=1)
    assert not stopped and state.iteration == 100 and means["l1"] == pytest.approx(0.1)
    assert [r["iteration"] for r in logged.records] == list(range(1, 101))  # the log keeps every one
    shown = [int(line.split("[")[1].split("/")[0]) for line in capsys.readouterr().out.splitlines()]
    assert shown == [1, 31, 61, 91, 100]


def test_a_long_runs_loss_figure_draws_few_points_that_keep_every_logged_values_envelope(tmp_path, monkeypatch):
    """The figure, redrawn at each epoch's end, read the whole log into dicts and drew every point: at the paper's
    scale (some 861,000 iterations logged, 300 MB) about 90 s and 1.9 GB each time. The log is read as a stream into
    arrays, each curve (the values, and their moving average over all of them) drawn as the lowest and highest of
    each stretch of values in a row; the caption says so."""
    import json
    import random

    import numpy as np

    from utils import plotting
    from utils.train.run_log import MOST_POINTS, plot_loss_curves, smoothed, smoothing_weight
    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kwargs: drawn.append(fig) or path)
    rng = random.Random(0)
    n = 50_000
    values = [1.0 / (1 + s / 5000) * (1 + 0.2 * rng.random()) * (5.0 if rng.random() < 0.001 else 1.0)
              for s in range(1, n + 1)]  # a falling, noisy loss with rare spikes
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"kind": "iter", "epoch": 1, "global_step": s, "l1": v}) + "\n"
                           for s, v in enumerate(values, 1)))
    plot_loss_curves(log, tmp_path / "fig.png")
    raw, solid = drawn[0].axes[0].get_lines()
    average = smoothed(values, smoothing_weight(n))
    for line, ys in ((raw, values), (solid, average)):
        xs, got = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert len(xs) <= MOST_POINTS and xs[0] == 1 and xs[-1] == n
        assert (np.diff(xs) > 0).all() and (got == np.asarray(ys)[xs - 1]).all()  # logged points, in their order
        reach = -(-n // (MOST_POINTS // 2 - 1))  # the longest stretch a line of MOST_POINTS points can stand for
        lowest, highest = np.full(n + 2 * reach, np.inf), np.full(n + 2 * reach, -np.inf)
        lowest[xs - 1 + reach], highest[xs - 1 + reach] = got, got
        windows = np.lib.stride_tricks.sliding_window_view  # each value against the points drawn within reach
        assert (windows(lowest, 2 * reach + 1).min(axis=1) <= ys).all()
        assert (windows(highest, 2 * reach + 1).max(axis=1) >= ys).all()
    assert solid.get_ydata()[-1] == average[-1]  # the average of all values, not of those drawn
    caption = drawn[0]._suptitle.get_text().replace("\n", " ")
    assert "lowest and highest of every 51 values in a row, of 50,000" in caption, caption


def test_a_loss_figure_that_cannot_be_drawn_is_a_warning_and_training_goes_on(tmp_path, monkeypatch):
    """draw_loss_figure caught only a figure that could not be written: any other error while drawing (a value
    matplotlib refuses, a bug in the figure's code) ended the run at an epoch's end, its checkpoint saved but the
    training stopped; at the paper's scale that may be days before anyone looks."""
    import json

    from utils.train import run_log
    from utils.train.run_log import Console, draw_loss_figure

    def broken(*args, **kwargs):
        raise ValueError("Image size of 100000x300 pixels is too large")
    monkeypatch.setattr(run_log, "plot_loss_curves", broken)
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"kind": "iter", "global_step": 1, "l1": 0.5}) + "\n")
    said = []
    console = Console()
    monkeypatch.setattr(console, "warn", said.append)
    assert draw_loss_figure(log, tmp_path / "train_losses.png", console) == tmp_path / "train_losses.png"
    assert len(said) == 1 and "could not be drawn (ValueError: Image size" in said[0] and "training goes on" in said[0]


def test_a_long_runs_step_axis_reads_in_short_counts_that_do_not_run_into_each_other(tmp_path, monkeypatch):
    """At the paper's 8.6 million steps the axis read 0 1 2 ... 8 and an offset '1e6' at its end (at 200,000 steps
    labels ran into each other under a 3.6-inch panel); it now reads 0, 2M, 4M, ..., at most six labels."""
    import json

    from utils import plotting
    from utils.train.run_log import plot_loss_curves, short_count
    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kwargs: drawn.append(fig) or path)
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"kind": "iter", "global_step": s, "l1": 1.0 / (1 + s / 1e5)}) + "\n"
                           for s in range(0, 8_600_000, 43_000)))
    plot_loss_curves(log, tmp_path / "fig.png")
    fig = drawn[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t for t in ax.get_xticklabels() if t.get_text() and ax.get_xlim()[0] <= t.get_position()[0]
              <= ax.get_xlim()[1]]
    assert 2 <= len(labels) <= 6 and all(t.get_text().endswith("M") or t.get_text() == "0" for t in labels), \
        [t.get_text() for t in labels]
    boxes = [t.get_window_extent() for t in labels]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))  # none runs into the next
    assert ax.xaxis.get_offset_text().get_text() == ""
    assert [short_count(n) for n in (0, 950, 12_000, 2_500_000)] == ["0", "950", "12k", "2.5M"]
