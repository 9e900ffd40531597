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
    torch._dynamo.reset()  # what this process compiled before (other tests) is compiled anew, as in a tester's run
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
    # inductor compiles a fresh model's forward anew; the eager backend would reuse dynamo's cache of the same code
    torch._dynamo.reset()
    fresh = prepare_for_inference(build_model("BaryNet", "tiny"), "default", backend="eager")
    restore_files(fresh, inputs, tmp_path / "restored", Protocol(compile="default"), device="cpu", progress=False)
    assert len(re.findall(said, capsys.readouterr().out)) == 1
    restore_files(build_model("BaryNet", "tiny"), inputs, tmp_path / "eager", device="cpu", progress=False)
    assert "=> the first image" not in capsys.readouterr().out  # nothing compiled


class OneConv(torch.nn.Module):
    """``(B, 3, H, W) -> (B, 3, H, W)``: a network dynamo traces in a fraction of a second."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_an_image_that_compiles_again_is_marked_and_kept_out_of_the_pace_whichever_it_is(tmp_path, capsys):
    """--compile: an image of a new size later in a run made dynamo compile again (tens of seconds to minutes), and
    only the run's first image was marked "compiling": that later image's time counted in its row's s/img. Now
    every image whose forward compiled is marked and left out, as dynamo tells it (not guessed from sizes: once the
    second size has made it compile for dynamic shapes, a third size runs without compiling), and said in one
    line, however many of its batches of tiles compiled."""
    from utils.eval.evaluation import restore_files
    from utils.eval.inference import compile_count, prepare_for_inference
    from utils.eval.protocol import Protocol
    rng = np.random.default_rng(0)
    sizes = {"a": (16, 24), "b": (16, 24), "c": (32, 48), "d": (24, 40), "e": (16, 24)}
    for name, side in sizes.items():
        write_image(tmp_path / "derain" / "input" / f"rain-{name}.png", rng.integers(0, 256, (*side, 3), np.uint8))
        write_image(tmp_path / "derain" / "target" / f"norain-{name}.png", rng.integers(0, 256, (*side, 3), np.uint8))
    torch._dynamo.reset()  # what this process compiled before (other tests) is compiled anew, as in a tester's run
    torch.manual_seed(0)
    model = prepare_for_inference(OneConv(), "default", backend="eager")
    row = evaluate_sets(model, find_task_sets(["derain"], tmp_path), Protocol(compile="default"), device="cpu",
                        progress=False)["tasks"]["derain"]
    marked = {im["name"]: im.get("compiling", False) for im in row["images"]}
    assert marked == {"rain-a.png": True, "rain-b.png": False, "rain-c.png": True, "rain-d.png": False,
                      "rain-e.png": False}
    steady = [im["seconds"] for im in row["images"] if not im.get("compiling")]
    assert len(steady) == 3 and row["seconds_per_image"] == pytest.approx(sum(steady) / len(steady))
    out = capsys.readouterr().out
    assert len(re.findall(r"=> the first image \(16x24\) took \d+\.\d s, compiling the network's forward included",
                          out)) == 1
    assert len(re.findall(r"=> rain-c\.png \(32x48\) took \d+\.\d s, compiling the network's forward again "
                          r"included", out)) == 1 and out.count("=> ") == 2

    # tiled: a 24x32 image's six 16x16 tiles run as a batch of 4 and one of 2, which compile one after the other:
    # it is said once; then a 16x16 image, one tile alone, a batch of 1 that compiles again
    inputs = [tmp_path / "wide.png", tmp_path / "small.png"]
    write_image(inputs[0], rng.integers(0, 256, (24, 32, 3), np.uint8))
    write_image(inputs[1], rng.integers(0, 256, (16, 16, 3), np.uint8))
    torch._dynamo.reset()
    fresh = prepare_for_inference(OneConv(), "default", backend="eager")
    tiled = Protocol(compile="default", tile=16, tile_overlap=8, tile_batch=4)
    entries = restore_files(fresh, inputs, tmp_path / "restored", tiled, device="cpu", progress=False)
    assert [e.get("compiling", False) for e in entries] == [True, True] and compile_count(fresh, "default") == 3
    out = capsys.readouterr().out
    assert len(re.findall(r"=> the first image \(24x32\) took \d+\.\d s, compiling the network's forward included",
                          out)) == 1
    assert len(re.findall(r"=> small\.png \(16x16\) took \d+\.\d s, compiling the network's forward again "
                          r"included", out)) == 1 and out.count("=> ") == 2
    restore_files(fresh, inputs[::-1], tmp_path / "again", tiled, device="cpu", progress=False)
    assert "=> " not in capsys.readouterr().out  # every size compiled already


def test_a_torch_without_dynamos_compile_callback_counts_the_first_call_only(monkeypatch):
    """The compile-start callback is private to torch (``torch._dynamo.callback``): on a build without it, a compiled
    restore() must still run, and count its first call as compiling, as the tester did before it had the callback."""
    import torch._dynamo.callback

    from utils.eval.inference import compile_count, prepare_for_inference, restore
    monkeypatch.delattr(torch._dynamo.callback, "CallbackTrigger")
    torch._dynamo.reset()
    model = prepare_for_inference(OneConv(), "default", backend="eager")
    counts = []
    for side in (16, 32, 16):
        restore(model, torch.rand(1, 3, side, side), compile_mode="default")
        counts.append(compile_count(model, "default"))
    assert counts == [1, 1, 1]


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
