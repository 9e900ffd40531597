# ruff: noqa: F811 - the fixtures bench and checkpoint come from _tester_case, and tests take them by name
"""tester_bary.py and utils/eval/ end to end, with a tiny BaryNet whose output conv is zero: the table equals the
direct metrics, the protocols, checkpoints, flag errors, runs without arguments, and the scoring of outputs other
than the input (:mod:`_tester_case`). Stops, bad files and users' files: ``test_tester_safety.py``; an earlier
run's outputs set aside: ``test_tester_keep_aside.py``.
"""
import csv
import hashlib
import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _markdown import cells
from _tester_case import (  # noqa: F401 - fixtures, taken by name
    REPO,
    H,
    W,
    bench,
    checkpoint,
    clean_images,
    degrade,
    direct_metrics,
    interrupt_restoring_at,
    pair_dirs,
    run,
    run_tester_in,
    write_photos,
)
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import tester_bary
from net.presets import build_model, model_config
from utils.checkpoints import CheckpointError
from utils.data.image_files import list_images
from utils.data.image_io import ImageReadError, read_image, write_image
from utils.data.noise import noise_seed, noisy_version
from utils.data.pairing import PairingError, match_pairs
from utils.errors import UserError
from utils.eval import protocol as protocol_module
from utils.eval import tasks as tasks_module
from utils.eval.evaluation import average_row, evaluate_set, evaluate_sets
from utils.eval.metrics import image_metrics
from utils.eval.paper import comparison_lines
from utils.eval.protocol import Protocol, RestoreOutOfMemory
from utils.eval.report import summary_table, write_results
from utils.eval.tasks import find_task_sets, paired_set

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("protocol,space", [("reference", "rgb"), ("reference", "y"), ("pad", "rgb"), ("pad", "y")])
def test_zero_model_table_equals_direct_metrics(bench, checkpoint, tmp_path, protocol, space):
    deg, tar = bench / "derain" / "Rain100L" / "input", bench / "derain" / "Rain100L" / "target"
    ssim = "gaussian" if space == "y" else "skimage"
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "out",
              "--savetar", tmp_path / "tar", "--protocol", protocol, "--metric-space", space, "--ssim", ssim)
    expected = direct_metrics(deg, tar, protocol, space, ssim)
    row = res["tasks"]["input"]  # --degset mode: the row is named after the degraded folder
    assert [im["name"] for im in row["images"]] == sorted(expected)
    for im in row["images"]:
        p, s = expected[im["name"]]
        assert im["psnr"] == pytest.approx(p, abs=1e-12) and im["ssim"] == pytest.approx(s, abs=1e-12)
    assert row["psnr"] == pytest.approx(np.mean([v[0] for v in expected.values()]), abs=1e-12)
    assert row["ssim"] == pytest.approx(np.mean([v[1] for v in expected.values()]), abs=1e-12)
    assert res["protocol"]["protocol"] == protocol and res["protocol"]["metric_space"] == space
    # Restorations and targets as scored are saved under the reference's names.
    size = (H // 8 * 8, W // 8 * 8) if protocol == "reference" else (H, W)
    assert read_image(tmp_path / "out" / "rain-1.png").shape[:2] == size
    assert read_image(tmp_path / "tar" / "rain-1.png").shape[:2] == size
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["tasks"]["input"]["psnr"] == pytest.approx(row["psnr"])


def test_benchmark_tasks_table_and_files(bench, checkpoint, tmp_path, capsys):
    res = run("--model", checkpoint, "--data-root", bench, "--tasks", "denoise_25", "derain", "dehaze", "jpeg",
              "--save", tmp_path / "res", "--figs", "--figs-dir", tmp_path / "figs", "--fig-images", "2")
    rows = ["denoise_25/setA", "denoise_25/setB", "derain/Rain100L", "dehaze", "jpeg"]
    assert list(res["tasks"]) == rows
    # Paired rows: the degraded images' own metrics (reference protocol, RGB).
    for row, folder in (("dehaze", bench / "dehaze"), ("jpeg", bench / "jpeg")):
        expected = direct_metrics(folder / "input", folder / "target", "reference", "rgb")
        assert res["tasks"][row]["psnr"] == pytest.approx(np.mean([v[0] for v in expected.values()]), abs=1e-12)
        # the degraded-input column scores the input itself (the zero model returns it, so both agree here)
        assert res["tasks"][row]["input_psnr"] == pytest.approx(np.mean([v[0] for v in expected.values()]), abs=1e-12)
        assert res["tasks"][row]["input_ssim"] == pytest.approx(np.mean([v[1] for v in expected.values()]), abs=1e-12)
    # Denoising rows: the seeded noisy image (crop first, then noise) against the clean one.
    clean = read_image(bench / "denoise" / "setA" / "cat.png")[: H // 8 * 8, : W // 8 * 8]
    p, s = image_metrics(noisy_version(clean, "cat.png", 25), clean)
    cat = next(im for im in res["tasks"]["denoise_25/setA"]["images"] if im["name"] == "cat.png")
    assert cat["psnr"] == pytest.approx(p, abs=1e-12) and cat["ssim"] == pytest.approx(s, abs=1e-12)
    assert 19 < p < 23  # sigma 25 noise on an 8-bit image is about 20 dB
    # The average is the mean of the rows.
    assert res["average"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in res["tasks"].values()]))
    # Files: json (shape of the issue), csv, md; restored images per row; figures.
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert set(saved) >= {"protocol", "tasks"}
    for name, r in saved["tasks"].items():
        assert {"psnr", "ssim", "images"} <= set(r) and {"name", "psnr", "ssim"} <= set(r["images"][0])
        assert {"best_psnr", "worst_psnr", "seconds_per_image"} <= set(r)
    assert saved["protocol"]["protocol"] == "reference" and "crc32" in saved["protocol"]["noise"]
    with open(tmp_path / "res" / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    kinds = [r["kind"] for r in table]
    assert all(float(r["input_psnr"]) > 0 for r in table if r["kind"] in ("image", "task", "average"))
    assert kinds.count("image") == 3 + 1 + 3 + 3 + 3 and kinds.count("task") == 5 and kinds.count("average") == 1
    assert set(kinds) == {"image", "task", "average"}  # one table of results: the protocol is in the JSON
    md = (tmp_path / "res" / "results.md").read_text()
    assert "## Protocol" in md and "| Average |" in md and "derain/Rain100L" in md
    assert (tmp_path / "res" / "derain" / "Rain100L" / "rain-2.png").is_file()
    assert (tmp_path / "res" / "denoise_25" / "setB" / "cat.png").is_file()
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(
        r.replace("/", "_") + ".png" for r in rows)
    printed = capsys.readouterr().out
    assert "Protocol:" in printed and "| Task |" in printed and "Average" in printed
    assert "| Degraded PSNR | Degraded SSIM | PSNR | SSIM |" in printed
    assert len(printed.split("| Task |")[0].strip().splitlines()) <= 4  # a short protocol line, not a dump


def test_denoise_inputs_are_reproducible_and_order_independent(bench, checkpoint, tmp_path, monkeypatch):
    assert noise_seed("cat.png", 25) == zlib.crc32(b"0:cat.png:25")  # not Python's randomised hash()

    def restored(out):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "denoise_15", "--save", out)
        return {p.name: p.read_bytes() for p in sorted((out / "denoise_15" / "setA").iterdir())}

    first, second = restored(tmp_path / "a"), restored(tmp_path / "b")
    assert first == second
    real = list_images
    monkeypatch.setattr(tasks_module, "list_images", lambda folder, recursive=False: real(folder, recursive)[::-1])
    assert restored(tmp_path / "c") == first
    # The zero model returns its input: the saved restoration is the noisy input itself.
    clean = read_image(bench / "denoise" / "setA" / "astro.png")[: H // 8 * 8, : W // 8 * 8]
    assert np.array_equal(read_image(tmp_path / "a" / "denoise_15" / "setA" / "astro.png"),
                          noisy_version(clean, "astro.png", 15))


def test_tiled_evaluation_matches_untiled(bench, checkpoint, tmp_path):
    args = ["--model", checkpoint, "--data-root", bench, "--tasks", "dehaze", "--no-images", "--protocol", "pad"]
    plain = run(*args, "--save", tmp_path / "a")
    tiled = run(*args, "--save", tmp_path / "b", "--tile", "16", "--tile-overlap", "4")
    assert [im["psnr"] for im in tiled["tasks"]["dehaze"]["images"]] == \
        [im["psnr"] for im in plain["tasks"]["dehaze"]["images"]]
    assert tiled["protocol"]["tile"] == 16


def test_input_mode_restores_without_metrics(bench, checkpoint, tmp_path):
    src = tmp_path / "mine"
    img8 = read_image(bench / "jpeg" / "input" / "cat.png")
    img16 = img8.astype(np.uint16) * 257 + 100
    write_image(src / "a.png", img8)
    write_image(src / "b.png", img16)
    res = run("--model", checkpoint, "--input", src, "--save", tmp_path / "out")
    assert [r["name"] for r in res["restored"]] == ["a.png", "b.png"]
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(on_disk) == {"model", "run", "restored", "provenance"}  # what was done; nothing scored, no metrics
    assert on_disk["run"]["precision"] == "fp32" and on_disk["model"]["model"] == str(checkpoint)
    assert np.array_equal(read_image(tmp_path / "out" / "a.png"), img8)  # full size, any size
    out16 = read_image(tmp_path / "out" / "b.png")
    assert out16.dtype == np.uint16 and np.array_equal(out16, img16)
    single = run("--model", checkpoint, "--input", src / "a.png", "--save", tmp_path / "one")
    assert len(single["restored"]) == 1


def _exif_jpeg(path, img, orientation=6):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95, exif=exif)


