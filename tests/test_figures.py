"""The demo's embedding figures: layout (no empty axes, maps under their images, no overlapping
text) and titles that carry numbers measured from the data, checked against values computed here."""
import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from utils.analysis.figures import embedding_projection_figure, takeaway_maps_figure


def _texts(fig):
    """Every non-empty title, axis label, suptitle and caption of ``fig``."""
    texts = [fig._suptitle, fig._supxlabel]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    return [t for t in texts if t is not None and t.get_visible() and t.get_text()]


def _assert_no_overlap(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
    for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), f"{ta!r} overlaps {tb!r}"


def _nn_accuracy(x, labels):
    """Leave-one-out 1-NN accuracy, written out with loops."""
    hits = 0
    for i in range(len(x)):
        dist = [np.linalg.norm(x[i] - x[j]) if j != i else np.inf for j in range(len(x))]
        hits += labels[int(np.argmin(dist))] == labels[i]
    return hits / len(x)


def _nn_chance(labels):
    """Share of ordered pairs of distinct rows that share a label."""
    pairs = [(i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j]
    return sum(labels[i] == labels[j] for i, j in pairs) / len(pairs)


@pytest.fixture(params=[(24, 36), (32, 32)], ids=["wide", "square"])
def takeaway(request):
    rng = np.random.default_rng(0)
    names = ["noise 15", "noise 25", "haze", "rain", "low light"]
    images = [rng.random((*request.param, 3)) for _ in names]
    # constant maps of distinct values: a map drawn under the wrong image shows the wrong mean
    wb = [np.full(request.param, 0.01 * (i + 1)) for i in range(len(names) - 1)]
    res = [np.full(request.param, 0.1 * (i + 1)) for i in range(len(names) - 1)]
    fig = takeaway_maps_figure(images, names, wb, res)
    yield fig, names, wb, res
    plt.close(fig)


def test_takeaway_maps_have_no_empty_axes(takeaway):
    fig, names, wb, res = takeaway
    with_images = [ax for ax in fig.axes if ax.images]
    assert len(with_images) == len(names) + len(wb) + len(res)
    others = [ax for ax in fig.axes if not ax.images]
    assert len(others) == 1 and others[0].get_ylabel().startswith("L2 distance")  # the colour bar


def test_takeaway_maps_sit_under_their_images(takeaway):
    fig, names, wb, res = takeaway
    fig.canvas.draw()
    top = {ax.get_title().replace(" (reference)", ""): ax for ax in fig.axes if ax.images and len(ax.images) == 1}
    maps = [ax for ax in fig.axes if len(ax.images) == 2]  # the photo with the map laid over it
    assert set(top) == set(names)
    box = {ax: ax.get_window_extent() for ax in fig.axes}  # where each axis is drawn, in pixels
    for k, name in enumerate(names[1:]):
        col = box[top[name]]
        below = sorted((ax for ax in maps if abs(box[ax].x0 - col.x0) < 0.5 and abs(box[ax].x1 - col.x1) < 0.5),
                       key=lambda ax: -box[ax].y0)
        assert len(below) == 2, name
        assert all(box[ax].y1 <= col.y0 for ax in below)
        assert below[0].get_title() == f"mean {wb[k].mean():.3f}"
        assert below[1].get_title() == f"mean {res[k].mean():.3f}"
    assert not any(box[ax].x0 < box[top[names[0]]].x1 for ax in maps)  # nothing under the reference


def test_takeaway_maps_text_does_not_overlap_and_states_the_means(takeaway):
    fig, names, wb, res = takeaway
    _assert_no_overlap(fig)
    wb_mean, res_mean = np.mean([m.mean() for m in wb]), np.mean([m.mean() for m in res])
    title = fig._suptitle.get_text()
    assert f"WB {wb_mean:.3f}" in title and f"residual {res_mean:.3f}" in title
    assert f"{res_mean / wb_mean:.1f}x" in title


def test_takeaway_maps_refuse_maps_that_do_not_match_the_images():
    img = np.zeros((8, 8, 3))
    with pytest.raises(ValueError, match="n - 1 maps"):
        takeaway_maps_figure([img] * 3, ["a", "b", "c"], [np.zeros((8, 8))] * 3, [np.zeros((8, 8))] * 3)


@pytest.fixture
def projection():
    rng = np.random.default_rng(1)
    kinds, photos = ["noise", "rain", "haze", "jpeg"], ["p0", "p1", "p2"]
    labels = [k for _ in photos for k in kinds]
    owners = [p for p in photos for _ in kinds]
    # WB clusters by photo, the residual (100x smaller) by degradation, plus noise
    wb = np.stack([np.eye(16)[photos.index(p)] * 3 for p in owners]) + rng.normal(0, 0.5, (12, 16))
    res = 0.01 * (np.stack([np.eye(16)[kinds.index(k)] * 3 for k in labels]) + rng.normal(0, 1.0, (12, 16)))
    fig = embedding_projection_figure(wb, res, labels, owners)
    yield fig, wb, res, labels, owners
    plt.close(fig)


def test_projection_titles_carry_the_measured_scores(projection):
    fig, wb, res, labels, owners = projection
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == 2 and len(fig.axes) == 2
    for ax, feats, space in zip(panels, (wb, res), ("WB", "residual")):
        title = ax.get_title()
        assert title.startswith(f"{space} codes")
        assert f"degradation 1-NN {100 * _nn_accuracy(feats, labels):.0f} %" in title
        assert f"(chance {100 * _nn_chance(labels):.0f} %)" in title
        assert f"photo 1-NN {100 * _nn_accuracy(feats, owners):.0f} %" in title
        assert f"(chance {100 * _nn_chance(owners):.0f} %)" in title
    # the synthetic data is built so the two panels tell opposite stories
    assert _nn_accuracy(wb, owners) == 1 and _nn_accuracy(res, labels) > 0.5


def test_projection_gives_each_degradation_its_own_colour_and_refuses_rows_that_do_not_match():
    """With 12 degradations deg0 and deg10 were drawn (and listed in the legend) in one colour; labels of another
    length than the features ended in an IndexError."""
    rng = np.random.default_rng(0)
    labels = [f"deg{i}" for i in range(12)]
    feats = rng.normal(size=(12, 8))
    fig = embedding_projection_figure(feats, feats, labels)
    try:
        legend = fig.axes[1].get_legend()
        colours = [tuple(h.get_color()) if not isinstance(h.get_color(), str) else h.get_color()
                   for h in legend.legend_handles]
        assert len(set(colours)) == 12
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match=r"labels has 11 rows, wb_feats 12: give one per view"):
        embedding_projection_figure(feats, feats, labels[:11])
    with pytest.raises(ValueError, match=r"at most 20 degradations"):
        embedding_projection_figure(rng.normal(size=(21, 8)), rng.normal(size=(21, 8)), [str(i) for i in range(21)])


