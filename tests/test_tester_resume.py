"""``tester_bary.py --resume``: a stopped benchmark run is continued, not restarted.

At the benchmarks' scale (GoPro's 1,111 720p pairs take hours on a CPU) a run stopped near its end (Ctrl-C,
pre-emption, a bad image found late) used to start over: the next run moved every restoration aside and
restored them all again. Now ``--resume`` keeps the images the stopped run scored and evaluates the rest.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import tester_bary
from net.presets import build_model, model_config
from utils.data.image_io import write_image
from utils.errors import UsageError, UserError
from utils.eval import evaluation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A derain set of four 24x32 pairs and a two-image denoise set, in the benchmark layout."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    for k in range(1, 5):
        clean = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        write_image(root / "derain" / "Rain100L" / "target" / f"norain-{k}.png", clean)
        write_image(root / "derain" / "Rain100L" / "input" / f"rain-{k}.png", clean // 2 + 60)
    for k in range(2):
        write_image(root / "denoise" / "bsd68" / f"{k}.png", rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": model.state_dict(), "model_config": model_config("tiny"), "backbone": "BaryNet",
                "epoch": 1}, path)
    return path


def run(*argv):
    return tester_bary.main(tester_bary.get_args_parser().parse_args([*map(str, argv), "--no-progress"]))


def _count_restorations(monkeypatch, stop_at: int | None = None) -> list[str]:
    """Record the name of each image restored; Ctrl-C at the ``stop_at``-th."""
    names, real = [], evaluation.restore_array

    def restore(*a, **k):
        names.append(k["name"])
        if len(names) == stop_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluation, "restore_array", restore)
    return names


def _scores(results):
    return {row: [(im["name"], im["psnr"], im["ssim"], im.get("output")) for im in r["images"]]
            for row, r in results["tasks"].items()}


def test_resume_keeps_the_images_a_stopped_run_scored(bench, checkpoint, tmp_path, monkeypatch):
    flags = ["--model", checkpoint, "--data-root", bench, "--tasks", "denoise_25", "derain"]
    fresh = run(*flags, "--save", tmp_path / "fresh")
    out = tmp_path / "o"
    names = _count_restorations(monkeypatch, stop_at=4)  # the 2 denoise images, 1 rain image, then Ctrl-C
    with pytest.raises(UserError, match="interrupted.*partial.*the same command with --resume continues it"):
        run(*flags, "--save", out)
    first = out / "derain" / "Rain100L" / "rain-1.png"
    inode = os.stat(first).st_ino
    record = json.loads((out / "results.json").read_text())  # as if rain-1 had been restored in tiles
    tiled = f"note: {bench / 'derain' / 'Rain100L' / 'input' / 'rain-1.png'} (24x32) would need ...: in tiles"
    record["tasks"]["derain/Rain100L"]["notes"] = [tiled, "note: /elsewhere/rain-1.png (24x32) ..."]
    (out / "results.json").write_text(json.dumps(record))
    names.clear()
    resumed = run(*flags, "--save", out, "--resume")
    assert [os.path.basename(n) for n in names] == ["rain-2.png", "rain-3.png", "rain-4.png"]
    assert os.stat(first).st_ino == inode  # kept in place, not moved aside nor written again
    assert _scores(resumed) == _scores(fresh) and "partial" not in resumed
    assert resumed["resumed"] == {"images_kept": 3}
    assert resumed["tasks"]["derain/Rain100L"].pop("notes") == [tiled]  # its paper column is not comparable
    saved = json.loads((out / "results.json").read_text())
    assert _scores(saved) == _scores(fresh)
    assert [p.name for p in out.glob("results.before-*/results.json")] == ["results.json"]  # the stopped record


def test_resume_restores_again_an_image_whose_restoration_is_gone(bench, checkpoint, tmp_path, monkeypatch):
    flags = ["--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o"]
    run(*flags, "--max-images", "2")
    (tmp_path / "o" / "derain" / "Rain100L" / "rain-2.png").unlink()
    names = _count_restorations(monkeypatch)
    results = run(*flags, "--resume")  # and on to the whole set: --max-images may grow
    assert [os.path.basename(n) for n in names] == ["rain-2.png", "rain-3.png", "rain-4.png"]
    assert results["tasks"]["derain/Rain100L"]["count"] == 4


def test_resume_scores_again_an_image_whose_input_was_replaced(bench, checkpoint, tmp_path, monkeypatch, capsys):
    """The earlier run's images were kept by name: a target (or degraded image) replaced since under the same name
    kept its old scores, and the table mixed numbers of two data sets. The record's input digests tell."""
    data = tmp_path / "data"
    for sub in ("input", "target"):
        os.makedirs(data / "derain" / "Rain100L" / sub)
        for f in (bench / "derain" / "Rain100L" / sub).iterdir():
            (data / "derain" / "Rain100L" / sub / f.name).write_bytes(f.read_bytes())
    flags = ["--model", checkpoint, "--data-root", data, "--tasks", "derain", "--save", tmp_path / "o"]
    run(*flags, "--max-images", "3")
    record = json.loads((tmp_path / "o" / "results.json").read_text())
    for im in record["tasks"]["derain/Rain100L"]["images"][2:]:  # as an older tester wrote it: trusted by name
        im.pop("degraded_file_sha256", None), im.pop("target_file_sha256", None)
    (tmp_path / "o" / "results.json").write_text(json.dumps(record))
    target = data / "derain" / "Rain100L" / "target" / "norain-2.png"
    write_image(target, np.full((24, 32, 3), 128, np.uint8))  # replaced: same name, other content
    write_image(data / "derain" / "Rain100L" / "target" / "norain-3.png", np.zeros((24, 32, 3), np.uint8))
    capsys.readouterr()
    names = _count_restorations(monkeypatch)
    resumed = run(*flags, "--resume")
    assert [os.path.basename(n) for n in names] == ["rain-2.png", "rain-4.png"]  # rain-3: an older record's
    assert "note: --resume: 1 image scored by that run is scored again: its degraded or target file holds other " \
           "content now (replaced since under the same name): derain/Rain100L/rain-2.png" in capsys.readouterr().out
    fresh = run(*flags[:-2], "--save", tmp_path / "fresh", "--max-images", "2")
    assert _scores(fresh)["derain/Rain100L"][1][1:3] == _scores(resumed)["derain/Rain100L"][1][1:3]
    assert resumed["resumed"] == {"images_kept": 2}


