"""`python -m utils.analysis`: the embedding figures of a checkpoint on a user's photos, their numbers, its errors."""
import json

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from net.presets import build_model, model_config
from utils.analysis import own_photos
from utils.analysis.embeddings import (
    difference_map,
    latents,
    mean_cosine,
    nearest_neighbour_accuracy,
    nearest_neighbour_chance,
    pooled,
)
from utils.analysis.report import view_batch
from utils.checkpoints import load_model
from utils.demo.data import build_demo_data, embedding_views, make_test_image
from utils.demo.run import views_of_one_photo

SIDE = 48  # the photos' short side: a 6 x 6 latent, a fraction of a second a photo on a CPU


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trainer-style run folder: one tiny BaryNet checkpoint (random weights) and its ``latest`` pointer."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run")
    torch.save({"model": build_model("BaryNet", "tiny").state_dict(), "model_config": model_config("tiny"),
                "backbone": "BaryNet", "epoch": 1}, folder / "epoch_001.pth")
    (folder / "latest").write_text(json.dumps({"checkpoint": "epoch_001.pth"}))
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three small clean photos: a colour PNG, a grey PNG 50 pixels high (not a multiple of 8) and a JPEG larger
    than the run's --max-side 64; all 48 x 64 once fitted (one size: the network sets its kernels up once)."""
    folder = tmp_path_factory.mktemp("photos")
    cv2.imwrite(str(folder / "cat.png"), data.chelsea()[40:40 + SIDE, 100:100 + 64, ::-1])
    cv2.imwrite(str(folder / "camera.png"), data.camera()[100:100 + SIDE + 2, 150:150 + 64])
    cv2.imwrite(str(folder / "coffee.jpg"), data.coffee()[:192, :256, ::-1])
    return folder


@pytest.fixture(scope="module")
def analysed(run_dir, photos, tmp_path_factory):
    """One run on ``photos`` (the takeaway maps of the second), into a figures folder that already holds a file
    of the user's at the takeaway figure's name; returns ``(figures folder, embeddings.json)``."""
    figs = tmp_path_factory.mktemp("figs")
    (figs / "takeaway_maps.png").write_bytes(b"my own figure")
    args = own_photos.get_args_parser().parse_args([
        "--model", str(run_dir), "--photos", str(photos), "--photo", "camera", "--figs-dir", str(figs),
        "--max-side", "64", "--device", "cpu"])
    own_photos.main(args)
    return figs, json.loads((figs / "embeddings.json").read_text())


def test_the_figures_are_drawn_and_a_users_file_at_their_name_is_kept_aside(analysed):
    figs, numbers = analysed
    for name in own_photos.FIGURES:
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    [kept] = figs.glob("figures.before-*")
    assert (kept / "takeaway_maps.png").read_bytes() == b"my own figure"
    assert numbers["takeaway"] == str(figs / "takeaway_maps.png") and numbers["photo"] == "camera"
    # the photos by name; the JPEG's long side brought down to --max-side, every side a multiple of 8
    assert [p["name"] for p in numbers["photos"]] == ["camera", "cat", "coffee"]
    assert [p["size"] for p in numbers["photos"]] == [[48, 64]] * 3
    assert [p["read_size"] for p in numbers["photos"]] == [[50, 64], [48, 64], [192, 256]]
    assert numbers["views"] == ["noise 15", "noise 25", "noise 50", "haze", "rain", "jpeg q10", "low light"]


