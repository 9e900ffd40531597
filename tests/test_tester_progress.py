"""A run of several sets says, after each, how many rows are done and about how long the rest will take: at the
benchmarks' scale (3,500 images, GoPro's 1280x720 last) each set's own bar said nothing of the hours after it."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from net.presets import build_model
from utils.data.image_io import write_image
from utils.eval.evaluation import evaluate_sets
from utils.eval.tasks import find_task_sets

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_sets(root, lowlight_side: tuple[int, int]) -> None:
    """Two rows under ``root``: derain, two random 16x24 pairs, and lowlight, one pair of ``lowlight_side``."""
    rng = np.random.default_rng(0)
    for k in range(2):
        write_image(root / "derain" / "input" / f"rain-{k}.png", rng.integers(0, 256, (16, 24, 3), np.uint8))
        write_image(root / "derain" / "target" / f"norain-{k}.png", rng.integers(0, 256, (16, 24, 3), np.uint8))
    for side in ("low", "high"):
        write_image(root / "lowlight" / side / "a.png", rng.integers(0, 256, (*lowlight_side, 3), np.uint8))


def test_a_run_of_several_sets_says_how_far_it_got_and_the_time_left(tmp_path, capsys):
    two_sets(tmp_path, lowlight_side=(32, 48))
    torch.manual_seed(0)
    sets = find_task_sets(["derain", "lowlight"], tmp_path)
    evaluate_sets(build_model("BaryNet", "tiny"), sets, device="cpu", progress=True)
    said = capsys.readouterr()
    assert "[1/2] derain" in said.err and "[2/2] lowlight" in said.err  # which row of how many
    line = re.search(r"=> 1 of 2 rows done in \S+; about (\S+) left for 1 image in 1 row", said.out)
    assert line, said.out


def test_a_compiled_run_says_how_long_its_first_image_took_compiling_included(tmp_path, capsys):
    """tester_bary.py --compile default said the first image of each size compiles (minutes), and never how long it
    took, where the trainer says it of its first compiled iteration. The forward is traced by the eager backend
    here (no kernels built), as utils/compiled.py's tests do."""
    from utils.eval.evaluation import restore_files
    from utils.eval.inference import prepare_for_inference
    from utils.eval.protocol import Protocol
    two_sets(tmp_path, lowlight_side=(16, 24))
    sets = find_task_sets(["derain", "lowlight"], tmp_path)
    said = r"=> the first image \(16x24\) took \d+\.\d s, compiling the network's forward included"
    torch.manual_seed(0)
    model = prepare_for_inference(build_model("BaryNet", "tiny"), "default", backend="eager")
    results = evaluate_sets(model, sets, Protocol(compile="default"), device="cpu", progress=False)
    assert len(re.findall(said, capsys.readouterr().out)) == 1  # after the first image of the run, once
    # that image's minutes of compiling are kept out of its row's s/img, which they made several times the pace
    rows = list(results["tasks"].values())
    first = rows[0]["images"][0]
    assert first["compiling"] is True and sum(im.get("compiling", False) for r in rows for im in r["images"]) == 1
    others = [im["seconds"] for im in rows[0]["images"][1:]]
    assert others and rows[0]["seconds_per_image"] == pytest.approx(sum(others) / len(others))

    inputs = sorted((tmp_path / "derain" / "input").iterdir())
    restore_files(model, inputs, tmp_path / "again", Protocol(compile="default"), device="cpu", progress=False)
    assert "=> the first image" not in capsys.readouterr().out  # compiled already: nothing to time
    fresh = prepare_for_inference(build_model("BaryNet", "tiny"), "default", backend="eager")
    restore_files(fresh, inputs, tmp_path / "restored", Protocol(compile="default"), device="cpu", progress=False)
    assert len(re.findall(said, capsys.readouterr().out)) == 1
    restore_files(build_model("BaryNet", "tiny"), inputs, tmp_path / "eager", device="cpu", progress=False)
    assert "=> the first image" not in capsys.readouterr().out  # nothing compiled


def test_ctrl_c_while_a_rows_fid_is_computed_keeps_its_scores(tmp_path, monkeypatch):
    """A Ctrl-C during the FID of a row (a square root of a 2048x2048 matrix, seconds) escaped evaluate_set as a bare
    KeyboardInterrupt: the tester wrote no results.json and every row scored so far was lost."""
    from utils.eval import evaluation
    from utils.eval.evaluation import EvaluationStopped

    class Features:  # the FID's Inception features stand-in (its weights are not on this machine)
        def features(self, images):
            return np.random.default_rng(len(images)).random((len(images), 4))

    def interrupted(*args):
        raise KeyboardInterrupt

    two_sets(tmp_path, lowlight_side=(16, 24))
    torch.manual_seed(0)
    monkeypatch.setattr(evaluation.FID, "distance", staticmethod(interrupted))
    try:
        with pytest.raises(EvaluationStopped) as stop:
            evaluate_sets(build_model("BaryNet", "tiny"), find_task_sets(["derain", "lowlight"], tmp_path),
                          device="cpu", progress=False, metrics=(None, Features()))
    except KeyboardInterrupt:  # escaped: pytest would take it for the user's and end the whole suite
        pytest.fail("the Ctrl-C during the FID escaped evaluate_sets: no results of the run were kept")
    results = stop.value.results
    row = results["tasks"]["derain"]
    assert row["partial"] and row["count"] == 2 and row["fid"] is None and len(row["images"]) == 2
    assert results["partial"]["row"] == "derain" and results["partial"]["rows_not_evaluated"] == ["lowlight"]