def test_a_pair_turned_by_an_exif_tag_says_so(tmp_path):
    """A phone photo as the degraded image (stored 44x61, shown 61x44 by its EXIF tag) beside a target saved upright
    was "44x61 vs target 61x44" in the tester, --check-data and the trainers' checks, with nothing on why."""
    from utils.data.doctor import check_paired_set
    deg, tar = tmp_path / "input", tmp_path / "target"
    deg.mkdir()
    img = clean_images()["cat"]
    _exif_jpeg(deg / "a.jpg", img)
    write_image(tar / "a.png", np.ascontiguousarray(np.rot90(img, -1)))  # the photo as a viewer shows it
    note = "(a.jpg's EXIF orientation tag turns it in viewers; pairs are read without the tag, as the reference reads"
    with pytest.raises(PairingError) as refused:
        paired_set("s", deg, tar)
    assert f"a.jpg 44x61 vs target a.png 61x44 {note}" in str(refused.value)
    row, _ = check_paired_set("s", deg, tar, look_beside=False)
    [problem] = [p for p in row.problems if p.kind == "size mismatch"]
    assert note in problem.detail
    from utils.data.training_files import Pair, check_images
    from utils.errors import UserError
    from utils.train.validation_set import check_validation_images
    with pytest.raises(UserError, match=re.escape(note)):  # the trainers' validation set, and their training files
        check_validation_images([(deg / "a.jpg", tar / "a.png")])
    with pytest.raises(UserError, match=re.escape(note)):
        check_images({"derain": [Pair(deg / "a.jpg", tar / "a.png", "derain")]}, 16)


def test_input_photos_are_restored_upright(checkpoint, tmp_path):
    _exif_jpeg(tmp_path / "mine" / "phone.jpg", clean_images()["cat"])  # stored 44x61, shown 61x44
    stored = read_image(tmp_path / "mine" / "phone.jpg")
    assert stored.shape[:2] == (H, W)
    res = run("--model", checkpoint, "--input", tmp_path / "mine", "--save", tmp_path / "out")
    assert [r["name"] for r in res["restored"]] == ["phone.jpg"]
    assert np.array_equal(read_image(tmp_path / "out" / "phone.png"), np.rot90(stored, -1))  # zero model: identity


