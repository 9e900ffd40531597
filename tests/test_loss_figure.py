"""The loss figure: a panel per part by global step, few points for a long run, the run it belongs to."""
import io
import os
from pathlib import Path

import pytest

LOSSES = {"map": 2130.5, "l1": 0.21306, "transport": 0.0717, "orthogonality": 0.0062, "contrastive": 0.0,
          "potential": 0.1288, "potentials": 0.00053, "congruence": 0.0174}


def test_loss_figure_has_a_panel_per_part_and_is_drawn(tmp_path):
    import json

    from utils.train.loss_figure import plot_loss_curves
    from utils.train.loss_history import plotted_parts, smoothed
    records = [{"kind": "iter", "global_step": s, **LOSSES} for s in range(1, 31)]
    assert [label for _, label in plotted_parts(records)] == [
        "l1", "transport", "orthogonality", "contrastive", "potential term", "potentials step", "congruence"]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records)
                   + json.dumps({"kind": "epoch", "epoch": 1, "global_step": 30, "val_psnr": 27.5}) + "\n")
    assert plot_loss_curves(log, tmp_path / "fig.png").stat().st_size > 10_000
    assert smoothed([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]  # bias-corrected: a constant stays constant


def test_a_tight_laid_out_figure_is_drawn_once_per_save_into_the_same_png(tmp_path, monkeypatch):
    """``tight_layout`` leaves a placeholder layout engine, for which ``savefig`` laid every panel out once more
    without drawing before it drew: the loss figure, redrawn at each epoch end, paid for two layouts."""
    import json

    from matplotlib.figure import Figure

    from utils.plotting import figure_png
    from utils.train.loss_figure import plot_loss_curves
    draws = []
    real_draw = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda fig, renderer: draws.append(fig) or real_draw(fig, renderer))
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"kind": "iter", "global_step": s, **LOSSES}) + "\n" for s in range(1, 9)))
    plot_loss_curves(log, tmp_path / "fig.png")
    assert len(draws) == 1

    def panels():
        from utils.plotting import new_figure
        fig = new_figure(figsize=(6, 3))
        for ax, scale in zip(fig.subplots(1, 2), ("linear", "log")):
            ax.plot([1, 2, 3], [0.3, 0.2, 0.15])
            ax.set_yscale(scale)
            ax.set_title(f"a {scale} panel")
        fig.tight_layout()
        return fig

    once = figure_png(panels(), dpi=50)
    assert len(draws) == 2
    twice = panels()
    with io.BytesIO() as buf:  # matplotlib's own savefig, placeholder engine and all
        twice.savefig(buf, format="png", dpi=50)
        assert buf.getvalue() == once
    assert len(draws) == 4


def test_the_loss_figure_draws_each_part_by_global_step_and_the_psnr_by_epoch(tmp_path, monkeypatch):
    import json

    from utils import plotting
    from utils.train.loss_figure import plot_loss_curves
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

    from utils.train.loss_figure import _figure_source, draw_loss_figure
    from utils.train.run_log import Console

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


def test_a_loss_figure_of_one_logged_iteration_shows_its_points_without_warnings(tmp_path, monkeypatch):
    """An epoch that logged one iteration (a short DDP run) drew empty panels (a line of one point has no length)
    and a log axis over one value, with matplotlib's 'divide by zero' warnings in the console."""
    import json
    import warnings

    from utils import plotting
    from utils.train.loss_figure import plot_loss_curves
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
    from utils.train.loss_figure import plot_loss_curves
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
    from utils.train.loss_figure import plot_loss_curves
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
    from utils.train.loss_figure import plot_loss_curves
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
    from utils.train.loss_figure import plot_loss_curves
    from utils.train.loss_history import smoothing_span
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


def test_a_long_runs_loss_figure_draws_few_points_that_keep_every_logged_values_envelope(tmp_path, monkeypatch):
    """The figure, redrawn at each epoch's end, read the whole log into dicts and drew every point: at the paper's
    scale (some 861,000 iterations logged, 300 MB) about 90 s and 1.9 GB each time. The log is read as a stream into
    arrays, each curve (the values, and their moving average over all of them) drawn as the lowest and highest of
    each stretch of values in a row; the caption says so."""
    import json
    import random

    import numpy as np

    from utils import plotting
    from utils.train.loss_figure import plot_loss_curves
    from utils.train.loss_history import MOST_POINTS, smoothed, smoothing_weight, stretch
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
        reach = stretch(n)  # the longest stretch of values a drawn point stands for
        assert reach < 2 * n / (MOST_POINTS // 2 - 1)  # at most twice what MOST_POINTS points need
        lowest, highest = np.full(n + 2 * reach, np.inf), np.full(n + 2 * reach, -np.inf)
        lowest[xs - 1 + reach], highest[xs - 1 + reach] = got, got
        windows = np.lib.stride_tricks.sliding_window_view  # each value against the points drawn within reach
        assert (windows(lowest, 2 * reach + 1).min(axis=1) <= ys).all()
        assert (windows(highest, 2 * reach + 1).max(axis=1) >= ys).all()
    assert solid.get_ydata()[-1] == average[-1]  # the average of all values, not of those drawn
    caption = drawn[0]._suptitle.get_text().replace("\n", " ")
    assert "lowest and highest of every 64 values in a row, of 50,000" in caption, caption


def test_a_loss_figure_that_cannot_be_drawn_is_a_warning_and_training_goes_on(tmp_path, monkeypatch):
    """draw_loss_figure caught only a figure that could not be written: any other error while drawing (a value
    matplotlib refuses, a bug in the figure's code) ended the run at an epoch's end, its checkpoint saved but the
    training stopped; at the paper's scale that may be days before anyone looks."""
    import json

    from utils.train import loss_figure
    from utils.train.loss_figure import draw_loss_figure
    from utils.train.run_log import Console

    def broken(*args, **kwargs):
        raise ValueError("Image size of 100000x300 pixels is too large")
    monkeypatch.setattr(loss_figure, "plot_loss_curves", broken)
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
    from utils.train.loss_figure import plot_loss_curves, short_count
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