def test_the_numbers_are_those_of_the_embeddings_of_the_same_views(analysed, run_dir, photos):
    """Recomputed here from utils.analysis.embeddings on each photo's views, one batch a photo."""
    _, numbers = analysed
    model, _ = load_model(run_dir)
    model.eval()
    files = own_photos.photo_files(photos)
    wb, res, labels, names, cosines, chosen = [], [], [], [], [], None
    for k, (path, name) in enumerate(zip(files, own_photos.labels_of(files)), start=1):
        views = own_photos.photo_views(own_photos.read_photo(path, name, 64), k, seed=0)
        b, r = latents(model, torch.cat([view_batch(v) for v in views.values()]))
        wb.append(pooled(b))
        res.append(pooled(r))
        labels += list(views)
        names += [name] * len(views)
        cosines.append(mean_cosine(b, r).item())
        if name == "camera":
            chosen = (b, r, view_batch(views["noise 15"]).shape[-2:])
    wb, res = torch.cat(wb), torch.cat(res)
    for space, feats in (("wb", wb), ("residual", res)):
        assert numbers[f"{space}_degradation_1nn"] == nearest_neighbour_accuracy(feats, labels)
        assert numbers[f"{space}_photo_1nn"] == nearest_neighbour_accuracy(feats, names)
    assert numbers["degradation_1nn_chance"] == nearest_neighbour_chance(labels)
    assert numbers["photo_1nn_chance"] == nearest_neighbour_chance(names) == pytest.approx(6 * 7 * 3 / (21 * 20))
    assert numbers["mean_cosine_wb_residual"] == float(np.mean(cosines))
    b, r, size = chosen
    assert numbers["mean_wb_difference"] == float(np.mean(
        [difference_map(b[0], b[i], size, relative=True).mean() for i in range(1, 7)]))
    assert numbers["mean_residual_difference"] == float(np.mean(
        [difference_map(r[0], r[i], size, relative=True).mean() for i in range(1, 7)]))


def test_the_views_are_the_demos_test_inputs(tmp_path):
    """A demo photo's views made in memory are, array for array, the files the demo's figures read."""
    manifest = build_demo_data(tmp_path, seed=2, scale=0.25, max_photos=1, progress=False)
    [photo] = manifest["sources"]["test"]
    params = manifest["params"]
    clean, depth = make_test_image(photo, params["test_short"], params["test_long_max"])
    made = embedding_views(clean, depth, f"{photo}.png", 1, seed=2, scale=0.25)
    read = views_of_one_photo(tmp_path, manifest, photo)
    assert list(made) == list(read)
    for kind in read:
        assert np.array_equal(made[kind], read[kind]), kind


def error_line(capsys, argv):
    status = own_photos.cli(argv)
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return status, err


def test_a_restormer_checkpoint_is_one_error_line(tmp_path, photos, capsys):
    torch.save({"model": build_model("Restormer", "tiny").state_dict(),
                "model_config": model_config("tiny", backbone="Restormer"), "backbone": "Restormer"},
               tmp_path / "restormer.pth")
    status, err = error_line(capsys, ["--model", str(tmp_path / "restormer.pth"), "--photos", str(photos),
                                      "--figs-dir", str(tmp_path / "figs"), "--device", "cpu"])
    assert status == 2 and "is a Restormer" in err and "BaryNet or BaryPromptIR" in err
    assert not (tmp_path / "figs").exists()


def test_a_plain_state_dict_of_a_restormer_is_refused_for_what_it_is(tmp_path, photos, capsys):
    """A Restormer's weights without their configuration were refused with the loader's advice, "pass --backbone
    Restormer --preset tiny", which the analysis then refused in its turn: a Restormer has no WB split."""
    torch.save(build_model("Restormer", "tiny").state_dict(), tmp_path / "restormer.pth")
    status, err = error_line(capsys, ["--model", str(tmp_path / "restormer.pth"), "--photos", str(photos),
                                      "--figs-dir", str(tmp_path / "figs"), "--preset", "tiny", "--device", "cpu"])
    assert status == 2 and err.startswith(f"error: --model {tmp_path / 'restormer.pth'} holds the weights of a "
                                          f"Restormer"), err
    assert "BaryNet or BaryPromptIR" in err and "--backbone Restormer" not in err, err
    assert not (tmp_path / "figs").exists()