def test_projection_panels_share_one_scale(projection):
    fig, *_ = projection
    panels = [ax for ax in fig.axes if ax.collections]
    fig.canvas.draw()
    assert panels[0].get_xlim() == panels[1].get_xlim() and panels[0].get_ylim() == panels[1].get_ylim()
    for ax in panels:  # each panel's points standardised to RMS radius 1 around their mean
        pts = np.vstack([c.get_offsets() for c in ax.collections])
        assert np.sqrt(np.mean(np.sum((pts - pts.mean(0)) ** 2, axis=1))) == pytest.approx(1, abs=1e-4)
    assert "RMS radius" in fig._supxlabel.get_text()


def test_projection_text_does_not_overlap(projection):
    fig, *_ = projection
    _assert_no_overlap(fig)


def test_importing_the_figures_leaves_the_callers_backend_alone():
    """utils/analysis/figures.py switched matplotlib to Agg on import, and the tester's comparison figure and the
    loss curves when drawn: a notebook's inline backend was lost."""
    import subprocess
    import sys
    code = ("import json, tempfile, numpy as np, matplotlib; matplotlib.use('pdf'); "
            "import utils.analysis.figures; from utils.eval.report import save_comparison_figure; "
            "from utils.train.loss_figure import plot_loss_curves; "
            "d = tempfile.mkdtemp(); img = np.zeros((8, 8, 3)); "
            "save_comparison_figure([('a', img, img, img, 30.0, 0.9, 20.0, 0.5)], d + '/c.png', 't'); "
            "open(d + '/log.jsonl', 'w').write(json.dumps({'kind': 'iter', 'global_step': 1, 'l1': 0.5}) + '\\n'); "
            "plot_loss_curves(d + '/log.jsonl', d + '/l.png'); print(matplotlib.get_backend())")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert done.stdout.strip() == "pdf", done.stderr


def test_takeaway_maps_name_the_photo_and_where_the_data_came_from_without_overlap():
    rng = np.random.default_rng(0)
    names = ["noise 15", "haze", "rain"]
    maps = [np.full((24, 36), 0.1), np.full((24, 36), 0.2)]
    source = "BaryNet checkpoint " + "/a/long/folder" * 12 + "/epoch_006.pth, on the photos in my_photos"
    fig = takeaway_maps_figure([rng.random((24, 36, 3)) for _ in names], names, maps, maps, photo="cat",
                               source=source)
    try:
        title = fig._suptitle.get_text()
        said = " ".join(title.split())
        assert said.startswith("How far the embeddings of cat's views move from its noise 15 view: mean WB 0.150")
        assert "".join(title.split()).endswith("".join(source.split()))  # on lines of its own, wrapped
        fig.canvas.draw()
        assert fig._suptitle.get_window_extent().width <= fig.bbox.width
        _assert_no_overlap(fig)
    finally:
        plt.close(fig)