def test_resume_refuses_a_run_scored_otherwise(bench, checkpoint, tmp_path):
    flags = ["--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o"]
    with pytest.raises(UsageError, match="--resume: no results.json in"):
        run(*flags, "--resume")
    run(*flags, "--max-images", "1")
    with pytest.raises(UsageError, match="ssim: 'skimage' there, 'gaussian' now"):
        run(*flags, "--resume", "--ssim", "gaussian")
    with pytest.raises(UsageError, match="--resume continues a benchmark run"):
        run("--model", checkpoint, "--input", bench / "derain" / "Rain100L" / "input", "--save", tmp_path / "i",
            "--resume")


def test_resume_saves_targets_and_draws_figures_of_kept_images(bench, checkpoint, tmp_path):
    flags = ["--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o"]
    run(*flags, "--max-images", "1")
    results = run(*flags, "--max-images", "2", "--resume", "--savetar", tmp_path / "t", "--figs", "--figs-dir",
                  tmp_path / "f", "--fig-images", "2")
    assert sorted(p.name for p in (tmp_path / "t" / "derain" / "Rain100L").iterdir()) == ["rain-1.png", "rain-2.png"]
    assert os.path.isfile(results["tasks"]["derain/Rain100L"]["figure"])


def test_resume_refuses_a_checkpoint_written_again_since(bench, tmp_path):
    """The record names the checkpoint by its path, and a fresh training run in its folder writes other weights
    under the same name: --resume joined two models' images into one table. The record's model_sha256 tells."""
    torch.manual_seed(1)
    path = tmp_path / "ckpt.pth"
    save = {"model_config": model_config("tiny"), "backbone": "BaryNet", "epoch": 1}
    torch.save({"model": build_model("BaryNet", "tiny").state_dict(), **save}, path)
    flags = ["--model", path, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o"]
    run(*flags, "--max-images", "1")
    torch.save({"model": build_model("BaryNet", "tiny").state_dict(), **save}, path)  # other weights, same name
    with pytest.raises(UsageError, match="--resume: the run recorded in .* scored .*ckpt.pth when it held other "
                                         "weights"):
        run(*flags, "--resume")


def test_resume_replaces_its_own_results_and_keeps_aside_only_what_the_user_changed(bench, checkpoint, tmp_path):
    """Each --resume run moved the earlier results.json/.csv/.md, its own and unchanged, into another
    results.before-* folder: three resumes, three copies. Now a results file exactly as the earlier run wrote it is
    replaced; one the user edited goes aside alone; and a record of more than this run scores (another row) goes
    aside whole with its restorations, as before."""
    flags = ["--model", checkpoint, "--data-root", bench, "--save", tmp_path / "o"]
    run(*flags, "--tasks", "derain", "--max-images", "1")
    for n in (2, 3):
        run(*flags, "--tasks", "derain", "--max-images", n, "--resume")
    assert not list((tmp_path / "o").glob("results.before-*"))
    assert json.loads((tmp_path / "o" / "results.json").read_text())["tasks"]["derain/Rain100L"]["count"] == 3
    md = tmp_path / "o" / "results.md"
    md.write_text(md.read_text() + "\nmy notes on this run\n")
    run(*flags, "--tasks", "derain", "--resume")
    aside = list((tmp_path / "o").glob("results.before-*"))
    assert [sorted(p.name for p in a.iterdir()) for a in aside] == [["results.md"]]
    assert (aside[0] / "results.md").read_text().endswith("my notes on this run\n")
    assert "my notes" not in md.read_text()
    run(*flags, "--tasks", "derain", "--max-images", "2", "--resume")  # the record holds 4 images, this run 2
    aside = sorted((tmp_path / "o").glob("results.before-*"))
    assert len(aside) == 2 and sorted(p.name for p in aside[1].iterdir()) == [
        "derain", "results.csv", "results.json", "results.md"]


def test_resume_draws_its_own_figures_again_in_place(bench, checkpoint, tmp_path):
    """Each --resume --figs run moved the figures the earlier run drew, unchanged, into another
    --figs-dir/results.before-* folder. The record now holds each figure's SHA-256: a figure as drawn is drawn again
    in place; one changed since (here: replaced by the user's own file) still goes aside."""
    figs = tmp_path / "f"
    flags = ["--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o", "--figs",
             "--figs-dir", figs]
    first = run(*flags, "--max-images", "1")
    assert first["tasks"]["derain/Rain100L"]["figure_sha256"]
    for n in (2, 4):
        run(*flags, "--max-images", n, "--resume")
    assert not list(figs.glob("results.before-*")) and [p.name for p in figs.iterdir()] == ["derain_Rain100L.png"]
    (figs / "derain_Rain100L.png").write_bytes(b"my own figure")
    run(*flags, "--resume")
    [aside] = figs.glob("results.before-*")
    assert (aside / "derain_Rain100L.png").read_bytes() == b"my own figure"
    assert (figs / "derain_Rain100L.png").read_bytes() != b"my own figure"


def test_resume_keeps_its_own_saved_targets_in_place(bench, checkpoint, tmp_path):
    """--resume --savetar moved the targets the earlier run had saved for the images it keeps into another
    --savetar/results.before-* folder at every resume (and saved them again). The record now holds each saved
    target's SHA-256: one as saved stays; one changed since goes aside and is saved again."""
    tar = tmp_path / "t" / "derain" / "Rain100L"
    flags = ["--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o", "--savetar",
             tmp_path / "t"]
    run(*flags, "--max-images", "2")
    inode = os.stat(tar / "rain-1.png").st_ino
    run(*flags, "--max-images", "3", "--resume")
    assert not list((tmp_path / "t").glob("results.before-*")) and os.stat(tar / "rain-1.png").st_ino == inode
    assert sorted(p.name for p in tar.iterdir()) == ["rain-1.png", "rain-2.png", "rain-3.png"]
    (tar / "rain-2.png").write_bytes(b"my own file")
    run(*flags, "--resume")
    [aside] = (tmp_path / "t").glob("results.before-*")
    assert [p.name for p in aside.rglob("*.png")] == ["rain-2.png"]
    assert (tar / "rain-2.png").read_bytes() != b"my own file" and os.stat(tar / "rain-1.png").st_ino == inode


def test_a_kept_restoration_that_cannot_be_read_stops_the_run_with_its_scores_so_far(bench, checkpoint, tmp_path):
    """--resume --figs reads a kept image's restoration again for its figure: one damaged since (a disk fault, an
    edit) ended the run with the image reader's error, and the images this run had scored before it, in the rows
    done, were in no results.json. The run now stops as at a bad image: results so far written, and the error
    names the kept restoration and how to have it restored again."""
    flags = ["--model", checkpoint, "--data-root", bench, "--tasks", "denoise_25", "derain", "--save", tmp_path / "o"]
    run(*flags, "--max-images", "1")
    kept = tmp_path / "o" / "derain" / "Rain100L" / "rain-1.png"
    kept.write_bytes(kept.read_bytes()[:60])
    with pytest.raises(UserError, match=f"the restoration {kept} that --resume keeps cannot be read.*delete it") as e:
        run(*flags, "--resume", "--figs", "--figs-dir", tmp_path / "f")
    assert "--skip-bad-files" not in str(e.value)  # it leaves out unreadable inputs, not a kept restoration
    record = json.loads((tmp_path / "o" / "results.json").read_text())
    assert record["tasks"]["denoise_25/bsd68"]["count"] == 2 and record["partial"]["row"] == "derain/Rain100L"
    kept.unlink()
    results = run(*flags, "--resume", "--figs", "--figs-dir", tmp_path / "f")
    assert [r["count"] for r in results["tasks"].values()] == [2, 4] and "partial" not in results


@pytest.mark.parametrize("spelt", ["relative", "link"])
def test_resume_takes_the_same_checkpoint_spelt_otherwise(bench, checkpoint, tmp_path, monkeypatch, spelt):
    """A stopped run's command typed again with the checkpoint spelt otherwise (relative where it was absolute, from
    another folder, or through a link) was refused: "scored otherwise ... (model: '/abs/tiny.pth' there, 'tiny.pth'
    now)", though the file, its digest recorded, is the same. The digest decides; other weights are still refused."""
    flags = ["--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o"]
    run("--model", checkpoint, *flags, "--max-images", "2")
    if spelt == "relative":
        monkeypatch.chdir(checkpoint.parent)
        model = checkpoint.name
    else:
        model = tmp_path / "link.pth"
        os.symlink(checkpoint, model)
    names = _count_restorations(monkeypatch)
    results = run("--model", model, *flags, "--resume")
    assert len(names) == 2 and results["resumed"] == {"images_kept": 2}
    other = tmp_path / "other.pth"  # another file with other weights: refused, as before
    torch.manual_seed(1)
    torch.save({"model": build_model("BaryNet", "tiny").state_dict(), "model_config": model_config("tiny"),
                "backbone": "BaryNet", "epoch": 1}, other)
    with pytest.raises(UsageError, match="scored otherwise than this one would"):
        run("--model", other, *flags, "--resume")