def test_benchmark_pairs_ignore_exif_orientation(checkpoint, tmp_path):
    """As the reference's PIL convert('RGB'): a tagged degraded image is scored as stored, like its target."""
    clean = clean_images()
    for k, name in enumerate(("astro", "cat")):
        _exif_jpeg(tmp_path / "d" / f"{name}.jpg", degrade(clean[name], k))  # tagged: would turn 61x44
        write_image(tmp_path / "t" / f"{name}.png", clean[name])  # untagged target, 44x61
    for protocol in ("reference", "pad"):
        res = run("--model", checkpoint, "--degset", tmp_path / "d", "--tarset", tmp_path / "t", "--save",
                  tmp_path / protocol, "--protocol", protocol)
        expected = direct_metrics(tmp_path / "d", tmp_path / "t", protocol, "rgb")
        for im in res["tasks"]["d"]["images"]:
            assert im["psnr"] == pytest.approx(expected[im["name"]][0], abs=1e-12)
        size = (H // 8 * 8, W // 8 * 8) if protocol == "reference" else (H, W)
        assert read_image(tmp_path / protocol / "astro.png").shape[:2] == size


def test_16_bit_pairs_score_on_8_bits_and_save_16_bits(checkpoint, tmp_path):
    clean = clean_images()["coffee"]
    deg16 = degrade(clean, 5).astype(np.uint16) * 257 + 77
    tar16 = clean.astype(np.uint16) * 257
    write_image(tmp_path / "d" / "x.png", deg16)
    write_image(tmp_path / "t" / "x.png", tar16)
    res = run("--model", checkpoint, "--degset", tmp_path / "d", "--tarset", tmp_path / "t", "--save",
              tmp_path / "o", "--protocol", "pad")
    to8 = lambda a: np.floor(a / 65535.0 * 255 + 0.5).astype(np.uint8)  # noqa: E731  (round half up)
    p, s = image_metrics(to8(deg16), to8(tar16))
    assert res["tasks"]["d"]["psnr"] == pytest.approx(p, abs=1e-12) and res["tasks"]["d"]["ssim"] == pytest.approx(s)
    saved = read_image(tmp_path / "o" / "x.png")
    assert saved.dtype == np.uint16 and np.array_equal(saved, deg16)


def test_16_bit_targets_are_rounded_to_8_bits_not_cut_to_their_high_byte():
    """docs/METHOD.md §4: a 16-bit target is scored as round(v * 255 / 65535) (training's high byte, v >> 8,
    differs by a level on many values). The end-to-end 16-bit test's targets are k * 257, where both agree."""
    v = np.arange(65536, dtype=np.uint16).reshape(256, 256, 1).repeat(3, axis=2)
    want = np.floor(v / 65535.0 * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(protocol_module.to_8bit(v), want)
    assert (want != (v >> 8)).mean() > 0.2  # the two rules differ on about a quarter of the values
    u8 = want.copy()
    assert protocol_module.to_8bit(u8) is u8  # 8-bit images as they are


def test_plain_and_reference_checkpoints(bench, tmp_path):
    torch.manual_seed(1)
    model = build_model("Restormer", "tiny")
    torch.nn.init.zeros_(model.output.weight)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    args = ["--degset", bench / "jpeg" / "input", "--tarset", bench / "jpeg" / "target", "--no-images"]
    res = run("--model", tmp_path / "plain.pth", "--backbone", "Restormer", "--preset", "tiny", *args,
              "--save", tmp_path / "r1")
    assert res["protocol"]["backbone"] == "Restormer" and res["protocol"]["model_config"]["dim"] == 16
    expected = direct_metrics(bench / "jpeg" / "input", bench / "jpeg" / "target", "reference", "rgb")
    assert res["tasks"]["input"]["psnr"] == pytest.approx(np.mean([v[0] for v in expected.values()]), abs=1e-12)
    # The reference's format: a whole pickled module under 'BaryIR' (read without running code).
    bary = build_model("BaryNet", "tiny")
    torch.nn.init.zeros_(bary.output.weight)
    torch.save({"epoch": 3, "BaryIR": bary}, tmp_path / "ref.pth")
    ref = run("--model", tmp_path / "ref.pth", "--preset", "tiny", *args, "--save", tmp_path / "r2")
    assert ref["tasks"]["input"]["psnr"] == pytest.approx(res["tasks"]["input"]["psnr"], abs=1e-12)
    # Wrong configuration: the loader's error names the fix.
    with pytest.raises(CheckpointError, match="--preset"):
        run("--model", tmp_path / "ref.pth", *args, "--save", tmp_path / "r3")


@pytest.mark.parametrize("backbone, flag", [("PromptIR", "BaryNet"), ("BaryPromptIR", "Restormer")])
def test_a_prompt_checkpoint_given_another_backbone_is_told_to_drop_the_flag(tmp_path, backbone, flag):
    """A PromptIR (or BaryPromptIR) run's checkpoint with --backbone BaryNet was refused as a model_config with
    'unknown key(s) prompt_dims, ...; fix the configuration (or pick a --preset)', advice that leads nowhere
    (--preset is ignored for such a file); the other directions said to drop --backbone."""
    from net.presets import model_config
    torch.save({"model": build_model(backbone, "tiny").state_dict(), "model_config": model_config("tiny",
                backbone=backbone), "backbone": backbone, "epoch": 1}, tmp_path / "epoch_001.pth")
    (tmp_path / "in").mkdir()
    write_photos(tmp_path / "in", ["a.png"])
    said = rf"^--backbone {flag}: .*epoch_001.pth names its own network and configuration \({backbone}\), and is " \
           rf"built from them: drop --backbone$"
    with pytest.raises(CheckpointError, match=said):
        run("--model", tmp_path / "epoch_001.pth", "--backbone", flag, "--input", tmp_path / "in", "--save",
            tmp_path / "o")


@pytest.mark.parametrize("flags, said", [
    (["--backbone", "Restormer"], r"--backbone Restormer: .*zero.pth names its own network and configuration "
                                  r"\(BaryNet\), and is built from them: drop --backbone$"),
    (["--dim", "32", "--heads", "1", "2", "4", "8"], r"--dim 32: .* \(BaryNet, dim 16\), .*: drop --dim$"),
    (["--backbone", "PromptIR", "--num-blocks", "2", "2", "2", "2"],
     r"--backbone PromptIR --num-blocks 2 2 2 2: .* \(BaryNet, num blocks 1 1 1 2\).*: drop --backbone --num-blocks$")])
def test_model_flags_a_trainer_checkpoint_contradicts_are_named_to_drop(checkpoint, tmp_path, flags, said):
    """--backbone Restormer on a BaryNet run's checkpoint failed on the weights' shapes with 'Pick the matching
    --backbone and --preset': the file names its network, so the fix is to drop the flag."""
    (tmp_path / "in").mkdir()
    write_photos(tmp_path / "in", ["a.png"])
    with pytest.raises(CheckpointError, match=said):
        run("--model", checkpoint, "--input", tmp_path / "in", "--save", tmp_path / "o", *flags)
    assert not (tmp_path / "o").exists()
    # flags that agree with the file are fine
    run("--model", checkpoint, "--backbone", "BaryNet", "--dim", "16", "--input", tmp_path / "in", "--save",
        tmp_path / "o", "--dry-run")


def test_model_may_be_a_run_folder_or_its_latest_pointer(bench, checkpoint, tmp_path, capsys):
    """--model names what the trainer writes: a file, the run's folder, or its 'latest' pointer; a
    checkpoint's own configuration wins over --preset (which would otherwise fail on every shape)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(checkpoint, run_dir / "epoch_002.pth")
    (run_dir / "latest").write_text('{"checkpoint": "epoch_002.pth"}')
    args = ["--degset", bench / "jpeg" / "input", "--tarset", bench / "jpeg" / "target", "--no-images"]
    direct = run("--model", checkpoint, *args, "--save", tmp_path / "a")["tasks"]["input"]["psnr"]
    for given, said in ((run_dir, "is a folder: using its newest checkpoint"), (run_dir / "latest", "points to")):
        res = run("--model", given, *args, "--save", tmp_path / "b")
        assert res["protocol"]["model"] == str(run_dir / "epoch_002.pth") and said in capsys.readouterr().out
        assert res["tasks"]["input"]["psnr"] == direct
    res = run("--model", checkpoint, "--preset", "paper", *args, "--save", tmp_path / "c")
    assert res["protocol"]["model_config"]["dim"] == 16 and res["tasks"]["input"]["psnr"] == direct
    assert "--preset paper ignored" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        run("--model", tmp_path / "empty", *args, "--save", tmp_path / "d")


def test_compare_paper_that_no_row_can_fill_is_warned_before_the_run(bench, checkpoint, tmp_path, capsys):
    """--compare-paper with --degset/--tarset (a row named after its folder, 'input') scored Rain100L and then
    printed every column 'not evaluated', with no word why: it is now said at the start, with the fix."""
    args = ["--model", checkpoint, "--no-images", "--compare-paper", "3d", "--dry-run"]
    rain = bench / "derain" / "Rain100L"
    run(*args, "--degset", rain / "input", "--tarset", rain / "target", "--save", tmp_path / "a")
    err = capsys.readouterr().err
    assert "warning: --compare-paper 3d: no row of this run (rows: input) fills a column of the paper's 3D table" in err
    assert "evaluate with --data-root DIR --tasks ..." in err
    run(*args, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "b")
    assert "--compare-paper" not in capsys.readouterr().err


def test_compare_paper_with_rows_only_the_other_setting_has_says_so(checkpoint, tmp_path, capsys):
    """--tasks denoise_15 --compare-paper 5d (BSD68 σ15 is a 3D column) printed no warning, then a 5D table of five
    'not evaluated' columns, with the row it had scored nowhere in it; with rows of both settings (derain deblur
    --compare-paper 3d) GoPro's row was dropped from the table without a word. Both now say which rows only the
    other setting's table has, with its flag, at the start and under the table."""
    write_image(tmp_path / "data" / "denoise" / "bsd68" / "cat.png", clean_images()["cat"])
    args = ["--model", checkpoint, "--no-images", "--dry-run", "--data-root", tmp_path / "data"]
    run(*args, "--tasks", "denoise_15", "--compare-paper", "5d", "--save", tmp_path / "a")
    err = capsys.readouterr().err
    assert "warning: --compare-paper 5d: no row of this run (rows: denoise_15/bsd68) fills a column of the paper's " \
        "5D table" in err
    assert "denoise_15/bsd68 (BSD68 σ15) has a number only in the 3D table: --compare-paper 3d" in err
    run(*args, "--tasks", "denoise_15", "--compare-paper", "3d", "--save", tmp_path / "b")
    assert "--compare-paper" not in capsys.readouterr().err
    row = {"count": 100, "psnr": 30.0, "ssim": 0.9}
    lines = comparison_lines({"derain": row, "deblur/GoPro": {**row, "count": 1111}}, "3d")
    assert "Left out, having a number only in the 5D table (--compare-paper 5d): deblur/GoPro (GoPro)." in lines
    assert not any("Left out" in line for line in comparison_lines({"derain": row}, "3d"))


def test_compare_paper_names_no_table_for_a_noise_level_no_table_has(checkpoint, tmp_path, capsys):
    """--tasks denoise_75 (the study's unseen noise) --compare-paper 3d warned "denoise_75/bsd68 (BSD68 σ75) has a
    number only in the  table: " (no table has one), and results.md said it, and a BSD68 σ15 row beside it in 5D,
    had "a number only in the other table", without --compare-paper 3d. A σ75 row is now no paper set's, as any
    other set's row: not named under the table, and alone it gets the warning that no row fills a column."""
    write_image(tmp_path / "data" / "denoise" / "bsd68" / "cat.png", clean_images()["cat"])
    args = ["--model", checkpoint, "--no-images", "--dry-run", "--data-root", tmp_path / "data"]
    run(*args, "--tasks", "denoise_75", "--compare-paper", "3d", "--save", tmp_path / "a")
    err = capsys.readouterr().err
    assert "warning: --compare-paper 3d: no row of this run (rows: denoise_75/bsd68) fills a column of the paper's " \
        "3D table" in err and "only in the" not in err
    run(*args, "--tasks", "denoise_75", "denoise_15", "--compare-paper", "5d", "--save", tmp_path / "b")
    err = capsys.readouterr().err
    assert "; denoise_15/bsd68 (BSD68 σ15) has a number only in the 3D table: --compare-paper 3d" in err
    assert "σ75" not in err
    row = {"count": 68, "psnr": 25.0, "ssim": 0.7}
    assert not any("Left out" in line for line in comparison_lines({"denoise_75/bsd68": row}, "3d"))
    lines = comparison_lines({"denoise_75/bsd68": row, "denoise_15/bsd68": row}, "5d")
    assert lines[-1] == "Left out, having a number only in the 3D table (--compare-paper 3d): denoise_15/bsd68 " \
        "(BSD68 σ15)."


def test_compare_paper_prints_the_published_columns(bench, checkpoint, tmp_path, capsys):
    res = run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "dehaze", "--no-images",
              "--save", tmp_path / "res", "--compare-paper", "3d")
    printed = capsys.readouterr().out
    assert "Against the published BaryIR 3D results:" in printed
    rain = res["tasks"]["derain/Rain100L"]
    assert f"| Rain100L | derain/Rain100L (not comparable: 3 of the paper's 100 images) | {rain['psnr']:.2f}/" \
           f"{rain['ssim']:.3f} | 39.02/0.985 | {rain['psnr'] - 39.02:+.2f} |" in printed
    assert "| BSD68 σ15 | (not evaluated) |" in printed and res["paper_average"] == {}
    assert "Against the published" in (tmp_path / "res" / "results.md").read_text()


def test_compare_paper_says_when_the_checkpoint_was_trained_on_another_setting(bench, tmp_path, capsys):
    """A checkpoint recording domains ['denoise', 'derain', 'dehaze'] (3D) compared with --compare-paper 5d, a 5D one
    with 3d, or a single K=1 one, was set beside the published numbers without a word: a note now says which
    families it was trained on and which setting it is compared with, on the screen, in results.md and .json.
    A checkpoint recording none (a reference one, a plain state dict) and one of the compared setting get none."""
    model = build_model("BaryNet", "tiny")
    torch.nn.init.zeros_(model.output.weight)
    five = ["denoise", "derain", "dehaze", "deblur", "lowlight"]
    for name, domains, setting, said in (("3d.pth", five[:3], "5d", "denoise, derain, dehaze (the 3D setting)"),
                                         ("5d.pth", five, "3d", ", ".join(five) + " (the 5D setting)"),
                                         ("single.pth", ["single"], "5d", "single (K=1 degradation family)"),
                                         ("same.pth", five[:3], "3d", None), ("none.pth", None, "5d", None)):
        path = tmp_path / name
        torch.save({"model": model.state_dict(), "model_config": model_config("tiny"), "backbone": "BaryNet",
                    **({"domains": domains} if domains else {})}, path)
        res = run("--model", path, "--data-root", bench, "--tasks", "derain", "--no-images", "--compare-paper",
                  setting, "--save", tmp_path / name.removesuffix(".pth"))
        printed = capsys.readouterr().out
        md = (tmp_path / name.removesuffix(".pth") / "results.md").read_text()
        if said is None:
            assert "compare_paper_note" not in res and "Note: this checkpoint" not in printed + md
            continue
        compared = ", ".join(five[:3] if setting == "3d" else five)
        note = (f"this checkpoint was trained on {said}, not on the {setting.upper()} setting's {compared}: the "
                f"published {setting.upper()} numbers are of a model trained otherwise, so the differences measure "
                f"the training as well as the method")
        assert res["compare_paper_note"] == note and res["protocol"]["domains"] == domains
        table = f"Against the published BaryIR {setting.upper()} results:\n\nNote: {note}.\n\n| Column |"
        assert table in printed and table in md
        assert json.loads((tmp_path / name.removesuffix(".pth") / "results.json").read_text())[
            "compare_paper_note"] == note


# --------------------------------------------------------------------------- errors

def test_a_task_folder_with_one_of_its_two_folders_gets_the_check_datas_fix(checkpoint, tmp_path):
    """A half-present test folder stopped the tester with no fix ('degraded folder does not exist: R/lowlight/low',
    'target folder does not exist: R/deblur/target') while --check-data gave one: the error is now the doctor's
    own line, fix included, for a set one level deeper too."""
    from utils.data import doctor
    img = clean_images()["cat"]
    write_image(tmp_path / "R" / "lowlight" / "high" / "1.png", img)
    write_image(tmp_path / "R" / "deblur" / "input" / "GOPR0.png", img)
    write_image(tmp_path / "R" / "derain" / "Rain100L" / "norain" / "norain-1.png", img)  # a download's name
    write_image(tmp_path / "R" / "derain" / "Rain100L" / "input" / "rain-1.png", img)
    for task in ("lowlight", "deblur", "derain"):
        [row] = doctor.check_test_data(tmp_path / "R", [task]).sets
        [problem] = [p for p in row.errors if p.kind == "missing folder"]
        assert problem.fix.startswith(("put the ", "rename "))
        with pytest.raises(PairingError) as exc:
            run("--model", checkpoint, "--data-root", tmp_path / "R", "--tasks", task, "--save", tmp_path / "o")
        assert str(exc.value) == f"--tasks {task}: {problem.line()}"
    assert problem.line() == (f"{tmp_path / 'R/derain/Rain100L/target'}/ does not exist (target images). Fix: "
                              f"rename {tmp_path / 'R/derain/Rain100L/norain'}/ to "
                              f"{tmp_path / 'R/derain/Rain100L/target'}/")
    assert not (tmp_path / "o").exists()


def test_a_missing_folder_named_by_no_flag_is_said_with_its_fix(tmp_path):
    """paired_set (and match_pairs) with no flag to name said 'degraded folder does not exist: PATH' and no fix."""
    write_image(tmp_path / "t" / "a.png", clean_images()["cat"])
    with pytest.raises(PairingError, match=re.escape(f"the degraded folder {tmp_path / 'd'} does not exist: put the "
                                                     f"degraded images there, or pass the folder that holds them")):
        paired_set("x", tmp_path / "d", tmp_path / "t")


def test_the_single_family_is_tested_in_the_folders_it_is_trained_from(checkpoint, tmp_path):
    """README's training layout for a user's own degradation is single/{degraded,target}; --tasks single read
    single/{input,target} and stopped with 'degraded folder does not exist: R/single/input'. It now reads the
    training layout, and a single/input/ gets the rename as its fix."""
    clean = clean_images()
    for k, (name, img) in enumerate(clean.items()):
        write_image(tmp_path / "R" / "single" / "degraded" / f"{name}.png", degrade(img, k))
        write_image(tmp_path / "R" / "single" / "target" / f"{name}.png", img)
    res = run("--model", checkpoint, "--data-root", tmp_path / "R", "--tasks", "single", "--no-images",
              "--save", tmp_path / "o")
    assert list(res["tasks"]) == ["single"] and res["tasks"]["single"]["count"] == 3
    (tmp_path / "R" / "single" / "degraded").rename(tmp_path / "R" / "single" / "input")
    single = tmp_path / "R" / "single"
    with pytest.raises(PairingError, match=re.escape(f"--tasks single: {single / 'degraded'}/ does not exist "
                                                     f"(degraded images). Fix: rename {single / 'input'}/ to "
                                                     f"{single / 'degraded'}/")):
        run("--model", checkpoint, "--data-root", tmp_path / "R", "--tasks", "single", "--save", tmp_path / "o2")


def test_swapped_rain_folders_are_refused_not_scored(checkpoint, tmp_path):
    """--degset and --tarset the wrong way round (norain-N degraded, rain-N targets) paired, since the name rule is
    symmetric, and the tester scored the restoration of the clean images against the rainy ones without a word."""
    from utils.data import doctor
    photo = data.astronaut()[:64, :64]
    for folder, prefix in (("input", "rain"), ("target", "norain")):
        for n in (1, 2):
            write_image(tmp_path / folder / f"{prefix}-{n}.png", photo)
    assert len(match_pairs(tmp_path / "input", tmp_path / "target")[0]) == 2
    with pytest.raises(PairingError, match="look swapped"):
        match_pairs(tmp_path / "target", tmp_path / "input")
    with pytest.raises(UserError, match=r"degraded folder \S*target holds norain-N images .* look swapped"):
        run("--model", checkpoint, "--degset", tmp_path / "target", "--tarset", tmp_path / "input",
            "--save", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    row, _ = doctor.check_paired_set("t", tmp_path / "target", tmp_path / "input")  # --check-data: said as such
    assert [(p.kind, p.fix) for p in row.problems] == [
        ("swapped folders", f"swap {tmp_path / 'target'} and {tmp_path / 'input'}")]
    write_image(tmp_path / "target" / "rain-3.png", photo)  # one degraded file of the degraded kind: no guess made
    write_image(tmp_path / "input" / "norain-3.png", photo)
    assert len(match_pairs(tmp_path / "target", tmp_path / "input")[0]) == 3


def test_unpaired_files_are_listed_or_skipped(checkpoint, tmp_path):
    deg, tar = pair_dirs(tmp_path, ["a.png", "b.png", "lonely.png"], ["a.png", "b.png"])
    with pytest.raises(PairingError, match="lonely.png") as err:
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    assert "--skip-unpaired" in str(err.value) and "\n" not in str(err.value)  # one error line
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--skip-unpaired")
    assert res["tasks"]["deg"]["count"] == 2 and res["tasks"]["deg"]["skipped"] == 1


def test_size_mismatch_is_listed_or_skipped(checkpoint, tmp_path):
    deg, tar = pair_dirs(tmp_path, ["a.png", "small.png"], ["a.png", "small.png"],
                          size_of=lambda n: (H - 3, W) if n == "small.png" else (H, W))
    with pytest.raises(PairingError, match=r"small.png 41x61 vs target small.png 44x61") as err:
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    assert "\n" not in str(err.value)  # one error line
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--skip-unpaired")
    assert res["tasks"]["deg"]["count"] == 1 and "size mismatch" in res["tasks"]["deg"]["skipped_files"][0]


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_image_is_named(checkpoint, tmp_path, how):
    deg, tar = pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    raw = (deg / "b.png").read_bytes()
    (deg / "b.png").write_bytes(b"\x00garbage" * 20 if how == "garbage" else raw[: len(raw) // 2])
    # Garbage has no header: found while pairing, before anything runs; a truncated file stops the run.
    stops = ImageReadError if how == "garbage" else tester_bary.RunStopped
    with pytest.raises(stops, match="b.png") as err:
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    if how == "truncated":
        assert isinstance(err.value.__cause__.__cause__, ImageReadError)  # RunStopped <- EvaluationStopped <- read


def test_empty_folders_and_missing_things(bench, checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    _, tar = pair_dirs(tmp_path, [], ["a.png"])
    with pytest.raises(PairingError, match="no images in the degraded folder") as err:
        run("--model", checkpoint, "--degset", tmp_path / "empty", "--tarset", tar, "--save", tmp_path / "o")
    assert "subfolders" not in str(err.value)
    write_image(tmp_path / "empty" / "Rain100L" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(PairingError, match=r"no images in the degraded folder .*: .*empty has 1 image in its "
                                           r"subfolders \(Rain100L/ 1\), and only those directly in it are read"):
        run("--model", checkpoint, "--degset", tmp_path / "empty", "--tarset", tar, "--save", tmp_path / "o")
    with pytest.raises(PairingError, match="deblur"):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "deblur", "--save", tmp_path / "o")
    (tmp_path / "root" / "denoise" / "set").mkdir(parents=True)
    with pytest.raises(PairingError, match="no clean images"):
        run("--model", checkpoint, "--data-root", tmp_path / "root", "--tasks", "denoise_50", "--save", tmp_path / "o")
    with pytest.raises(ImageReadError, match="no images"):
        run("--model", checkpoint, "--input", tmp_path / "empty", "--save", tmp_path / "o")
    # a folder that is not there is named by its flag (it was "degraded folder does not exist: /nope")
    with pytest.raises(PairingError, match=r"^--tarset .*nope: no such folder \(the target images' folder\); check"):
        run("--model", checkpoint, "--degset", tar, "--tarset", tmp_path / "nope", "--save", tmp_path / "o")
    # a file where a folder belongs was "degraded folder does not exist", a pipe "--input ... does not exist"
    with pytest.raises(PairingError, match=r"the degraded folder .*a.png is a file, not a folder: pass the folder"):
        run("--model", checkpoint, "--degset", tar / "a.png", "--tarset", tar, "--save", tmp_path / "o")
    with pytest.raises(PairingError, match=r"--data-root .*a.png is a file, not a folder"):
        run("--model", checkpoint, "--data-root", tar / "a.png", "--tasks", "derain", "--save", tmp_path / "o")
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageReadError, match=r"--input .*pipe.png is neither an image file nor a folder"):
        run("--model", checkpoint, "--input", tmp_path / "pipe.png", "--save", tmp_path / "o")
    with pytest.raises(CheckpointError, match="not found"):
        run("--model", tmp_path / "nope.pth", "--degset", bench / "jpeg" / "input", "--tarset",
            bench / "jpeg" / "target", "--save", tmp_path / "o")
    (tmp_path / "root3").mkdir()  # --tasks all with nothing there named no fix
    with pytest.raises(PairingError, match=r"--tasks all: none of .* is under .*root3: put the benchmarks there.*"
                                           r"or point --data-root at them"):
        run("--model", checkpoint, "--data-root", tmp_path / "root3", "--tasks", "all", "--save", tmp_path / "o")
    with pytest.raises(tester_bary.UsageError):  # no mode chosen and no paper task under --data-root
        run("--model", checkpoint, "--data-root", tmp_path / "root2", "--save", tmp_path / "o")
    with pytest.raises(tester_bary.UsageError):  # two modes
        run("--model", checkpoint, "--tasks", "jpeg", "--input", tmp_path / "empty", "--save", tmp_path / "o")


# --------------------------------------------------------------------------- no arguments, as the reference

def test_no_arguments_uses_the_newest_checkpoint_and_the_tasks_present(bench, checkpoint, tmp_path):
    for sub in ("input", "target"):  # data/test/derain/Rain100L/{input,target}, 2 pairs
        for f in sorted((bench / "derain" / "Rain100L" / sub).iterdir())[:2]:
            write_image(tmp_path / "data" / "test" / "derain" / "Rain100L" / sub / f.name, read_image(f))
    ck = tmp_path / "checkpoint"
    (ck / "old").mkdir(parents=True)
    (ck / "old" / "model.pth").write_bytes(b"not a checkpoint")  # older than the newest
    os.utime(ck / "old" / "model.pth", (1e9, 1e9))
    (ck / "demo").mkdir()
    (ck / "demo" / "epoch_002.pth").write_bytes(b"not a checkpoint")  # not the one `latest` names
    (ck / "demo" / "epoch_001.pth").write_bytes(checkpoint.read_bytes())
    (ck / "demo" / "latest").write_text(json.dumps({"checkpoint": "epoch_001.pth"}))
    done = run_tester_in(tmp_path, "--no-progress")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "=> no --model given: using checkpoint/demo/epoch_001.pth (newest under checkpoint/)" in lines
    assert "=> no --tasks given: evaluating the paper tasks present under data/test: derain" in lines
    saved = json.loads((tmp_path / "results" / "test" / "results.json").read_text())
    expected = direct_metrics(tmp_path / "data" / "test" / "derain" / "Rain100L" / "input",
                              tmp_path / "data" / "test" / "derain" / "Rain100L" / "target", "reference", "rgb")
    assert list(saved["tasks"]) == ["derain/Rain100L"] and saved["tasks"]["derain/Rain100L"]["count"] == 2
    assert saved["tasks"]["derain/Rain100L"]["psnr"] == pytest.approx(np.mean([v[0] for v in expected.values()]))
    assert saved["protocol"]["model"] == "checkpoint/demo/epoch_001.pth"


def test_no_arguments_prefers_the_authors_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tester_bary.default_model() == (None, "")
    (tmp_path / "checkpoint" / "run").mkdir(parents=True)
    (tmp_path / "checkpoint" / "run" / "epoch_009.pth").write_bytes(b"x")
    assert tester_bary.default_model()[0] == Path("checkpoint/run/epoch_009.pth")
    (tmp_path / "checkpoint" / "model_allBaryNet__61_1.0_5D.pt").write_bytes(b"x")
    os.utime(tmp_path / "checkpoint" / "model_allBaryNet__61_1.0_5D.pt", (1e9, 1e9))  # older, still first
    path, why = tester_bary.default_model()
    assert path == Path("checkpoint/model_allBaryNet__61_1.0_5D.pt") and "reference" in why


def test_no_arguments_never_takes_a_run_set_aside(tmp_path, monkeypatch):
    """The newest checkpoint by time under checkpoint/ could be one the trainer had set aside (abandoned.before-*
    holds the checkpoints past a resumed one, newer than it until the resumed run saves)."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "checkpoint" / "run"
    (run / "abandoned.before-20261130-101010").mkdir(parents=True)
    (run / "epoch_001.pth").write_bytes(b"x")
    (run / "latest").write_text(json.dumps({"checkpoint": "epoch_001.pth"}))
    os.utime(run / "epoch_001.pth", (1e9, 1e9))
    (run / "abandoned.before-20261130-101010" / "epoch_002.pth").write_bytes(b"x")  # newer
    (run / "abandoned.before-20261130-101010" / "latest").write_text(json.dumps({"checkpoint": "epoch_002.pth"}))
    assert tester_bary.default_model()[0] == Path("checkpoint/run/epoch_001.pth")


def test_no_arguments_without_a_checkpoint_or_data_is_a_one_line_error(checkpoint, tmp_path):
    done = run_tester_in(tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: no --model given and no checkpoint under checkpoint/ — put the authors' "
        "model_allBaryNet__61_1.0_5D.pt there, train one with trainer_bary.py, or pass --model PATH (a checkpoint "
        "file or a run's output folder)"]
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "epoch_001.pth").write_bytes(checkpoint.read_bytes())
    (tmp_path / "data" / "test").mkdir(parents=True)
    done = run_tester_in(tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "=> no --model given: using checkpoint/epoch_001.pth" in done.stdout
    [line] = done.stderr.splitlines()
    assert line.startswith("error: no test data found under data/test/")
    for where in ("data/test/derain/Rain100L/{input,target}", "data/test/dehaze/{input,target}",
                  "data/test/denoise/bsd68", "data/test/lowlight/{low,high}", "--data-root"):
        assert where in line


def test_out_of_memory_suggests_tiling(bench, checkpoint, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(protocol_module, "restore", oom)
    with pytest.raises(tester_bary.RunStopped, match="--tile 512 --tile-overlap 32"):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", tmp_path / "o")

    def cpu_oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(protocol_module, "restore_tiled", cpu_oom)
    with pytest.raises(tester_bary.RunStopped, match="smaller --tile") as err:
        run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", tmp_path / "o", "--tile", "64")
    assert isinstance(err.value.__cause__.__cause__, RestoreOutOfMemory)




# --------------------------------------------------------------------------- scoring of non-identity outputs

class _FixedOutput(torch.nn.Module):
    """A 'network' that returns a fixed float image whatever its input (one parameter, so it has a device)."""

    def __init__(self, out):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.out = torch.as_tensor(out).permute(2, 0, 1)[None]

    def forward(self, x):
        return self.out.expand(x.shape[0], -1, -1, -1) + 0 * self.anchor


def _skimage_scores(a, b):
    return (peak_signal_noise_ratio(b, a, data_range=255), structural_similarity(b, a, data_range=255, channel_axis=2))


def test_an_output_is_scored_as_save_image_quantises_it_and_the_input_column_scores_the_input(tmp_path):
    """The zero model returns its input exactly, so no test saw how a real output is quantised before scoring: as
    torchvision's save_image (x*255 + 0.5, clamped, truncated: exact ties round up, values out of [0, 1] clamp,
    not wrap). The degraded column must score the degraded image, not the output."""
    rng = np.random.default_rng(3)
    tar = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    deg = np.clip(tar.astype(int) + rng.integers(-30, 31, tar.shape), 0, 255).astype(np.uint8)
    out = rng.uniform(-0.3, 1.3, tar.shape).astype(np.float32)  # a fifth of it outside [0, 1]
    ties = [np.float32(np.float32(k + 0.5) / np.float32(255)) for k in range(0, 255, 2)]  # even k: half-to-even differs
    ties = [t if np.float32(t * np.float32(255)) == k + 0.5 else np.nextafter(t, np.float32(1))
            for k, t in zip(range(0, 255, 2), ties)]
    out.reshape(-1)[:len(ties)] = ties
    assert all(np.float32(t * np.float32(255)) % 1 == 0.5 for t in ties)
    write_image(tmp_path / "d" / "x.png", deg)
    write_image(tmp_path / "t" / "x.png", tar)
    row = evaluate_set(_FixedOutput(out), paired_set("x", tmp_path / "d", tmp_path / "t"), protocol_module.Protocol(),
                       torch.device("cpu"), progress=False)
    # torchvision.utils.save_image's rule, written out with torch
    out8 = torch.from_numpy(out).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
    assert out8.reshape(-1)[0] == 1 and out8.min() == 0 and out8.max() == 255
    p, s = _skimage_scores(out8, tar)
    assert row["psnr"] == pytest.approx(p, abs=1e-12) and row["ssim"] == pytest.approx(s, abs=1e-12)
    p_in, s_in = _skimage_scores(deg, tar)
    assert row["input_psnr"] == pytest.approx(p_in, abs=1e-12) and row["input_ssim"] == pytest.approx(s_in, abs=1e-12)


class _Identity(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x + 0 * self.anchor


def test_the_default_protocol_is_the_papers_and_the_noise_seed_reaches_the_noisy_inputs(tmp_path):
    """Protocol() (training's validation, the study, the demo; not the tester's flags) must score as the paper:
    crop to multiples of 8, RGB, skimage SSIM, no border crop, noise seeded by crc32('0:<name>:<sigma>'); and
    --noise-seed N must change those seeds to crc32('N:<name>:<sigma>') (a run said it used seed N, and did not)."""
    clean = data.astronaut()[100:121, 200:219]  # 21x19: cropped to 16x16
    write_image(tmp_path / "denoise" / "s" / "a.png", clean)
    sets = find_task_sets(["denoise_25"], tmp_path)
    for protocol, seed in ((None, 0), (protocol_module.Protocol(noise_seed=7), 7)):
        res = evaluate_sets(_Identity(), sets, protocol, "cpu", progress=False)
        c = clean[:16, :16]
        rng = np.random.default_rng(zlib.crc32(f"{seed}:a.png:25".encode()))
        noisy = np.clip(c + 25 * rng.standard_normal(c.shape), 0, 255).astype(np.uint8)
        p, s = _skimage_scores(noisy, c)
        row = res["tasks"]["denoise_25/s"]
        assert row["psnr"] == pytest.approx(p, abs=1e-12) and row["ssim"] == pytest.approx(s, abs=1e-12), seed


def test_lowlight_degraded_images_are_low_and_targets_high(tmp_path):
    """LOL's layout is lowlight/{low,high}: swapping the two scores the network on restoring the bright image."""
    for folder in ("low", "high"):
        write_image(tmp_path / "lowlight" / folder / "1.png", np.zeros((8, 8, 3), np.uint8))
    (s,) = find_task_sets(["lowlight"], tmp_path)
    assert s.items[0].degraded == tmp_path / "lowlight" / "low" / "1.png"
    assert s.items[0].target == tmp_path / "lowlight" / "high" / "1.png"


def test_best_and_worst_images_are_named_by_their_own_scores(tmp_path):
    """The row's best/worst PSNR and SSIM (printed like the reference's 'best'/'worst') name the image they score."""
    clean = data.astronaut()[100:124, 200:224]
    rng = np.random.default_rng(0)
    for name, sd in (("a.png", 20), ("b.png", 2), ("c.png", 8)):
        write_image(tmp_path / "d" / name, np.clip(clean + rng.normal(0, sd, clean.shape), 0, 255).astype(np.uint8))
        write_image(tmp_path / "t" / name, clean)
    row = evaluate_set(_Identity(), paired_set("x", tmp_path / "d", tmp_path / "t"), protocol_module.Protocol(),
                       torch.device("cpu"), progress=False)
    scores = {n: _skimage_scores(read_image(tmp_path / "d" / n), clean) for n in ("a.png", "b.png", "c.png")}
    assert row["best_psnr"] == {"name": "b.png", "psnr": pytest.approx(scores["b.png"][0], abs=1e-12)}
    assert row["worst_psnr"] == {"name": "a.png", "psnr": pytest.approx(scores["a.png"][0], abs=1e-12)}
    assert row["best_ssim"]["name"] == max(scores, key=lambda n: scores[n][1])
    assert row["worst_ssim"]["name"] == min(scores, key=lambda n: scores[n][1])


def test_two_rows_whose_figure_names_meet_each_keep_their_figure(tmp_path):
    """--figs named a row's figure after the row with '/' as '_': the set derain/demo and a task derain_demo both
    drew derain_demo.png, and the second replaced the first with nothing said. The second is now _2."""
    from utils.eval.outputs import figure_names
    assert figure_names(["derain/demo", "derain_demo", "Derain_Demo", "dehaze"]) == [
        "derain_demo.png", "derain_demo_2.png", "Derain_Demo_3.png", "dehaze.png"]
    clean = data.astronaut()[100:124, 200:224]
    for folder in ("d", "t"):
        write_image(tmp_path / folder / "a.png", clean)
    sets = [paired_set(name, tmp_path / "d", tmp_path / "t") for name in ("derain/demo", "derain_demo")]
    res = evaluate_sets(_Identity(), sets, protocol_module.Protocol(), "cpu", figs_dir=tmp_path / "figs",
                        fig_images=1, progress=False)
    assert [res["tasks"][s.name]["figure"] for s in sets] == [str(tmp_path / "figs" / "derain_demo.png"),
                                                             str(tmp_path / "figs" / "derain_demo_2.png")]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["derain_demo.png", "derain_demo_2.png"]


def test_images_identical_to_their_target_are_said_to_score_the_cap(tmp_path):
    """An image identical to its target (a degraded copy, a denoise_0 task) scores the 100 dB cap, which the row's
    mean includes: a set of one noisy and one identical pair read 63.5 dB, with nothing saying why. The note under
    the table names them, for the restored and the degraded column alike."""
    clean = data.astronaut()[100:124, 200:224]
    write_image(tmp_path / "d" / "same.png", clean)
    write_image(tmp_path / "t" / "same.png", clean)
    write_image(tmp_path / "d" / "noisy.png", np.clip(clean.astype(int) + 9, 0, 255).astype(np.uint8))
    write_image(tmp_path / "t" / "noisy.png", clean)
    row = evaluate_set(_Identity(), paired_set("x", tmp_path / "d", tmp_path / "t"), protocol_module.Protocol(),
                       torch.device("cpu"), progress=False)
    printed = summary_table({"tasks": {"x": row}, "average": average_row({"x": row})})
    for what in ("restored", "degraded"):
        assert (f"Identical to the target (x, {what}): 1 image (same.png) score 100 dB, the cap for an infinite "
                f"PSNR, which the row's mean PSNR includes") in printed
    row["images"] = [i for i in row["images"] if i["name"] == "noisy.png"]
    assert "Identical to the target" not in summary_table({"tasks": {"x": row}, "average": average_row({"x": row})})


def test_tasks_all_finds_every_paper_task_present_in_the_papers_order(tmp_path):
    """--tasks all (the tester without arguments, the study) must find deblur (GoPro) and lowlight (LOL): a task
    missing from the list silently drops a 5D column."""
    img = np.zeros((8, 8, 3), np.uint8)
    for deg, tar in (("deblur/input", "deblur/target"), ("lowlight/low", "lowlight/high"),
                     ("derain/Rain100L/input", "derain/Rain100L/target"), ("dehaze/input", "dehaze/target")):
        write_image(tmp_path / deg / "1.png", img)
        write_image(tmp_path / tar / "1.png", img)
    write_image(tmp_path / "denoise" / "bsd68" / "1.png", img)
    names = [s.name for s in find_task_sets(["all"], tmp_path)]
    assert names == ["denoise_15/bsd68", "denoise_25/bsd68", "denoise_50/bsd68", "derain/Rain100L", "dehaze",
                     "deblur", "lowlight"]


def test_the_testers_scoring_flags_left_out_are_the_protocols_defaults():
    """tester_bary.py without scoring or tiling flags scores as Protocol() does (the trainer's validation, the demo,
    the study): a flag default drifting from it (--tile-overlap 16) changed tiled numbers with nothing said."""
    from utils.eval.protocol import protocol_from_args
    assert protocol_from_args(tester_bary.get_args_parser().parse_args([])) == protocol_module.Protocol()


def test_the_table_cells_sit_under_their_headings_rounded_as_the_paper():
    """Each value of a row is printed under its own heading, PSNR to 2 and SSIM to 4 decimals: best and worst
    swapped, or a PSNR of 31.2 for 31.23, would have misreported every run."""
    row = {"count": 2, "psnr": 31.23456, "ssim": 0.912345, "input_psnr": 25.5, "input_ssim": 0.80001,
           "best_psnr": {"name": "a.png", "psnr": 32.0}, "worst_psnr": {"name": "b.png", "psnr": 30.46912},
           "best_ssim": {"name": "b.png", "ssim": 0.93}, "worst_ssim": {"name": "a.png", "ssim": 0.89469},
           "seconds_per_image": 0.25, "skipped": 1, "images": []}
    lines = summary_table({"tasks": {"myset": row}, "average": average_row({"myset": row})}).splitlines()
    assert dict(zip(cells(lines[0]), cells(lines[2]))) == {
        "Task": "myset", "Images": "2", "Degraded PSNR": "25.50", "Degraded SSIM": "0.8000", "PSNR": "31.23",
        "SSIM": "0.9123", "Best PSNR": "32.00", "Worst PSNR": "30.47", "Best SSIM": "0.9300", "Worst SSIM": "0.8947",
        "s/image": "0.250", "Skipped": "1"}
    assert cells(lines[3])[:6] == ["Average", "", "25.50", "0.8000", "31.23", "0.9123"]


def test_fig_images_sets_the_rows_of_each_figure(bench, checkpoint, tmp_path):
    """--fig-images N draws the set's first N images (one 300-pixel row each at 100 dpi), at most the set's; the
    flag was parsed and then not passed on (3 rows whatever N), which a figure's existence alone cannot tell."""
    for n, rows in ((1, 1), (2, 2), (5, 3)):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--no-images", "--save", tmp_path / f"o{n}",
            "--figs", "--figs-dir", tmp_path / f"f{n}", "--fig-images", n)
        with Image.open(tmp_path / f"f{n}" / "jpeg.png") as figure:
            assert figure.size == (900, 300 * rows)


def test_device_flag_reaches_the_run(checkpoint, tmp_path, monkeypatch, capsys):
    """--device is obeyed, not replaced by 'auto': --device cuda where no GPU is visible is one error line (status 2)
    with nothing written, and --device cpu stays on the CPU where CUDA is visible."""
    deg, tar = pair_dirs(tmp_path, ["a.png"], ["a.png"])
    base = ["--model", str(checkpoint), "--degset", str(deg), "--tarset", str(tar), "--no-progress", "--save"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = tester_bary.get_args_parser().parse_args([*base, str(tmp_path / "o"), "--device", "cuda"])
    assert tester_bary.run_main(tester_bary.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device cuda asks for a CUDA GPU, but none is visible "
                   "(check --gpus / CUDA_VISIBLE_DEVICES, or use --device cpu)"] and not (tmp_path / "o").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    res = tester_bary.main(tester_bary.get_args_parser().parse_args([*base, str(tmp_path / "c"), "--device", "cpu"]))
    assert res["protocol"]["device"] == "cpu" and res["tasks"]["deg"]["count"] == 1


def _stopped_results():
    """The results of a run stopped in its one row "myset" after two images, one file skipped."""
    images = [{"name": "a.png", "psnr": 30.5, "ssim": 0.9, "input_psnr": 20.25, "input_ssim": 0.7, "seconds": 0.5},
              {"name": "b.png", "psnr": 28.5, "ssim": 0.8, "input_psnr": 21.75, "input_ssim": 0.6, "seconds": 1.5}]
    row = {"count": 2, "psnr": 29.5, "ssim": 0.85, "input_psnr": 21.0, "input_ssim": 0.65,
           "best_psnr": {"name": "a.png", "psnr": 30.5}, "worst_psnr": {"name": "b.png", "psnr": 28.5},
           "best_ssim": {"name": "a.png", "ssim": 0.9}, "worst_ssim": {"name": "b.png", "ssim": 0.8},
           "seconds_per_image": 1.0, "skipped": 1, "skipped_files": ["c.png (no target)"], "images": images,
           "partial": True}
    return {"protocol": {"protocol": "reference"}, "tasks": {"myset": row}, "average": average_row({"myset": row}),
            "partial": {"row": "myset", "file": "d.png", "error": "interrupted"}}


def test_results_csv_rows_carry_every_value_under_its_column(tmp_path):
    """results.csv: each image row its name, PSNR, SSIM, degraded PSNR/SSIM and seconds; the task row the row's means,
    count and extremes; the average row its means and the number of rows; a stopped run its partial row. A column
    left empty or a value under another's heading went unnoticed by the counts of each kind of row."""
    results = _stopped_results()
    write_results(results, tmp_path)
    with open(tmp_path / "results.csv", newline="") as fh:
        table = [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]
    assert table == [
        {"kind": "image", "task": "myset", "name": "a.png", "psnr": "30.5", "ssim": "0.9", "input_psnr": "20.25",
         "input_ssim": "0.7", "seconds": "0.5"},
        {"kind": "image", "task": "myset", "name": "b.png", "psnr": "28.5", "ssim": "0.8", "input_psnr": "21.75",
         "input_ssim": "0.6", "seconds": "1.5"},
        {"kind": "skipped", "task": "myset", "name": "c.png (no target)"},
        {"kind": "task", "task": "myset", "psnr": "29.5", "ssim": "0.85", "input_psnr": "21.0", "input_ssim": "0.65",
         "seconds": "1.0", "count": "2", "best_psnr": "30.5", "worst_psnr": "28.5", "best_ssim": "0.9",
         "worst_ssim": "0.8"},
        {"kind": "average", "task": "Average", "psnr": "29.5", "ssim": "0.85", "input_psnr": "21.0",
         "input_ssim": "0.65", "count": "1"},
        {"kind": "partial", "task": "myset", "name": "d.png: interrupted"}]


def test_results_md_of_a_stopped_run_says_partial_and_each_image_under_its_headings(tmp_path):
    """results.md of a stopped run says so in its title, on its row and under the table, and lists each image's
    numbers under their headings: a reader opening the file must not take a partial row for the whole set."""
    write_results(_stopped_results(), tmp_path)
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0] == "# Evaluation results (PARTIAL: the run stopped, see the end of the summary)"
    assert any(line.startswith("| myset (partial) | 2 | 21.00 | 0.6500 | 29.50 | 0.8500 |") for line in md)
    assert "PARTIAL RESULTS: stopped in myset at d.png: interrupted" in md
    assert md[md.index("| Image | Degraded PSNR | Degraded SSIM | PSNR | SSIM | s |") + 2:][:2] == [
        "| a.png | 20.25 | 0.7000 | 30.50 | 0.9000 | 0.500 |", "| b.png | 21.75 | 0.6000 | 28.50 | 0.8000 | 1.500 |"]


def test_results_md_names_each_rows_best_and_worst_images_with_their_own_scores(tmp_path):
    """Under each row's heading results.md names its best and worst images by PSNR and by SSIM, each with its
    own score."""
    write_results(_stopped_results(), tmp_path)
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[md.index("## myset") + 2] == ("Best PSNR 30.50 (a.png), worst 28.50 (b.png); best SSIM 0.9000 "
                                            "(a.png), worst 0.8000 (b.png).")


def test_the_summary_of_a_stopped_run_names_the_rows_it_did_not_evaluate():
    """A run stopped before its last rows lists them under the table: a reader must not take the rows shown for
    every task asked."""
    results = _stopped_results()
    results["partial"]["rows_not_evaluated"] = ["jpeg", "dehaze"]
    lines = summary_table(results).splitlines()
    assert lines[-2:] == ["PARTIAL RESULTS: stopped in myset at d.png: interrupted", "Not evaluated: jpeg, dehaze"]


def test_the_lpips_column_sits_under_its_heading_to_four_decimals():
    """With LPIPS scored, each row and the average carry it under the LPIPS heading, to 4 decimals as SSIM."""
    row = {**_stopped_results()["tasks"]["myset"], "lpips": 0.123456, "partial": False}
    lines = summary_table({"tasks": {"myset": row}, "average": average_row({"myset": row})}).splitlines()
    assert dict(zip(cells(lines[0]), cells(lines[2])))["LPIPS"] == "0.1235"
    assert dict(zip(cells(lines[0]), cells(lines[3])))["LPIPS"] == "0.1235"


def test_the_closing_line_says_where_the_figures_went(bench, checkpoint, tmp_path, capsys):
    """After a --figs run the last line named the results files only; the figures' folder was in results.json."""
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "dehaze", "--save", tmp_path / "s",
        "--figs", "--figs-dir", tmp_path / "f", "--max-images", "1")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith(f"results.md; figures: {tmp_path / 'f'}/ (2)"), last


def test_a_dry_run_with_figs_says_where_the_figures_would_go(bench, checkpoint, tmp_path, capsys):
    """--dry-run --figs named the results' folder only."""
    res = run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", tmp_path / "s", "--figs",
              "--figs-dir", tmp_path / "f", "--dry-run")
    assert res["dry_run"] and f"outputs would go to {tmp_path / 's'}, figures to {tmp_path / 'f'}. Nothing was " \
        in capsys.readouterr().out
    assert not (tmp_path / "f").exists()