def test_bad_photos_are_one_error_line_naming_the_folder_or_file(tmp_path, run_dir, capsys):
    common = ["--model", str(run_dir), "--figs-dir", str(tmp_path / "figs"), "--device", "cpu"]
    status, err = error_line(capsys, [*common, "--photos", str(tmp_path / "missing")])
    assert status == 2 and f"--photos {tmp_path / 'missing'}: no such folder" in err
    (tmp_path / "empty").mkdir()
    status, err = error_line(capsys, [*common, "--photos", str(tmp_path / "empty")])
    assert status == 2 and "holds no photos" in err
    (tmp_path / "small").mkdir()
    cv2.imwrite(str(tmp_path / "small" / "ok.png"), np.zeros((SIDE, 64, 3), np.uint8))  # two: the least it takes
    cv2.imwrite(str(tmp_path / "small" / "tiny.png"), np.zeros((20, 40, 3), np.uint8))
    status, err = error_line(capsys, [*common, "--photos", str(tmp_path / "small")])
    assert status == 1 and f"{tmp_path / 'small' / 'tiny.png'} is too small" in err
    (tmp_path / "small" / "tiny.png").write_bytes(b"not an image")
    status, err = error_line(capsys, [*common, "--photos", str(tmp_path / "small")])
    assert status == 1 and f"cannot decode image {tmp_path / 'small' / 'tiny.png'}" in err
    assert not (tmp_path / "figs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_error_line(tmp_path, run_dir, capsys):
    status, err = error_line(capsys, ["--model", str(run_dir), "--device", "cuda", "--figs-dir", str(tmp_path)])
    assert status == 2 and "--device cuda" in err


def test_one_photo_is_one_error_line_and_a_count_of_one_is_singular(tmp_path, run_dir, capsys):
    """With one photo the 1-NN scores meant nothing ("degradation 0% (chance 0%)", "photo 100% (chance 100%)") and
    the projection's title said "1 photos x 7 degradations"."""
    (tmp_path / "one").mkdir()
    cv2.imwrite(str(tmp_path / "one" / "cat.png"), data.chelsea()[40:40 + SIDE, 100:100 + 64, ::-1])
    status, err = error_line(capsys, ["--model", str(run_dir), "--photos", str(tmp_path / "one"), "--figs-dir",
                                      str(tmp_path / "figs"), "--device", "cpu"])
    assert status == 2 and f"--photos {tmp_path / 'one'} holds one photo (cat.png)" in err
    assert "put another clean photo in it, or leave --photos out for the demo's 5 test photos" in err
    assert not (tmp_path / "figs").exists()
    from utils.analysis.figures import embedding_projection_figure
    feats = np.random.default_rng(0).normal(size=(4, 6))
    fig = embedding_projection_figure(feats, feats, ["noise", "rain", "noise", "rain"], ["a", "a", "b", "b"])
    assert fig._suptitle.get_text().startswith("PCA of pooled embeddings of 4 views (2 photos x 2 degradations)")
    fig = embedding_projection_figure(feats[:1].repeat(3, 0) + feats[:3], feats[:3], ["noise"] * 3, ["a"] * 3)
    assert fig._suptitle.get_text().startswith("PCA of pooled embeddings of 3 views (1 photo x 1 degradation)")


def test_a_photo_name_shared_by_two_files_asks_for_the_file_name():
    """--photo a, with a.png and a.jpg in --photos, said "none of the photos is called that"."""
    files = ["a.jpg", "a.png", "b.png"]
    names = own_photos.labels_of([own_photos.Path(f) for f in files])
    assert own_photos.chosen_photo(names, files, "a.png") == "a.png"
    with pytest.raises(own_photos.UsageError) as exc:
        own_photos.chosen_photo(names, files, "a")
    assert str(exc.value) == "--photo a: the name matches 2 photos (a.jpg, a.png) — pass the full file name, e.g. " \
                             "--photo a.jpg"
    with pytest.raises(own_photos.UsageError, match="none of the photos is called that"):
        own_photos.chosen_photo(names, files, "c")


def test_a_photo_the_cap_made_too_small_asks_for_the_least_max_side_that_works(tmp_path, capsys):
    """--max-side 33 on a 140 x 100 photo asked for "a larger photo (remove this one), or a larger --max-side for a
    long, narrow one"; the cap made it too small, and the fix is a --max-side this photo fits at. --max-side took
    32 and up, where a 4:3 photo was too small below 42."""
    img = np.zeros((100, 140, 3), np.uint8)
    with pytest.raises(own_photos.AnalysisError) as exc:
        own_photos.fitted(np.zeros((30, 140, 3), np.uint8), 64, "p.png")  # 64 x 14: whole, still 140 x 30
    assert "use a larger photo" in str(exc.value) and "--max-side" not in str(exc.value)
    with pytest.raises(own_photos.AnalysisError) as exc:
        own_photos.fitted(np.zeros((40, 160, 3), np.uint8), 64, "p.png")  # 64 x 16; at 126: 120 x 32
    assert str(exc.value) == ("p.png is too small: 64x16 pixels after its long side is resized to 64 (it is 160x40); "
                              "the network needs at least 32 on each side — pass --max-side 126 or more (the least "
                              "that keeps this photo large enough)")
    assert own_photos.fitted(np.zeros((40, 160, 3), np.uint8), 126, "p.png").shape == (32, 120, 3)
    with pytest.raises(own_photos.AnalysisError):
        own_photos.fitted(np.zeros((40, 160, 3), np.uint8), 125, "p.png")
    assert own_photos.fitted(img, 64, "p.png").shape == (40, 64, 3)  # 140 x 100 at the least --max-side
    parser = own_photos.get_args_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-side", "33"])
    assert "argument --max-side: must be >= 64, got 33" in capsys.readouterr().err
    assert parser.parse_args(["--max-side", "64"]).max_side == 64
    assert "at least 64, where a photo up to twice as long as high keeps the 32 pixels" in " ".join(
        parser.format_help().split())


def test_a_plain_state_dict_of_another_size_loads_with_the_testers_size_flags(tmp_path, photos):
    """The tester takes --dim, --num-blocks, ... for a plain state dict (no configuration in the file); the analysis
    command and the app took only --preset, so such a checkpoint of another width could not be loaded by them."""
    from utils.app import main as app_main
    from utils.cli import network_size_overrides
    torch.manual_seed(0)
    torch.save(build_model("BaryNet", "tiny", dim=8).state_dict(), tmp_path / "plain.pth")
    args = own_photos.get_args_parser().parse_args([
        "--model", str(tmp_path / "plain.pth"), "--preset", "tiny", "--dim", "8", "--photos", str(photos),
        "--figs-dir", str(tmp_path / "figs"), "--max-side", "64", "--device", "cpu"])
    own_photos.main(args)
    assert (tmp_path / "figs" / "embeddings.json").is_file()
    served = app_main.get_args_parser().parse_args(["--preset", "tiny", "--dim", "8", "--heads", "1", "1", "2", "2"])
    assert network_size_overrides(served) == {"dim": 8, "num_blocks": None, "num_refinement_blocks": None,
                                              "heads": [1, 1, 2, 2]}


def test_a_photo_past_the_first_ten_by_name_is_drawn_when_named(tmp_path, run_dir, capsys):
    """--photo named the 12th photo of a folder of 12: only the first 10 were read, and the error said none of the
    photos was called that."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1, 13):
        cv2.imwrite(str(folder / f"p{i:02d}.png"), np.full((SIDE, SIDE, 3), 10 * i, np.uint8))
    args = own_photos.get_args_parser().parse_args([
        "--model", str(run_dir), "--photos", str(folder), "--photo", "p12", "--figs-dir", str(tmp_path / "figs"),
        "--max-side", "64", "--device", "cpu"])
    numbers = own_photos.main(args)
    assert numbers["photo"] == "p12"
    assert [p["name"] for p in numbers["photos"]] == [f"p{i:02d}" for i in range(1, 10)] + ["p12"]
    assert "using the first 9 by name" in capsys.readouterr().out


def test_a_folder_at_an_output_name_is_one_error_line_before_the_network_runs(tmp_path, run_dir, photos, capsys):
    """A folder named embedding_projection.png in --figs-dir was met at that figure's write, after every photo's
    views had been through the network (minutes for the paper's network), with "is a folder where a file was
    expected" and no fix, and the takeaway figure already written beside the earlier run's numbers."""
    figs = tmp_path / "figs"
    (figs / "embedding_projection.png").mkdir(parents=True)
    (figs / "embedding_projection.png" / "mine.txt").write_text("kept")
    status, err = error_line(capsys, ["--model", str(run_dir), "--photos", str(photos), "--figs-dir", str(figs),
                                      "--max-side", "64", "--device", "cpu"])
    assert status == 2
    assert err == (f"error: {figs / 'embedding_projection.png'}: a folder is where python -m utils.analysis writes "
                   f"its file embedding_projection.png — move or rename that folder, or choose another --figs-dir\n")
    assert sorted(p.name for p in figs.iterdir()) == ["embedding_projection.png"]
    assert (figs / "embedding_projection.png" / "mine.txt").read_text() == "kept"


def test_the_figures_name_the_photo_the_checkpoint_and_the_photos(tmp_path, run_dir, photos, monkeypatch):
    """The takeaway maps were titled "How far each embedding moves from noise 15": no word of which photo, and
    neither figure said which checkpoint or which photos it was drawn from (two runs' figures looked alike)."""
    from utils.analysis import figures, report
    titles = {}

    def keeping(name, draw):
        def drawn(*args, **kwargs):
            fig = draw(*args, **kwargs)
            titles[name] = fig._suptitle.get_text()
            return fig
        return drawn

    monkeypatch.setattr(report, "takeaway_maps_figure", keeping("takeaway", figures.takeaway_maps_figure))
    monkeypatch.setattr(report, "embedding_projection_figure",
                        keeping("projection", figures.embedding_projection_figure))
    own_photos.main(own_photos.get_args_parser().parse_args([
        "--model", str(run_dir), "--photos", str(photos), "--photo", "cat", "--figs-dir", str(tmp_path / "figs"),
        "--max-side", "64", "--device", "cpu"]))
    said = "".join(f"BaryNet checkpoint {run_dir / 'epoch_001.pth'}, on the photos in {photos}".split())
    takeaway, projection = (" ".join(titles[k].split()) for k in ("takeaway", "projection"))
    assert takeaway.startswith("How far the embeddings of cat's views move from its noise 15 view: mean WB ")
    assert projection.startswith("PCA of pooled embeddings of 21 views (3 photos x 7 degradations)")
    for title in titles.values():  # folded to the figure's width, a path at its slashes and hyphens too
        assert "".join(title.split()).endswith(said)


def test_a_second_analysis_in_one_figs_dir_is_refused_naming_the_first(tmp_path, run_dir, photos, capsys):
    """Two analyses at once in one --figs-dir (two checkpoints in two terminals, the default folder) both ran and
    said they wrote the figures; the folder held one's takeaway maps beside the other's projection and numbers."""
    import os

    from utils.output_lock import OutputLock
    figs = tmp_path / "figs"
    with OutputLock(figs, flag="--figs-dir", role="analysis"):  # the first analysis, still running
        status, err = error_line(capsys, ["--model", str(run_dir), "--photos", str(photos), "--figs-dir", str(figs),
                                          "--max-side", "64", "--device", "cpu"])
        assert status == 1
        assert err.startswith(f"error: --figs-dir {figs} is in use by another analysis (PID {os.getpid()} on ")
        assert "wait for it to finish or choose another --figs-dir" in err
        assert sorted(p.name for p in figs.iterdir()) == [".lock"]  # the first's: nothing of the second's
    args = own_photos.get_args_parser().parse_args(["--model", str(run_dir), "--photos", str(photos), "--figs-dir",
                                                    str(figs), "--max-side", "64", "--device", "cpu"])
    own_photos.main(args)  # once the first has ended
    assert sorted(p.name for p in figs.iterdir()) == sorted([".analysis-outputs.json", *own_photos.FIGURES,
                                                             own_photos.NUMBERS])  # and no .lock left


def _files(folder):
    """``{relative path: bytes}`` of every file below ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stop_while_the_network_runs_or_the_figures_are_drawn_changes_nothing_in_figs_dir(
        tmp_path, run_dir, photos, monkeypatch, capsys):
    """Ctrl-C while the photos went through the network (minutes for the paper's network) had already moved a
    user's file at a figure's name aside and left an empty record in a new --figs-dir; a stop while the projection
    was drawn left the new takeaway figure beside the earlier run's projection and numbers."""
    from utils.analysis import report
    argv = ["--photos", str(photos), "--max-side", "64", "--device", "cpu", "--model", str(run_dir)]
    calls = []

    def stop_at_the_second_photo(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return photo_latents(*args)

    photo_latents = report.photo_latents
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "takeaway_maps.png").write_bytes(b"my own figure")
    with monkeypatch.context() as patched:
        patched.setattr(report, "photo_latents", stop_at_the_second_photo)
        for figs in (mine, tmp_path / "new"):
            calls.clear()
            before = _files(figs) if figs.exists() else None
            assert own_photos.cli([*argv, "--figs-dir", str(figs)]) == 130
            assert capsys.readouterr().err.endswith("error: interrupted\n")
            assert (_files(figs) if figs.exists() else None) == before, figs
    earlier = tmp_path / "earlier"
    own_photos.main(own_photos.get_args_parser().parse_args([*argv, "--figs-dir", str(earlier), "--photo", "cat"]))
    before = _files(earlier)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "embedding_projection_figure", interrupted)  # the takeaway figure drawn already
    assert own_photos.cli([*argv, "--figs-dir", str(earlier)]) == 130
    assert _files(earlier) == before


@pytest.mark.parametrize("flag", ["--photos", "--figs-dir"])
def test_an_empty_folder_flag_is_refused_not_read_as_the_current_folder(flag, capsys):
    """--photos "$UNSET" drew the images of the current folder ("=> 2 photos from  (...)"), and --figs-dir "" wrote
    the figures, the record and the lock into it; the tester refuses its empty folder flags."""
    with pytest.raises(SystemExit) as exc:
        own_photos.get_args_parser().parse_args([flag, " "])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: argument {flag}: an empty path: name a file or folder") and err.count("\n") == 1


def test_photo_given_as_a_path_into_photos_names_that_photo(tmp_path, run_dir, photos, monkeypatch):
    """--photo my_photos/cat.png (as a shell completes it) said "--photo my_photos/cat.png: none of the photos is
    called that; pass one of camera, cat, coffee"."""
    monkeypatch.chdir(photos.parent)
    numbers = own_photos.main(own_photos.get_args_parser().parse_args([
        "--model", str(run_dir), "--photos", f"./{photos.name}", "--photo", f"{photos.name}/cat.png",
        "--figs-dir", str(tmp_path / "figs"), "--max-side", "64", "--device", "cpu"]))
    assert numbers["photo"] == "cat"
    files = own_photos.photo_files(photos)
    elsewhere = tmp_path / "cat.png"  # a file of that name outside --photos is not that photo
    elsewhere.write_bytes((photos / "cat.png").read_bytes())
    assert own_photos.photo_by_path(str(elsewhere), files) == str(elsewhere)
    assert own_photos.photo_by_path("cat", files) == "cat"


def test_a_backbone_without_the_wb_split_is_refused_before_the_checkpoint_is_read(tmp_path, photos, capsys):
    """--backbone PromptIR (the loader's advice for a plain PromptIR state dict) was refused only once the checkpoint
    had been read and the network built; a missing checkpoint was said first, and fixing it led to the refusal."""
    status, err = error_line(capsys, ["--model", str(tmp_path / "missing.pth"), "--backbone", "PromptIR",
                                      "--photos", str(photos), "--figs-dir", str(tmp_path / "figs"), "--device", "cpu"])
    assert status == 2
    assert err == ("error: --backbone PromptIR: a PromptIR has no WB / residual split of its latent to draw — pass a "
                   "BaryNet or BaryPromptIR checkpoint\n")
    assert not (tmp_path / "figs").exists()