def test_a_dry_run_of_one_image_says_it_is_found(bench, checkpoint, tmp_path, capsys):
    """--dry-run of one image said '1 image ... are found'."""
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--max-images", "1", "--save", tmp_path / "s",
        "--dry-run")
    assert "1 image in 1 row (jpeg) is found; outputs would go to" in capsys.readouterr().out
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", tmp_path / "s", "--dry-run")
    assert "3 images in 1 row (jpeg) are found; outputs would go to" in capsys.readouterr().out


def test_the_comparison_figure_shows_degraded_restored_and_target_with_their_own_scores(tmp_path, monkeypatch):
    """Each line of the figure is the degraded image with its score, the restoration with its own, then the
    target, in that order."""
    from utils import plotting
    from utils.eval.report import save_comparison_figure
    figures = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kw: figures.append(fig) or Path(path))
    deg, out, tar = (np.full((8, 8, 3), v, np.uint8) for v in (10, 120, 250))
    caption = Protocol(metric_space="y", ssim="gaussian", crop_border=2).scores_caption()
    save_comparison_figure([("a.png", deg, out, tar, 31.5, 0.912, 22.25, 0.654)], tmp_path / "f.png", "t", caption)
    [fig] = figures
    axes = [ax for ax in fig.axes if ax.images]
    assert [ax.title.get_text() for ax in axes] == ["degraded: PSNR 22.25 dB, SSIM 0.654\na.png",
                                                    "restored: PSNR 31.50 dB, SSIM 0.912", "target"]
    # the numbers say what they are: which channels, which SSIM, the border the scores leave out but the panels show
    assert " ".join(fig._suptitle.get_text().split()) == (
        "t PSNR (dB) / SSIM against the target on the Y channel (BT.601); SSIM with an 11x11 Gaussian window "
        "(BasicSR), a 2-px border left out of both (shown here)")
    fig.canvas.draw()  # the caption fits the figure: a long one was cut off at both edges
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox)
    assert Protocol().scores_caption() == ("PSNR (dB) / SSIM against the target on 8-bit RGB; SSIM with "
                                           "scikit-image's 7x7 uniform window")
    assert [int(ax.images[0].get_array()[0, 0, 0]) for ax in axes] == [10, 120, 250]


def test_the_average_of_a_stopped_run_counts_its_partial_row(bench, checkpoint, tmp_path, monkeypatch):
    """A run stopped in its second row averages both rows, the partial one over its images so far, as its table
    says ("the mean over the rows above with scored images"), in results.json and results.csv alike."""
    interrupt_restoring_at(5, monkeypatch)
    with pytest.raises(UserError, match="interrupted.*partial"):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "dehaze", "jpeg", "--no-images", "--save",
            tmp_path / "o")
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    done, cut = saved["tasks"]["dehaze"], saved["tasks"]["jpeg"]
    assert done["count"] == 3 and cut["count"] == 1 and cut["partial"] and saved["average"]["rows"] == 2
    assert saved["average"]["psnr"] == pytest.approx((done["psnr"] + cut["psnr"]) / 2, abs=1e-12)
    assert saved["average"]["ssim"] == pytest.approx((done["ssim"] + cut["ssim"]) / 2, abs=1e-12)
    with open(tmp_path / "o" / "results.csv") as fh:
        [average] = [r for r in csv.DictReader(fh) if r["kind"] == "average"]
    assert average["count"] == "2" and float(average["psnr"]) == pytest.approx(saved["average"]["psnr"])


def test_save_as_the_input_folder_is_refused_even_where_no_output_name_is_an_inputs(checkpoint, tmp_path):
    """--save naming the --input or --degset folder itself is refused when no output would replace an input too
    (a.jpg gives a.png): a.png would join the images the next run reads. Only a folder below it is fine."""
    src = tmp_path / "photos"
    src.mkdir()
    before = write_photos(src, ["a.jpg"])
    deg, tar = pair_dirs(tmp_path, ["b.jpg"], ["b.jpg"])
    for argv in (["--input", src, "--save", src], ["--degset", deg, "--tarset", tar, "--save", deg]):
        with pytest.raises(UserError, match=r"--save \S+ is the input folder .*--overwrite"):
            run("--model", checkpoint, *argv)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before and [p.name for p in deg.iterdir()] == ["b.jpg"]


def test_each_scoring_and_tiling_flag_given_is_the_protocol_run_and_recorded(bench, checkpoint, tmp_path):
    """Every scoring and tiling flag reaches the protocol the run scores by, and results.json records it: a flag
    parsed and not passed on ran (and recorded) its default instead, with nothing said."""
    res = run("--model", checkpoint, "--data-root", bench, "--tasks", "denoise_25", "--max-images", "1", "--no-images",
              "--save", tmp_path / "o", "--protocol", "pad", "--metric-space", "y", "--ssim", "gaussian",
              "--crop-border", "2", "--tile", "16", "--tile-overlap", "8", "--tile-batch", "2", "--noise-seed", "7",
              "--precision", "bf16")
    recorded = json.loads((tmp_path / "o" / "results.json").read_text())["protocol"]
    assert {k: recorded[k] for k in ("protocol", "metric_space", "ssim", "crop_border", "tile", "tile_overlap",
                                     "tile_batch", "noise_seed", "precision")} == {
        "protocol": "pad", "metric_space": "y", "ssim": "gaussian", "crop_border": 2, "tile": 16, "tile_overlap": 8,
        "tile_batch": 2, "noise_seed": 7, "precision": "bf16"}
    assert res["tasks"]["denoise_25/setA"]["count"] == 1 and recorded["max_images"] == 1


def test_a_bar_in_an_image_or_row_name_stays_in_its_cell_of_results_md(tmp_path):
    """A file named ``a|b.png`` (legal on Linux and macOS) ended its cell in results.md: the name read "a" and every
    value sat one heading to the right, "b.png" under Degraded PSNR. The bar is escaped, as Markdown tables allow."""
    results = _stopped_results()
    row = results["tasks"].pop("myset")
    row["images"][0]["name"] = "a|b.png"
    results["tasks"]["my|set"] = row
    write_results(results, tmp_path)
    md = (tmp_path / "results.md").read_text().splitlines()

    def split(line):  # a table row's cells, an escaped bar kept inside its cell
        return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]

    head = md.index("| Image | Degraded PSNR | Degraded SSIM | PSNR | SSIM | s |")
    assert dict(zip(split(md[head]), split(md[head + 2]))) == {
        "Image": "a\\|b.png", "Degraded PSNR": "20.25", "Degraded SSIM": "0.7000", "PSNR": "30.50", "SSIM": "0.9000",
        "s": "0.500"}
    summary = md.index(next(line for line in md if line.startswith("| Task |")))
    assert dict(zip(split(md[summary]), split(md[summary + 2])))["Degraded PSNR"] == "21.00"
    assert split(md[summary + 2])[0] == "my\\|set (partial)"


def _gfm_cells(line):
    """A table row's cells as GitHub's Markdown splits them: a backslash escapes the character after it (so ``\\\\|``
    is a backslash, then the bar that ends the cell), and a row ends at the end of its line."""
    cells_, cell, chars = [], "", iter(line.strip().removeprefix("|").removesuffix("|"))
    for ch in chars:
        if ch == "\\":
            cell += next(chars, "")
        elif ch == "|":
            cells_, cell = cells_ + [cell.strip()], ""
        else:
            cell += ch
    return cells_ + [cell.strip()]


@pytest.mark.parametrize("name,shown", [("x\\|y.png", "x\\|y.png"), ("a\nb.png", "a\\nb.png"),
                                        ("c\rd\te.png", "c\\rd\\te.png")])
def test_a_backslash_or_line_break_in_an_image_or_row_name_stays_in_its_cell_of_results_md(tmp_path, name, shown):
    """A file named ``x\\|y.png`` became ``x\\\\|y.png`` in results.md: an escaped backslash, then a bar that ended the
    cell, so "y.png" sat under Degraded PSNR and every number one heading to the right; a name with a line break (legal
    on Linux) cut its row in two. Backslashes are escaped too, and a line break is shown as ``\\n``."""
    results = _stopped_results()
    row = results["tasks"].pop("myset")
    row["images"][0]["name"] = name
    results["tasks"][name] = row
    write_results(results, tmp_path)
    md = (tmp_path / "results.md").read_text().splitlines()
    head = md.index("| Image | Degraded PSNR | Degraded SSIM | PSNR | SSIM | s |")
    assert dict(zip(_gfm_cells(md[head]), _gfm_cells(md[head + 2]))) == {
        "Image": shown, "Degraded PSNR": "20.25", "Degraded SSIM": "0.7000", "PSNR": "30.50", "SSIM": "0.9000",
        "s": "0.500"} and len(_gfm_cells(md[head + 2])) == 6
    summary = md.index(next(line for line in md if line.startswith("| Task |")))
    assert _gfm_cells(md[summary + 2])[:3] == [shown + " (partial)", "2", "21.00"]
    assert len(_gfm_cells(md[summary + 2])) == len(_gfm_cells(md[summary]))


@pytest.mark.parametrize("name,shown", [("*x*_.png", "\\*x\\*\\_.png"), ("[a](b).png", "\\[a\\](b).png"),
                                        ("`c`.png", "\\`c\\`.png"), ("<b>d</b>.png", "\\<b>d\\</b>.png"),
                                        ("~~e~~ &amp; $f$.png", "\\~\\~e\\~\\~ \\&amp; \\$f\\$.png"),
                                        ("rain_1 & 2.png", "rain_1 & 2.png")])
def test_markdown_syntax_in_an_image_or_row_name_is_shown_as_written_in_results_md(tmp_path, name, shown):
    """A file named ``*x*_.png`` read "x" in italics in results.md, ``[a](b).png`` a link to "b", ``<b>d</b>.png`` a
    bold "d": the cells stayed whole, but a Markdown viewer showed another name than the file's. Markdown's inline
    syntax is backslash-escaped (an ``_`` between letters or digits starts nothing and is left as it is)."""
    results = _stopped_results()
    row = results["tasks"].pop("myset")
    row["images"][0]["name"] = row["best_psnr"]["name"] = name
    results["tasks"][name] = row
    write_results(results, tmp_path)
    md = (tmp_path / "results.md").read_text().splitlines()
    head = md.index("| Image | Degraded PSNR | Degraded SSIM | PSNR | SSIM | s |")
    summary = md.index(next(line for line in md if line.startswith("| Task |")))
    assert md[head + 2].startswith(f"| {shown} | 20.25 |") and md[summary + 2].startswith(f"| {shown} (partial) | 2 |")
    assert f"## {shown}" in md and any(line.startswith(f"Best PSNR 30.50 ({shown}), worst") for line in md)
    assert _gfm_cells(md[head + 2])[0] == name  # the name itself once the escapes are read
    try:
        from markdown_it import MarkdownIt  # installed with rich (the app's requirements), not by requirements.txt
    except ImportError:
        return
    render = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render
    for lines, tag in ((md[head:head + 3], "td"), (md[summary:summary + 3], "td"), ([f"## {shown}"], "h2")):
        text = re.search(rf"<{tag}>(.*?)</{tag}>", render("\n".join(lines) + "\n")).group(1)
        assert html.unescape(text).removesuffix(" (partial)") == name, text  # no <em>, <a>, <code>, <b> or <s>


@pytest.mark.parametrize("name,shown", [("*x*_.png", "\\*x\\*\\_.png"), ("[a](b).png", "\\[a\\](b).png"),
                                        ("<b>d</b>.png", "\\<b>d\\</b>.png")])
def test_names_in_results_md_lines_of_text_are_shown_as_written_and_plain_on_the_console(tmp_path, name, shown):
    """The cells of results.md escaped a file named ``*x*_.png``, but its "Skipped (N)", "Decoded over damaged data",
    "Skipped unreadable image", "Identical to the target", "Tiled" and "PARTIAL RESULTS" lines did not: there it read
    "x" in italics, a link or bold text. Every name in them is escaped now; the console, plain text, prints it as
    written."""
    results = _stopped_results()
    row = results["tasks"]["myset"]
    row["images"][0].update(psnr=100.0, decoder_warnings=[f"degraded {name}: the JPEG decoder says 'x'"])
    row["images"][0]["name"] = name
    row.update(skipped_files=[f"{name} (no target)"], bad_files=[{"name": name, "error": f"cannot read {name}"}],
               notes=[f"note: {name} restored in tiles"])
    results["partial"].update(file=name, rows_not_evaluated=[name])
    write_results(results, tmp_path)
    md = (tmp_path / "results.md").read_text().splitlines()
    said = {f"Skipped (1): {shown} (no target)", f"Skipped unreadable image (myset): {shown}: cannot read {shown}",
            f"Decoded over damaged data (1; scored as decoded, as the reference reads them): degraded {shown}: the "
            f"JPEG decoder says 'x'", f"Tiled (myset): {shown} restored in tiles",
            f"PARTIAL RESULTS: stopped in myset at {shown}: interrupted", f"Not evaluated: {shown}"}
    assert said <= set(md) and any(line.startswith(f"Identical to the target (myset, restored): 1 image ({shown})")
                                   for line in md)
    printed = summary_table(results).splitlines()  # the console's notes: the names as written
    assert {f"Skipped unreadable image (myset): {name}: cannot read {name}", f"Tiled (myset): {name} restored in "
            f"tiles", f"PARTIAL RESULTS: stopped in myset at {name}: interrupted", f"Not evaluated: {name}"} <= \
        set(printed) and any(line.startswith(f"Identical to the target (myset, restored): 1 image ({name})")
                             for line in printed)
    try:
        from markdown_it import MarkdownIt  # installed with rich (the app's requirements), not by requirements.txt
    except ImportError:
        return
    for line in said:
        text = re.search(r"<p>(.*?)</p>", MarkdownIt("commonmark").render(line + "\n")).group(1)
        assert name in html.unescape(text), text  # no <em>, <a> or <b>


def test_results_record_the_command_commit_and_versions_to_run_them_again(bench, checkpoint, tmp_path, monkeypatch):
    """results.json and results.md named the model and the protocol, but neither the command (--data-root,
    --tasks), the commit nor torch's version and threads: a table could not be traced back to the code."""
    argv = ["tester_bary.py", "--model", str(checkpoint), "--data-root", str(bench), "--tasks", "derain",
            "--no-images", "--save", str(tmp_path / "a"), "--degset", "", "--no-progress"]
    monkeypatch.setattr(sys, "argv", argv)
    run(*argv[1:])
    made = json.loads((tmp_path / "a" / "results.json").read_text())["provenance"]
    assert shlex.split(made["command"])[1:] == argv  # the empty --degset too, quoted for a shell
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert made["commit"].split()[0] == head.strip() != ""
    assert (made["torch"], made["torch_threads"]) == (str(torch.__version__), torch.get_num_threads())
    assert f"- commit: {made['commit']}" in (tmp_path / "a" / "results.md").read_text()


def test_the_checkpoint_path_and_command_in_results_md_are_shown_as_written(tmp_path):
    """results.md's protocol and run lists put the checkpoint's path and the command in as they were: a checkpoint
    ``runs/*x*_.pth`` read "x" in italics, ``--degset '[a](b)'`` a link, a quoted line break started a new line."""
    results = _stopped_results()
    results["protocol"]["model"] = "runs/*x*_.pth"
    results["provenance"] = {"command": "python tester_bary.py --degset '[a](b)' --tarset 'c\nd'", "commit": "abc1234"}
    write_results(results, tmp_path)
    md = (tmp_path / "results.md").read_text().splitlines()
    assert "- model: runs/\\*x\\*\\_.pth" in md and "- commit: abc1234" in md
    # the line break shown as its escape, as in a cell
    assert "- command: python tester_bary.py --degset '\\[a\\](b)' --tarset 'c\\\\nd'" in md
    try:
        from markdown_it import MarkdownIt  # installed with rich (the app's requirements), not by requirements.txt
    except ImportError:
        return
    shown = MarkdownIt("commonmark").render("\n".join(md[md.index("## Protocol"):md.index("## Summary")]))
    assert "<em>" not in shown and "<a " not in shown and "runs/*x*_.pth" in shown
    assert "--degset '[a](b)' --tarset 'c\\nd'</li>" in html.unescape(shown)


def test_results_record_the_checkpoints_digest(bench, checkpoint, tmp_path):
    """results.json named the checkpoint by its path only; a fresh run in the checkpoint's folder later writes other
    weights under that very name (the earlier ones moved to run.before-*/), and nothing told the two apart."""
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--no-images", "--save", tmp_path / "a")
    made = json.loads((tmp_path / "a" / "results.json").read_text())["provenance"]
    assert made["model_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
