"""tester_bary.py and utils/eval/ end to end, with a tiny BaryNet whose output conv is zero.

Such a network returns its input exactly (global residual), so every number the tester prints
must equal the metrics of the degraded images against their targets, computed here directly.
"""
import csv
import errno
import hashlib
import io
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
from _disks import FileWrapper
from _markdown import cells
from _processes import as_in_a_terminal
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import tester_bary
from net.presets import build_model, model_config
from utils.checkpoints import CheckpointError
from utils.data import image_io
from utils.data.image_files import list_images
from utils.data.image_io import ImageReadError, read_image, write_image
from utils.data.noise import noise_seed, noisy_version
from utils.data.pairing import PairingError, match_pairs
from utils.errors import UserError
from utils.eval import protocol as protocol_module
from utils.eval import tasks as tasks_module
from utils.eval.evaluation import average_row, evaluate_set, evaluate_sets
from utils.eval.metrics import image_metrics
from utils.eval.outputs import output_names
from utils.eval.protocol import Protocol, RestoreOutOfMemory
from utils.eval.report import summary_table, write_results
from utils.eval.tasks import find_task_sets, paired_set
from utils.streams import PIPE_CLOSED_STATUS

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]
H, W = 44, 61  # not multiples of 8: the two protocols differ


def _clean_images():
    return {"astro": data.astronaut()[60:60 + H, 200:200 + W], "cat": data.chelsea()[80:80 + H, 150:150 + W],
            "coffee": data.coffee()[150:150 + H, 250:250 + W]}


def _degrade(img, k):
    rng = np.random.default_rng(k)
    return np.clip(img * 0.85 + 20 + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A benchmark root in the docs/METHOD.md §4 layout, plus the degraded/target arrays by folder."""
    root = tmp_path_factory.mktemp("bench")
    clean = _clean_images()
    for k, (name, img) in enumerate(clean.items()):
        write_image(root / "denoise" / "setA" / f"{name}.png", img)
        write_image(root / "dehaze" / "input" / f"{name}_0.8_0.1.png", _degrade(img, k))
        write_image(root / "dehaze" / "target" / f"{name}.png", img)
        write_image(root / "derain" / "Rain100L" / "input" / f"rain-{k + 1}.png", _degrade(img, 10 + k))
        write_image(root / "derain" / "Rain100L" / "target" / f"norain-{k + 1}.png", img)
        write_image(root / "jpeg" / "input" / f"{name}.png", _degrade(img, 20 + k))
        write_image(root / "jpeg" / "target" / f"{name}.png", img)
    write_image(root / "denoise" / "setB" / "cat.png", clean["cat"][:32, :40])
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A project checkpoint of the zero-output tiny BaryNet."""
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny")
    torch.nn.init.zeros_(model.output.weight)
    path = tmp_path_factory.mktemp("ckpt") / "zero.pth"
    torch.save({"model": model.state_dict(), "model_config": model_config("tiny"), "backbone": "BaryNet",
                "epoch": 1}, path)
    return path


def run(*argv):
    args = tester_bary.get_args_parser().parse_args([*map(str, argv), "--no-progress"])
    return tester_bary.main(args)


def direct_metrics(deg_dir, tar_dir, protocol, space, ssim="skimage"):
    """Metrics of each degraded image against its target, prepared as the protocol says."""
    pairs, _ = match_pairs(deg_dir, tar_dir)
    out = {}
    for d, t in pairs:
        a, b = read_image(d), read_image(t)
        if protocol == "reference":
            a, b = a[: a.shape[0] // 8 * 8, : a.shape[1] // 8 * 8], b[: b.shape[0] // 8 * 8, : b.shape[1] // 8 * 8]
        out[d.name] = image_metrics(a, b, space, ssim)
    return out


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
    img = _clean_images()["cat"]
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
    _exif_jpeg(tmp_path / "mine" / "phone.jpg", _clean_images()["cat"])  # stored 44x61, shown 61x44
    stored = read_image(tmp_path / "mine" / "phone.jpg")
    assert stored.shape[:2] == (H, W)
    res = run("--model", checkpoint, "--input", tmp_path / "mine", "--save", tmp_path / "out")
    assert [r["name"] for r in res["restored"]] == ["phone.jpg"]
    assert np.array_equal(read_image(tmp_path / "out" / "phone.png"), np.rot90(stored, -1))  # zero model: identity


def test_benchmark_pairs_ignore_exif_orientation(checkpoint, tmp_path):
    """As the reference's PIL convert('RGB'): a tagged degraded image is scored as stored, like its target."""
    clean = _clean_images()
    for k, name in enumerate(("astro", "cat")):
        _exif_jpeg(tmp_path / "d" / f"{name}.jpg", _degrade(clean[name], k))  # tagged: would turn 61x44
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
    clean = _clean_images()["coffee"]
    deg16 = _degrade(clean, 5).astype(np.uint16) * 257 + 77
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
    _photos(tmp_path / "in", ["a.png"])
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
    _photos(tmp_path / "in", ["a.png"])
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
    assert "warning: --compare-paper 3d: no row of this run (rows: input) fills a column of the paper's table" in err
    assert "evaluate with --data-root DIR --tasks ..." in err
    run(*args, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "b")
    assert "--compare-paper" not in capsys.readouterr().err


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

def _pair_dirs(tmp_path, names_deg, names_tar, size_of=lambda n: (H, W)):
    deg, tar = tmp_path / "deg", tmp_path / "tar"
    img = _clean_images()["cat"]
    for n in names_deg:
        h, w = size_of(n)
        write_image(deg / n, img[:h, :w])
    for n in names_tar:
        write_image(tar / n, img)
    return deg, tar


def test_a_task_folder_with_one_of_its_two_folders_gets_the_check_datas_fix(checkpoint, tmp_path):
    """A half-present test folder stopped the tester with no fix ('degraded folder does not exist: R/lowlight/low',
    'target folder does not exist: R/deblur/target') while --check-data gave one: the error is now the doctor's
    own line, fix included, for a set one level deeper too."""
    from utils.data import doctor
    img = _clean_images()["cat"]
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
    write_image(tmp_path / "t" / "a.png", _clean_images()["cat"])
    with pytest.raises(PairingError, match=re.escape(f"the degraded folder {tmp_path / 'd'} does not exist: put the "
                                                     f"degraded images there, or pass the folder that holds them")):
        paired_set("x", tmp_path / "d", tmp_path / "t")


def test_the_single_family_is_tested_in_the_folders_it_is_trained_from(checkpoint, tmp_path):
    """README's training layout for a user's own degradation is single/{degraded,target}; --tasks single read
    single/{input,target} and stopped with 'degraded folder does not exist: R/single/input'. It now reads the
    training layout, and a single/input/ gets the rename as its fix."""
    clean = _clean_images()
    for k, (name, img) in enumerate(clean.items()):
        write_image(tmp_path / "R" / "single" / "degraded" / f"{name}.png", _degrade(img, k))
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
    deg, tar = _pair_dirs(tmp_path, ["a.png", "b.png", "lonely.png"], ["a.png", "b.png"])
    with pytest.raises(PairingError, match="lonely.png") as err:
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    assert "--skip-unpaired" in str(err.value) and "\n" not in str(err.value)  # one error line
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--skip-unpaired")
    assert res["tasks"]["deg"]["count"] == 2 and res["tasks"]["deg"]["skipped"] == 1


def test_size_mismatch_is_listed_or_skipped(checkpoint, tmp_path):
    deg, tar = _pair_dirs(tmp_path, ["a.png", "small.png"], ["a.png", "small.png"],
                          size_of=lambda n: (H - 3, W) if n == "small.png" else (H, W))
    with pytest.raises(PairingError, match=r"small.png 41x61 vs target small.png 44x61") as err:
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    assert "\n" not in str(err.value)  # one error line
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--skip-unpaired")
    assert res["tasks"]["deg"]["count"] == 1 and "size mismatch" in res["tasks"]["deg"]["skipped_files"][0]


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_image_is_named(checkpoint, tmp_path, how):
    deg, tar = _pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
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
    _, tar = _pair_dirs(tmp_path, [], ["a.png"])
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

def _tester_in(cwd, *argv):
    """``python tester_bary.py ARGV`` run from ``cwd`` (relative defaults resolve there)."""
    # a library's deprecation warning on stderr is not the tester's output, which these tests read line by line
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(REPO / "tester_bary.py"), *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


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
    done = _tester_in(tmp_path, "--no-progress")
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
    done = _tester_in(tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: no --model given and no checkpoint under checkpoint/ — put the authors' "
        "model_allBaryNet__61_1.0_5D.pt there, train one with trainer_bary.py, or pass --model PATH (a checkpoint "
        "file or a run's output folder)"]
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "epoch_001.pth").write_bytes(checkpoint.read_bytes())
    (tmp_path / "data" / "test").mkdir(parents=True)
    done = _tester_in(tmp_path)
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


# --------------------------------------------------------------------------- safety with users' files

def _photos(folder, names):
    """Images ``names`` in ``folder``, each a different crop; returns every file's bytes by name."""
    img = data.astronaut()
    for k, n in enumerate(names):
        Image.fromarray(img[8 * k: 8 * k + H, 0:W]).save(folder / n, quality=95)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_outputs_never_overwrite_inputs(bench, checkpoint, tmp_path):
    """Failure 1: --save/--savetar in an input folder are refused (unless --overwrite); same-stem inputs get
    distinct outputs; a symbolic link at an output path is replaced, its target never written."""
    src = tmp_path / "photos"
    src.mkdir()
    before = _photos(src, ["a.png", "a.jpg", "b.png"])
    for save in (src, src / "."):  # the input folder itself
        with pytest.raises(UserError, match="--overwrite") as err:
            run("--model", checkpoint, "--input", src, "--save", save)
        assert str(src.resolve()) in str(err.value) and str(save) in str(err.value)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # nothing written
    # a folder below it: --input DIR reads DIR's own files only, so photos/restored/ overwrites nothing (it
    # was refused too, and the fix offered, --overwrite, would have switched the whole check off)
    assert len(run("--model", checkpoint, "--input", src, "--save", src / "restored")["restored"]) == 3
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before
    shutil.rmtree(src / "restored")
    deg, tar = bench / "jpeg" / "input", bench / "jpeg" / "target"
    with pytest.raises(UserError, match="--savetar"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--savetar", tar)
    with pytest.raises(UserError, match="input folder"):  # --tasks: inside a task folder
        run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", bench / "jpeg" / "out")
    # Same stem: a.png -> a.png, a.jpg -> a_jpg.png (the zero model returns its input exactly).
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    (out / "b.png").symlink_to(victim)  # a link at an output path
    res = run("--model", checkpoint, "--input", src, "--save", out)
    assert sorted(r["output"] for r in res["restored"]) == sorted(str(out / n) for n in ("a.png", "a_jpg.png", "b.png"))
    assert np.array_equal(read_image(out / "a.png"), read_image(src / "a.png"))
    assert np.array_equal(read_image(out / "a_jpg.png"), read_image(src / "a.jpg"))
    assert victim.read_bytes() == b"precious" and not (out / "b.png").is_symlink()
    assert np.array_equal(read_image(out / "b.png"), read_image(src / "b.png"))
    # --overwrite: the user asked to write into the input folder.
    res = run("--model", checkpoint, "--input", src, "--save", src / "restored", "--overwrite")
    assert len(res["restored"]) == 3 and output_names(["a.png", "a.jpg"]) == ["a.png", "a_jpg.png"]


def test_output_folders_are_checked_before_the_model_is_loaded(bench, checkpoint, tmp_path, monkeypatch):
    """Failure 2: an output folder that cannot be created fails at once, naming the flag and folder."""
    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the output folders were checked")

    from utils.eval import tester
    monkeypatch.setattr(tester, "load_model", no_model)
    (tmp_path / "file").write_text("a file, not a folder")
    args = ["--model", checkpoint, "--degset", bench / "jpeg" / "input", "--tarset", bench / "jpeg" / "target"]
    for flag in ("--save", "--savetar", "--figs-dir"):
        extra = ["--figs"] if flag == "--figs-dir" else []
        where = {"--save": tmp_path / "ok"} | {flag: tmp_path / "file" / "sub"}
        with pytest.raises(UserError, match=f"{flag} {tmp_path / 'file' / 'sub'}"):
            run(*args, *extra, *[x for k, v in where.items() for x in (k, v)])


def test_a_bad_image_writes_partial_results_or_is_skipped(checkpoint, tmp_path):
    """Failure 3: a corrupt image stops the run with the results so far written (marked partial) and the file
    named; --skip-bad-files leaves it out, counted and named, and goes on."""
    deg, tar = _pair_dirs(tmp_path, ["a.png", "b.png", "c.png"], ["a.png", "b.png", "c.png"])
    raw = (deg / "b.png").read_bytes()
    (deg / "b.png").write_bytes(raw[: len(raw) // 2])  # a valid header: found only when decoded
    with pytest.raises(UserError, match=r"b\.png.*partial.*--skip-bad-files"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["partial"]["file"] == str(deg / "b.png") and saved["tasks"]["deg"]["count"] == 1
    assert "PARTIAL" in (tmp_path / "o" / "results.md").read_text()
    with open(tmp_path / "o" / "results.csv") as fh:
        assert [r["kind"] for r in csv.DictReader(fh)].count("partial") == 1
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "s", "--skip-bad-files")
    row = res["tasks"]["deg"]
    assert row["count"] == 2 and row["skipped"] == 1 and [b["name"] for b in row["bad_files"]] == ["b.png"]
    assert "partial" not in res and "b.png" in summary_table(res)
    assert "b.png (unreadable" in (tmp_path / "s" / "results.md").read_text()
    # --input: the same two ways.
    with pytest.raises(UserError, match=r"b\.png.*partial"):
        run("--model", checkpoint, "--input", deg, "--save", tmp_path / "i")
    saved = json.loads((tmp_path / "i" / "results.json").read_text())
    assert [r["name"] for r in saved["restored"]] == ["a.png"] and saved["partial"]["file"] == str(deg / "b.png")
    res = run("--model", checkpoint, "--input", deg, "--save", tmp_path / "j", "--skip-bad-files")
    assert [r["name"] for r in res["restored"]] == ["a.png", "c.png"] and "b.png" in res["skipped_files"][0]


def test_failures_are_one_error_line_and_debug_shows_the_traceback(checkpoint, tmp_path, capsys):
    """Failure 4: through run_main, a missing checkpoint is one error line (exit 1), a flag conflict exit 2."""
    _photos(tmp_path, ["in.png"])
    done = _tester_in(tmp_path, "--model", tmp_path / "nope.pth", "--input", tmp_path / "in.png")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "nope.pth" in line
    debug = _tester_in(tmp_path, "--model", tmp_path / "nope.pth", "--input", tmp_path / "in.png", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    parser = tester_bary.get_args_parser()
    for argv in (["--tasks", "jpeg", "--input", "x"], ["--degset", "x"], ["--tile", "12", "--input", "x"]):
        status = tester_bary.run_main(tester_bary.main, parser.parse_args(["--model", str(checkpoint), *argv]))
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and err[0].startswith("error: "), (argv, err)


def test_max_images_must_be_positive_or_zero(bench, checkpoint, tmp_path, capsys):
    """Failure 5: --max-images -1 used to drop the last image; it is a usage error now (0 = all)."""
    with pytest.raises(SystemExit) as err:
        tester_bary.get_args_parser().parse_args(["--max-images", "-1"])
    [line] = capsys.readouterr().err.splitlines()
    assert err.value.code == 2 and line.startswith("error: argument --max-images: must be >= 0")
    args = ["--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--no-images"]
    cut = run(*args, "--save", tmp_path / "a", "--max-images", "1")
    assert cut["tasks"]["jpeg"]["count"] == 1 and cut["protocol"]["max_images"] == 1  # recorded with the numbers
    with pytest.raises(UserError, match="--max-images cuts benchmark sets"):  # --input used to ignore it
        run("--model", checkpoint, "--input", bench / "jpeg" / "input", "--save", tmp_path / "i", "--max-images", "1")
    assert run(*args, "--save", tmp_path / "b", "--max-images", "0")["tasks"]["jpeg"]["count"] == 3


def test_max_pixels_flag_refuses_large_images(checkpoint, tmp_path):
    """Failure 6 (tester side): --max-pixels sets the limit; an image above it is an unreadable image."""
    deg, tar = _pair_dirs(tmp_path, ["a.png"], ["a.png"])
    with pytest.raises(UserError, match="--max-pixels"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--max-pixels", "1000")
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o",
              "--max-pixels", str(H * W))
    assert res["tasks"]["deg"]["count"] == 1


def test_an_empty_denoising_set_folder_is_named_not_silently_dropped(checkpoint, tmp_path, capsys):
    root = tmp_path / "root"
    write_image(root / "denoise" / "bsd68" / "cat.png", data.chelsea()[:48, :64])
    (root / "denoise" / "urban100").mkdir()  # an unfinished download
    notes = []
    sets = find_task_sets(["denoise_15", "denoise_25"], root, notes=notes)
    assert [s.name for s in sets] == ["denoise_15/bsd68", "denoise_25/bsd68"]
    assert notes and all("urban100" in n for n in notes)
    results = run("--model", checkpoint, "--data-root", root, "--tasks", "denoise_15", "denoise_25",
                  "--save", tmp_path / "o")
    assert set(results["tasks"]) == {"denoise_15/bsd68", "denoise_25/bsd68"}
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "urban100" in warnings[0] and "holds no images" in warnings[0]


def test_a_greyscale_denoising_set_is_said_by_the_tester_and_check_data(tmp_path, capsys):
    """The grey BSD68 (grey-denoising papers' set) is a common download for the paper's colour BSD68 column: it was
    noised and scored as RGB without a word, and its scores set beside the paper's table."""
    import cv2

    from utils.data.doctor import check_test_data
    root = tmp_path / "root"
    grey = cv2.cvtColor(data.chelsea()[:48, :64], cv2.COLOR_RGB2GRAY)
    for name in ("a.png", "b.png"):
        (root / "denoise" / "bsd68").mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / "denoise" / "bsd68" / name), grey)  # stored as one channel
    write_image(root / "denoise" / "kodak24" / "c.png", data.chelsea()[:48, :64])
    notes = []
    find_task_sets(["denoise_15", "denoise_25"], root, notes=notes)
    assert list(dict.fromkeys(notes)) == [
        f"all clean images in {root / 'denoise' / 'bsd68'} are greyscale: they are noised and restored as RGB (the "
        f"grey value in each channel, each channel with noise of its own), as the reference reads them; the paper's "
        f"denoising columns are the colour sets (CBSD68, Kodak24), so scores on grey images do not compare to its "
        f"table"]
    report = check_test_data(root, ["denoise_25"], expected={})
    problems = {s.name: [(p.kind, p.severity) for p in s.problems] for s in report.sets}
    assert problems == {"denoise/bsd68": [("greyscale", "warning")], "denoise/kodak24": []}, problems
    assert report.ok  # a warning: the run goes on


def test_a_hidden_folder_beside_the_denoising_sets_is_not_a_set(tmp_path):
    """Jupyter's .ipynb_checkpoints/ (copies of the images) beside bsd68/ was scored as a denoise_25 row of its
    own, while --check-data, which skips hidden folders, did not list it: the two disagreed on the sets."""
    from utils.data.doctor import check_test_data
    root = tmp_path / "root"
    for folder in ("bsd68", ".ipynb_checkpoints"):
        write_image(root / "denoise" / folder / "cat.png", data.chelsea()[:48, :64])
    assert [s.name for s in find_task_sets(["denoise_25"], root)] == ["denoise_25/bsd68"]
    report = check_test_data(root, ["denoise_25"], expected={})
    assert [r.name for r in report.sets] == ["denoise/bsd68"]


def test_save_and_savetar_may_not_share_a_folder(bench, checkpoint, tmp_path):
    """Failure 7: --save and --savetar naming one folder used to end with every restoration replaced by its
    target (same names); it is refused before anything is written, as is --figs-dir among the images."""
    deg, tar = bench / "jpeg" / "input", bench / "jpeg" / "target"
    same = tmp_path / "same"
    with pytest.raises(UserError, match=r"--save .* and --savetar .* same folder"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", same, "--savetar", same)
    assert not same.exists() or not list(same.iterdir())
    link = tmp_path / "link"
    link.symlink_to(same, target_is_directory=True)
    with pytest.raises(UserError, match="same folder"):  # the same folder through a symbolic link
        run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", same, "--savetar", link)
    with pytest.raises(UserError, match="--figs-dir"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", same, "--figs",
            "--figs-dir", same)
    # --tasks writes <save>/<row>/ and <savetar>/<row>/: one base for both is refused, nesting is not.
    res = run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", tmp_path / "o",
              "--savetar", tmp_path / "o" / "targets")
    assert res["tasks"]["jpeg"]["count"] == 3
    restored = read_image(tmp_path / "o" / "jpeg" / "cat.png")
    target = read_image(tmp_path / "o" / "targets" / "jpeg" / "cat.png")
    assert np.array_equal(restored, read_image(deg / "cat.png")[:40, :56])  # the zero model: its input, cropped
    assert np.array_equal(target, read_image(tar / "cat.png")[:40, :56])


def _interrupt_restoring_at(n: int, monkeypatch) -> list:
    """Make the tester's n-th restoration raise KeyboardInterrupt, as Ctrl-C there would; the others restore as
    usual. Returns the list that counts the restorations: clear it to stop at the n-th of a next run."""
    from utils.eval import evaluation
    real, calls = protocol_module.restore_array, []

    def restore(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluation, "restore_array", restore)
    return calls


def test_ctrl_c_keeps_the_results_so_far(bench, checkpoint, tmp_path, monkeypatch, capsys):
    """Failure 8: Ctrl-C used to end the run with no results written (an earlier run's results.json stayed
    beside the new images); now the images finished so far are written as partial results, exit status 130.
    Ctrl-C in --input's 1000 photos also said nothing of how far it got (a benchmark run shows its table): now
    "restored 1 of 3 images into OUT before the run stopped at FILE"."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text('{"stale": true}')
    calls = _interrupt_restoring_at(2, monkeypatch)
    with pytest.raises(UserError, match="interrupted.*partial") as err:
        run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", out)
    assert err.value.exit_status == 130
    saved = json.loads((out / "results.json").read_text())
    assert saved["partial"]["error"] == "interrupted" and saved["tasks"]["jpeg"]["count"] == 1
    assert [p.name for p in (out / "jpeg").iterdir()] == [saved["tasks"]["jpeg"]["images"][0]["name"]]
    calls.clear()  # --input: the record of the images restored so far, and how far it got
    capsys.readouterr()
    src = bench / "jpeg" / "input"
    with pytest.raises(UserError, match="interrupted") as err:
        run("--model", checkpoint, "--input", src, "--save", tmp_path / "i")
    saved = json.loads((tmp_path / "i" / "results.json").read_text())
    assert err.value.exit_status == 130 and len(saved["restored"]) == 1 and saved["partial"]["error"] == "interrupted"
    second = sorted(p.name for p in src.iterdir())[1]
    assert f"restored 1 of 3 images into {tmp_path / 'i'} before the run stopped at {src / second}" in \
        capsys.readouterr().out


def _stop_after_writing(n: int, monkeypatch, stop: BaseException) -> None:
    """Make the tester's n-th image write put its file in place, then raise ``stop``: Ctrl-C landing in the
    folder's fsync after the rename, or a full disk met by the next write."""
    from utils.eval import evaluation
    real, calls = evaluation.write_image, []

    def write(path, img):
        calls.append(path)
        done = real(path, img)
        if len(calls) == n:
            raise stop
        return done

    monkeypatch.setattr(evaluation, "write_image", write)


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_a_restoration_written_when_the_run_stops_is_in_its_results(bench, checkpoint, tmp_path, monkeypatch, stop):
    """A stop between a restored image's write and its record (Ctrl-C in the folder's fsync, FID's features, the
    --savetar write failing) left a PNG in --save that the partial results.json did not list, and that the next
    run neither listed nor moved aside, though --save is to hold what results.json describes."""
    out, tar = tmp_path / "o", tmp_path / "t"
    _stop_after_writing(3, monkeypatch, stop)  # the second image's --save write is the 3rd (with --savetar)
    with pytest.raises(UserError):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", out, "--savetar", tar)
    saved = json.loads((out / "results.json").read_text())
    recorded = [r["output"] for r in saved["tasks"]["jpeg"]["images"]]
    assert len(recorded) == 2 and sorted(p.relative_to(out).as_posix() for p in (out / "jpeg").iterdir()) == recorded
    _stop_after_writing(2, monkeypatch, stop)  # --input: the second restoration
    with pytest.raises(UserError):
        run("--model", checkpoint, "--input", bench / "jpeg" / "input", "--save", tmp_path / "i")
    saved = json.loads((tmp_path / "i" / "results.json").read_text())
    assert [Path(r["output"]).name for r in saved["restored"]] == \
        sorted(p.name for p in (tmp_path / "i").iterdir() if p.suffix == ".png")
    assert len(saved["restored"]) == 2


def test_an_image_without_read_permission_is_a_bad_file(checkpoint, tmp_path, monkeypatch):
    """Failure 9: a file that cannot be read (permission denied) escaped as an OSError: not skipped by
    --skip-bad-files, no partial results, and a message about writing. It is an unreadable image now."""
    import builtins
    deg, tar = _pair_dirs(tmp_path, ["a.png", "b.png", "c.png"], ["a.png", "b.png", "c.png"])
    real_open = open

    class BodyDenied(FileWrapper):  # the header reads; the body does not (chmod does not stop root, who runs CI)
        def read(self, size=-1):
            if size is None or size < 0:
                raise PermissionError(13, "Permission denied", str(deg / "b.png"))
            return self.fh.read(size)

    def body_denied(path, *a, **k):
        fh = real_open(path, *a, **k)
        return BodyDenied(fh) if Path(path).name == "b.png" and Path(path).parent == deg else fh

    monkeypatch.setattr(builtins, "open", body_denied)
    with pytest.raises(UserError, match=r"cannot read image .*b\.png: Permission denied.*partial"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    assert json.loads((tmp_path / "o" / "results.json").read_text())["tasks"]["deg"]["count"] == 1
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "s", "--skip-bad-files")
    assert res["tasks"]["deg"]["count"] == 2 and [b["name"] for b in res["tasks"]["deg"]["bad_files"]] == ["b.png"]

    def header_denied(path, *a, **k):
        if Path(path).name == "b.png" and Path(path).parent == deg:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", header_denied)
    with pytest.raises(ImageReadError, match="Permission denied"):
        image_io.image_size(deg / "b.png")


@pytest.mark.parametrize("flags,side", [(["--ssim", "gaussian"], 11), (["--crop-border", "5"], 17),
                                        (["--lpips"], 31)])
def test_images_too_small_to_score_are_bad_files(checkpoint, tmp_path, monkeypatch, flags, side):
    """Failure 10: an image large enough to restore but too small for the metric (Gaussian SSIM's 11x11 window,
    --crop-border, LPIPS's AlexNet) ended in a traceback with nothing written; it is a bad file now."""
    from utils.eval import evaluation, metrics
    monkeypatch.setattr(evaluation, "LPIPS", lambda net, device: (lambda a, b: 0.0))  # no weights needed
    deg, tar = tmp_path / "deg", tmp_path / "tar"
    img = _clean_images()["cat"]
    for name, (h, w) in (("big.png", (H, W)), ("small.png", (side - 1, side + 7))):
        write_image(deg / name, _degrade(img[:h, :w], 0))
        write_image(tar / name, img[:h, :w])
    assert metrics.smallest_scorable_side(*{11: ("gaussian", 0, None), 17: ("skimage", 5, None),
                                            31: ("skimage", 0, "alex")}[side]) == side
    with pytest.raises(UserError, match=rf"small\.png.* too small .*at least {side}x{side}.*partial"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--protocol", "pad",
            *flags)
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "s", "--protocol", "pad",
              "--skip-bad-files", *flags)
    assert res["tasks"]["deg"]["count"] == 1 and res["tasks"]["deg"]["bad_files"][0]["name"] == "small.png"


def test_the_console_protocol_line_says_how_images_are_tiled():
    """Failure 11: with automatic tiling (the default) the console's protocol line printed the rule's text
    twice around an 'x' ("...restored in tilesxautomatic: ... tiles tiles on cpu")."""
    from utils.eval.protocol import Protocol
    from utils.eval.report import protocol_summary
    lines = {tile: protocol_summary({**Protocol(tile=tile).describe(), "device": "cpu"}) for tile in (None, 0, 512)}
    assert lines[None].endswith("fp32, tiled only where an image would not fit the free memory on cpu")
    assert lines[512].endswith("fp32, 512x512 tiles on cpu") and lines[0].endswith("fp32 on cpu")


@pytest.mark.parametrize("tile, fix", [(-8, "--tile 512"), (100, "--tile 96 or 104"), (4, "--tile 512")])
def test_a_tile_the_network_cannot_take_names_0_and_a_usable_tile(tile, fix):
    """--tile -8 and --tile 100 said only "must be a positive multiple of 8", leaving out the documented 0 (never
    tile) and a side that works; the branch that named 0 was never reached."""
    from utils.eval.protocol import Protocol
    with pytest.raises(ValueError) as err:
        Protocol(tile=tile).validate()
    message = str(err.value)
    assert "or 0 never to tile" in message and f"got {tile}" in message and fix in message
    Protocol(tile=0).validate(), Protocol(tile=96).validate()


def test_the_png_input_keeps_its_name_whatever_the_case_of_its_extension():
    """Failure 12: a.PNG beside a.jpg gave a_PNG.png and a_jpg.png; the .png one keeps a.png, as documented."""
    assert output_names(["a.PNG", "a.jpg"]) == ["a.png", "a_jpg.png"]
    assert output_names(["a.Png", "a.JPG", "b.TIF"]) == ["a.png", "a_JPG.png", "b.png"]


def test_fp16_on_the_cpu_and_empty_paths_are_flag_errors_before_anything_is_written(checkpoint, tmp_path, capsys):
    """--precision fp16 on the CPU ended in a traceback after --save was made (and --dry-run called it fine);
    --save "" (an unset variable) restored into the current folder over same-named files."""
    _photos(tmp_path, ["in.png"])
    parser = tester_bary.get_args_parser()
    for argv in (["--precision", "fp16"], ["--precision", "fp16", "--dry-run"]):
        args = parser.parse_args(["--model", str(checkpoint), "--input", str(tmp_path / "in.png"), "--save",
                                  str(tmp_path / "out"), "--device", "cpu", *argv])
        assert tester_bary.run_main(tester_bary.main, args) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: --precision fp16 needs a CUDA device") and "bf16" in line
        assert not (tmp_path / "out").exists()
    for flag in ("--save", "--figs-dir", "--data-root"):
        done = _tester_in(tmp_path, "--input", tmp_path / "in.png", flag, "")
        assert done.returncode == 2 and f"{flag}: an empty path" in done.stderr, (flag, done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


@pytest.mark.parametrize("flags, said", [
    (["--figs-dir", "f"], "--figs-dir f: it chooses the figures --figs draws, and --figs is not given"),
    (["--fig-images", "2", "--figs-dir", "f"], "--figs-dir f --fig-images 2: they choose"),
    (["--tile", "0", "--tile-overlap", "8"], "--tile 0 never tiles, so --tile-overlap 8 would do nothing"),
    (["--tile", "0", "--tile-batch", "2"], "--tile 0 never tiles, so --tile-batch 2 would do nothing"),
    (["--input", "f"], "--data-root BENCH: it holds the --tasks sets, and --input reads no task"),
    (["--degset", "f", "--tarset", "f"], "--data-root BENCH: it holds the --tasks sets, and --degset/--tarset")])
def test_flags_that_do_nothing_without_their_partner_are_refused(bench, checkpoint, tmp_path, capsys, flags, said):
    """--figs-dir/--fig-images without --figs, --tile-overlap/--tile-batch with --tile 0, and --data-root with
    --input or --degset/--tarset were accepted and did nothing."""
    task = [] if "--input" in flags or "--degset" in flags else ["--tasks", "jpeg"]
    said = said.replace("BENCH", str(bench))
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--data-root", str(bench), *task,
                                                     "--save", str(tmp_path / "out"), "--no-progress",
                                                     *(str(tmp_path / f) if f == "f" else f for f in flags)])
    assert tester_bary.run_main(tester_bary.main, args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {said}".replace(" f", f" {tmp_path / 'f'}", 1)) and "drop" in line, line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags, said", [(["--figs"], "--figs draws"), (["--savetar", "t"], "--savetar saves"),
                                         (["--no-images"], "--no-images leaves"), (["--max-images", "1"],
                                                                                  "--max-images cuts"),
                                         (["--lpips"], "--lpips sets how"), (["--compare-paper", "3d"],
                                                                             "--compare-paper 3d sets how"),
                                         (["--crop-border", "4", "--metric-space", "y"],
                                          "--metric-space y --crop-border 4 set how"),
                                         (["--protocol", "pad"], "--protocol pad sets how"),
                                         (["--noise-seed", "3"], "--noise-seed 3 sets how"),
                                         (["--ssim", "gaussian"], "--ssim gaussian sets how"),
                                         (["--skip-unpaired"], "--skip-unpaired sets how")])
def test_flags_that_do_nothing_with_input_are_refused(checkpoint, tmp_path, capsys, flags, said):
    """--input with --figs printed 'restored 1 image(s)', drew nothing and left an empty results/figs/; the scoring
    flags (--lpips, --compare-paper, --crop-border, ...) were accepted and did nothing, as --input scores nothing."""
    _photos(tmp_path, ["in.png"])
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--input", str(tmp_path / "in.png"),
                                                     "--save", str(tmp_path / "out"), "--figs-dir",
                                                     str(tmp_path / "figs"), *flags])
    assert tester_bary.run_main(tester_bary.main, args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {said}") and "drop" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_a_noise_seed_without_a_denoise_task_is_said(bench, checkpoint, tmp_path, capsys):
    """--noise-seed 3 --tasks derain (or --degset/--tarset) ran as if the flag were not there: only denoise tasks
    synthesise noise to seed."""
    base = ["--model", checkpoint, "--data-root", bench, "--save", tmp_path / "o", "--noise-seed", "3", "--dry-run"]
    run(*base, "--tasks", "derain", "dehaze")
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert line == ("warning: --noise-seed 3 has no effect: it only seeds the synthetic noise of denoise tasks, and "
                    "the sets evaluated (derain/Rain100L, dehaze) have none (drop --noise-seed, or evaluate a denoise "
                    "task, e.g. --tasks denoise_25)"), line
    run("--model", checkpoint, "--degset", bench / "jpeg" / "input", "--tarset", bench / "jpeg" / "target", "--save",
        tmp_path / "o", "--noise-seed", "3", "--dry-run")
    assert "--noise-seed 3 has no effect" in capsys.readouterr().err
    run(*base, "--tasks", "derain", "denoise_25")  # a denoise task: the seed is used
    run(*base[:-3], "--tasks", "derain", "--dry-run")  # the default seed is no news
    assert "warning:" not in capsys.readouterr().err


def test_a_compiled_run_says_that_its_first_image_compiles(bench, checkpoint, tmp_path, capsys):
    """--compile default left the first image's progress at 0 for minutes without a word of why."""
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o", "--device", "cpu",
        "--compile", "default", "--dry-run")
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("=> --compile")]
    assert line.startswith("=> --compile default: the first image of each size compiles the network's forward "
                           "(minutes; cached under "), line
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o", "--dry-run")
    assert "--compile" not in capsys.readouterr().out


def test_gpus_on_the_cpu_is_said_by_the_tester(bench, checkpoint, tmp_path, capsys, monkeypatch):
    """tester_bary.py --device cpu --gpus 0 ran on the CPU without a word that --gpus did nothing."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))  # --gpus sets it
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o", "--device", "cpu",
        "--gpus", "0", "--dry-run")
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert line == "warning: --gpus 0 has no effect: --device cpu runs on the CPU (drop --gpus, or pass --device cuda)"


def test_an_image_too_small_says_the_size_the_file_needs(checkpoint, tmp_path):
    """A 207x207 image with --crop-border 100 was '200x200 is too small (at least 207x207 ...)': the file was
    207x207 already; the reference protocol's crop to multiples of 8 makes it 208."""
    deg, tar = _pair_dirs(tmp_path, ["a.png"], ["a.png"])  # 44x61
    with pytest.raises(UserError, match=r"a.png: 40x56 after the crop to multiples of 8 is too small to evaluate "
                                        r"\(at least 67x67 to score with --ssim skimage, --crop-border 30, so a file "
                                        r"of at least 72x72\)"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--crop-border", "30")


def test_a_run_that_scores_nothing_is_an_error(checkpoint, tmp_path):
    """Every image skipped (--skip-bad-files) printed 'restored 0 image(s)' and exited 0."""
    deg, tar = _pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    for name in ("a.png", "b.png"):
        (deg / name).write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"--input .*none of the 2 image\(s\) could be used"):
        run("--model", checkpoint, "--input", deg, "--save", tmp_path / "i", "--skip-bad-files")
    assert len(json.loads((tmp_path / "i" / "results.json").read_text())["skipped_files"]) == 2
    deg, tar = _pair_dirs(tmp_path / "small", ["a.png", "b.png"], ["a.png", "b.png"])  # readable, 44x61
    with pytest.raises(UserError, match=r"deg: none of the 2 image\(s\) could be used"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "d", "--skip-bad-files",
            "--crop-border", "30")
    assert "too small to evaluate" in (tmp_path / "d" / "results.md").read_text()


def test_a_stopped_run_keeps_the_earlier_complete_results(checkpoint, tmp_path):
    """A run stopped at its first image replaced results.json, the only record of an earlier complete run's
    restorations still in --save, with an empty partial one."""
    deg, tar = _pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    first = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    before = {ext: (tmp_path / "o" / f"results.{ext}").read_bytes() for ext in ("json", "csv", "md")}
    with pytest.raises(UserError, match=r"marked partial.*the files there before it started were moved to .*"
                                        r"results\.before-"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--crop-border", "30")
    [kept] = (tmp_path / "o").glob("results.before-*")
    assert {ext: (kept / f"results.{ext}").read_bytes() for ext in before} == before
    assert json.loads((tmp_path / "o" / "results.json").read_text())["partial"]["row"] == "deg"
    assert first["tasks"]["deg"]["count"] == 2


def test_files_a_run_would_replace_are_kept_aside_first(checkpoint, tmp_path, capsys):
    """A finished run replaced, without a word, an earlier run's results.json and any file in --save of a name
    it writes (the default --save is one folder for every run: two folders' IMG_0001.jpg replaced each other)."""
    deg, tar = _pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    save = tmp_path / "o"
    save.mkdir()
    (save / "a.png").write_bytes(b"the user's own a.png")
    (save / "results.json").write_text('{"an earlier run": 1}')
    (save / "other.png").write_bytes(b"not a name this run writes")
    run("--model", checkpoint, "--input", deg, "--save", save)
    [kept] = save.glob("results.before-*")
    assert (kept / "a.png").read_bytes() == b"the user's own a.png"
    assert (kept / "results.json").read_text() == '{"an earlier run": 1}'
    assert (save / "other.png").read_bytes() == b"not a name this run writes" and not (kept / "other.png").exists()
    said = f"2 file(s) of the names this run writes were already in {save}: moved to {kept}/"
    assert said in capsys.readouterr().out
    first = {name: (save / name).read_bytes() for name in ("a.png", "b.png", "results.json")}
    run("--model", checkpoint, "--input", deg, "--save", save)  # the same run again: the first one's files kept
    kept_twice = sorted(set(save.glob("results.before-*")) - {kept})
    assert len(kept_twice) == 1 and {n: (kept_twice[0] / n).read_bytes() for n in first} == first
    # benchmark rows: the restorations in <save>/<row>/ keep their places, and the targets of --savetar too
    _pair_dirs(tmp_path / "bench" / "mine", ["a.png", "b.png"], ["a.png", "b.png"])
    mine = tmp_path / "bench" / "mine"
    (mine / "deg").rename(mine / "input")
    (mine / "tar").rename(mine / "target")
    for _ in range(2):
        run("--model", checkpoint, "--data-root", tmp_path / "bench", "--tasks", "mine", "--save", tmp_path / "t",
            "--savetar", tmp_path / "tt")
    [kept_rows] = (tmp_path / "t").glob("results.before-*")
    [kept_targets] = (tmp_path / "tt").glob("results.before-*")
    assert sorted(p.relative_to(kept_rows).as_posix() for p in kept_rows.rglob("*.png")) == \
        ["mine/a.png", "mine/b.png"]
    assert sorted(p.relative_to(kept_targets).as_posix() for p in kept_targets.rglob("*")) == \
        ["mine", "mine/a.png", "mine/b.png"]


def test_overwrite_never_writes_over_an_image_the_run_reads(checkpoint, tmp_path):
    """`--input q.png --save . --overwrite` replaced the photo q.png by its restoration, and `--degset D --save D
    --overwrite` each degraded image while the run was still reading the set: --overwrite is for the run's own
    earlier outputs among the inputs, never for an input itself."""
    photo = tmp_path / "q.png"
    write_image(photo, _clean_images()["cat"][:H, :W])
    mine = photo.read_bytes()
    with pytest.raises(UserError, match=rf"{photo} is where this run writes, and it is the image {photo} the run "
                                        rf"reads — choose another --save: not even --overwrite writes over"):
        run("--model", checkpoint, "--input", photo, "--save", tmp_path, "--overwrite")
    with pytest.raises(UserError, match="not even --overwrite"):  # said before a model is looked for, or loaded
        run("--model", tmp_path / "missing.pth", "--input", photo, "--save", tmp_path, "--overwrite")
    deg, tar = _pair_dirs(tmp_path / "pairs", ["a.png", "b.png"], ["a.png", "b.png"])
    inputs = {p: p.read_bytes() for p in [*deg.iterdir(), *tar.iterdir()]}
    for flags in (["--save", deg], ["--save", tmp_path / "o", "--savetar", tar]):
        with pytest.raises(UserError, match="not even --overwrite writes over an image the run reads"):
            run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--overwrite", *flags)
    assert photo.read_bytes() == mine and {p: p.read_bytes() for p in inputs} == inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs", "q.png"]  # nothing written, nothing moved
    photos = tmp_path / "photos"  # JPEGs restored into their own folder: the rerun reads a.png as an input
    photos.mkdir()
    _photos(photos, ["a.jpg"])
    run("--model", checkpoint, "--input", photos, "--save", photos, "--overwrite")
    with pytest.raises(UserError, match=rf"the image {photos / 'a.png'} the run reads; it is a restoration the "
                                        rf"earlier results.json in {photos} records, now read as an input"):
        run("--model", checkpoint, "--input", photos, "--save", photos, "--overwrite")


def test_keeping_aside_never_moves_an_input_nor_empties_save_for_a_run_that_cannot_start(checkpoint, tmp_path,
                                                                                        monkeypatch):
    """Review of the keep-aside: an --input image linked from --save was moved away before it was read; a run
    whose LPIPS weights were missing emptied --save before failing; --input --no-images replaced the user's
    a.png in --save unseen; and --input moved results.csv/.md it never writes."""
    from utils.eval import evaluation
    from utils.eval.metrics import MetricUnavailable
    save = tmp_path / "o"
    save.mkdir()
    write_image(save / "a.png", _clean_images()["cat"][:H, :W])
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "a.png").symlink_to(save / "a.png")
    said = r"o/a\.png is where this run writes, and it is the image .*links/a\.png the run reads \(through a link\)"
    with pytest.raises(UserError, match=said + " — choose another --save: not even --overwrite writes over"):
        run("--model", checkpoint, "--input", tmp_path / "links", "--save", save)
    assert (save / "a.png").is_file() and not list(save.glob("results.before-*"))
    with pytest.raises(UserError, match="--no-images leaves --input nothing to do"):
        run("--model", checkpoint, "--input", tmp_path / "links", "--save", tmp_path / "n", "--no-images")
    deg, tar = _pair_dirs(tmp_path / "pairs", ["a.png"], ["a.png"])
    run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "d")
    before = sorted(p.name for p in (tmp_path / "d").iterdir())

    def no_weights(*a, **k):
        raise MetricUnavailable("LPIPS needs its weights")
    monkeypatch.setattr(evaluation, "LPIPS", no_weights)
    with pytest.raises(MetricUnavailable):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "d", "--lpips")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == before  # nothing moved aside
    with pytest.raises(MetricUnavailable):  # nor an empty --save left where there was none
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "e" / "f", "--lpips")
    assert not (tmp_path / "e").exists()
    (save / "results.csv").write_text("mine")
    run("--model", checkpoint, "--input", deg, "--save", save)
    [kept] = save.glob("results.before-*")
    assert (save / "results.csv").read_text() == "mine" and sorted(p.name for p in kept.iterdir()) == ["a.png"]


def test_an_earlier_runs_results_csv_and_md_go_aside_with_its_results_json(checkpoint, tmp_path):
    """An --input run into the --save of a scored run moved its results.json aside but left its results.csv and
    results.md beside the new results.json: two runs' results in one folder, the tables describing the old one."""
    deg, tar = _pair_dirs(tmp_path / "pairs", ["a.png"], ["a.png"])
    save = tmp_path / "o"
    run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", save)
    scored = {n: (save / n).read_bytes() for n in ("results.json", "results.csv", "results.md")}
    run("--model", checkpoint, "--input", deg, "--save", save)
    [kept] = save.glob("results.before-*")
    assert {n: (kept / n).read_bytes() for n in scored} == scored
    assert sorted(p.name for p in save.glob("results.*") if p.is_file()) == ["results.json"]
    # --overwrite replaces what the run writes; the earlier run's json still goes aside with its tables,
    run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "w")
    run("--model", checkpoint, "--input", deg, "--save", tmp_path / "w", "--overwrite")
    [kept] = (tmp_path / "w").glob("results.before-*")
    assert sorted(p.name for p in kept.iterdir()) == ["results.csv", "results.json", "results.md"]
    assert sorted(p.name for p in (tmp_path / "w").glob("results.*") if p.is_file()) == ["results.json"]
    # and a user's own results.md, without an earlier run's json beside it, stays where it is
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.md").write_text("my notes")
    run("--model", checkpoint, "--input", deg, "--save", tmp_path / "mine", "--overwrite")
    assert (tmp_path / "mine" / "results.md").read_text() == "my notes"
    assert not list((tmp_path / "mine").glob("results.before-*"))


def test_names_that_are_not_utf8_and_the_files_permissions(checkpoint, tmp_path):
    """A file name that is not UTF-8 ended the run in a UnicodeEncodeError after scoring, with no .csv or .md
    written; every result file was mode 0600 (mkstemp's), whatever the umask, and an overwritten one became so."""
    deg, tar = tmp_path / b"deg".decode(), tmp_path / "tar"
    img = _clean_images()["cat"]
    odd = os.fsdecode(b"\xff\xfe.png")
    for folder in (deg, tar):
        write_image(folder / odd, img)
        write_image(folder / "plain.png", img)
    save = tmp_path / "o"
    save.mkdir()
    (save / "results.md").write_text("an earlier run's")
    os.chmod(save / "results.md", 0o640)
    old = os.umask(0o022)
    try:
        res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", save)
    finally:
        os.umask(old)
    assert res["tasks"]["deg"]["count"] == 2
    assert "\\udcff\\udcfe.png" in (save / "results.md").read_text() and (save / "results.csv").is_file()
    [kept] = save.glob("results.before-*")  # the earlier file, kept aside whole, mode and all
    assert (kept / "results.md").read_text() == "an earlier run's"
    assert (kept / "results.md").stat().st_mode & 0o777 == 0o640
    for path in (save / "results.json", save / "results.md", save / "results.csv", save / "plain.png", save / odd):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_a_model_flag_that_breaks_the_configuration_is_named_and_degset_dot_names_its_row(checkpoint, tmp_path,
                                                                                          monkeypatch, capsys):
    """--dim 0 was blamed on the checkpoint's model_config; --degset . gave a row with an empty name."""
    parser = tester_bary.get_args_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--dim", "0"])
    assert "argument --dim: must be >= 1" in capsys.readouterr().err
    deg, tar = _pair_dirs(tmp_path, ["a.png"], ["a.png"])
    with pytest.raises(UserError, match=r"^--heads 1 2 4 5: .*zero\.pth names its own network and configuration "
                                        r"\(BaryNet, heads 1 2 4 8\), and is built from them: drop --heads$"):
        run("--model", checkpoint, "--input", deg, "--save", tmp_path / "o", "--heads", "1", "2", "4", "5")
    monkeypatch.chdir(deg)
    res = run("--model", checkpoint, "--degset", ".", "--tarset", tar, "--save", tmp_path / "o")
    assert list(res["tasks"]) == ["deg"]


def test_two_testers_may_not_write_one_save_folder(checkpoint, tmp_path):
    """Two runs into one --save interleaved: the second's results.json listed its 6 images, the first's other
    24 restorations sat beside them in no record."""
    from utils.output_lock import OutputFolderBusy, OutputLock
    deg, tar = _pair_dirs(tmp_path, ["a.png"], ["a.png"])
    with OutputLock(tmp_path / "o", "--save", "tester"):  # as another tester running there holds it
        for flags in (["--degset", deg, "--tarset", tar], ["--input", deg], ["--input", deg, "--dry-run"]):
            with pytest.raises(OutputFolderBusy, match=r"--save .*/o is in use by another tester \(PID "):
                run("--model", checkpoint, *flags, "--save", tmp_path / "o")
        assert not (tmp_path / "o" / "results.json").exists() and not (tmp_path / "o" / "a.png").exists()
    assert run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")["tasks"]["deg"]


@pytest.mark.parametrize("flag", ["--savetar", "--figs-dir"])
def test_two_testers_may_not_write_one_savetar_or_figs_folder(checkpoint, tmp_path, flag):
    """Only --save was held: two testers given one --savetar (or one --figs-dir, whose default every run shares)
    replaced each other's targets or figures without a word. A refused run leaves no folder behind, also those
    it made before reaching the busy one (the locks go in the order of the paths: o, o/targets, shared)."""
    from utils.output_lock import OutputFolderBusy, OutputLock
    deg, tar = _pair_dirs(tmp_path, ["a.png"], ["a.png"])
    shared, save = tmp_path / "shared", tmp_path / "o"
    outputs = ["--save", save, flag, shared] + (["--figs", "--savetar", save / "targets"] if flag == "--figs-dir"
                                                else [])
    busy = (rf"^{flag} {re.escape(str(shared))} is in use by another tester \(PID {os.getpid()} on [^)]*\); wait "
            rf"for it to finish or choose another {flag}$")
    with OutputLock(shared, flag, "tester"):  # as another tester running there holds it
        for dry in ([], ["--dry-run"]):
            with pytest.raises(OutputFolderBusy, match=busy):
                run("--model", checkpoint, "--degset", deg, "--tarset", tar, *outputs, *dry)
            assert not save.exists()
        assert os.listdir(shared) == [".lock"]
    run("--model", checkpoint, "--degset", deg, "--tarset", tar, *outputs)
    assert (shared / ("a.png" if flag == "--savetar" else "deg.png")).is_file()
    assert not (shared / ".lock").exists() and not (save / ".lock").exists()


@pytest.mark.parametrize("same", ["--figs-dir is --save", "--figs-dir links to --save", "--savetar is --save"])
def test_an_output_folder_named_twice_is_held_once_and_one_inside_another_has_its_own_lock(checkpoint, tmp_path,
                                                                                          monkeypatch, same):
    """A folder two flags name is locked once (a second flock from this process would refuse the first), and a
    folder inside another (--figs-dir o/figs) has a lock of its own: each is held while the run writes."""
    from utils.eval import tester as tester_module
    from utils.output_lock import OutputFolderBusy, OutputLock
    deg, tar = _pair_dirs(tmp_path, ["a.png"], ["a.png"])
    save = tmp_path / "o"
    save.mkdir()
    (tmp_path / "link").symlink_to(save, target_is_directory=True)
    if same == "--savetar is --save":  # with --no-images: the targets alone are written there
        outputs, held = ["--no-images", "--savetar", save, "--figs", "--figs-dir", save / "figs"], [save / "figs"]
    else:
        twin = save if same == "--figs-dir is --save" else tmp_path / "link"
        outputs, held = ["--no-images", "--figs", "--figs-dir", twin, "--savetar", save / "targets"], [twin]
        held.append(save / "targets")
    real = tester_module.evaluate_sets

    def checking(*args, **kwargs):  # the other folders are held by this run while it writes
        for folder in [save, *held]:
            with pytest.raises(OutputFolderBusy, match="in use by another tester"):
                OutputLock(folder, "--save", "tester").check_free()
        return real(*args, **kwargs)
    monkeypatch.setattr(tester_module, "evaluate_sets", checking)
    res = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", save, *outputs)
    assert res["tasks"]["deg"]["count"] == 1
    assert not list(save.rglob(".lock"))


def test_a_name_near_the_file_systems_limit_is_restored(checkpoint, tmp_path):
    """A 255-byte file name ended in a traceback (ENAMETOOLONG): the temporary beside it was longer still."""
    name = "a" * 251 + ".png"
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / name, _clean_images()["cat"])
    res = run("--model", checkpoint, "--input", tmp_path / "in", "--save", tmp_path / "o")
    assert [r["name"] for r in res["restored"]] == [name] and (tmp_path / "o" / name).is_file()


def test_a_non_finite_output_stops_the_run_instead_of_being_scored(checkpoint, tmp_path, monkeypatch):
    """NaN became black and inf white in the quantised output, which was scored (9 dB) and saved silently."""
    deg, tar = _pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    real = protocol_module.restore

    def overflowing(model, x, *args, **kwargs):
        out = real(model, x, *args, **kwargs)
        out[..., :4, :] = float("nan")
        return out
    monkeypatch.setattr(protocol_module, "restore", overflowing)
    with pytest.raises(UserError, match=r"a\.png: the network's output has \d+ non-finite value.*--precision fp32"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    assert not (tmp_path / "o" / "a.png").exists()
    assert json.loads((tmp_path / "o" / "results.json").read_text())["tasks"]["deg"]["count"] == 0
    protocol_module.Protocol(tile_overlap=128).validate()  # automatic tiling passes over tiles it cannot take
    with pytest.raises(ValueError, match="--tile-overlap 1020 leaves no step in any tile"):
        protocol_module.Protocol(tile_overlap=1020).validate()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_keeps_the_results_so_far_as_ctrl_c_does(checkpoint, tmp_path, signame):
    """`timeout`, `kill` and job schedulers send SIGTERM, a closed terminal (an ssh session that dropped) SIGHUP:
    the tester died at once and left only its lock in --save (no results.json, no error line); it now stops as on
    Ctrl-C, the results so far written."""
    import signal
    import time
    if not hasattr(signal, signame):
        pytest.skip(f"{signame} is POSIX's")
    (tmp_path / "in").mkdir()
    img = _clean_images()["cat"][:32, :32]
    for i in range(400):
        write_image(tmp_path / "in" / f"{i:03d}.png", img)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "tester_bary.py", "--model", str(checkpoint), "--input",
                             str(tmp_path / "in"), "--save", str(out), "--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.png"))) < 2:  # the first image recorded once the second is on disk
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = json.loads((out / "results.json").read_text())
    signum = getattr(signal, signame)  # the shell's 128 + N, and the signal named (it said "interrupted", 130)
    assert proc.returncode == 128 + signum and saved["partial"]["error"] == f"stopped by {signame}", err
    assert 1 <= len(saved["restored"]) < 400
    assert [line for line in err.splitlines() if line.startswith("error:")] == err.strip().splitlines()[-1:]


def test_input_takes_several_paths_and_says_what_it_leaves_out(checkpoint, tmp_path, capsys):
    """`--input photos/*.png` (a shell glob) was "unrecognized arguments: <every file>"; files of other kinds in
    an --input folder (x.gif, notes.txt) were left out without a word."""
    deg, _ = _pair_dirs(tmp_path, ["a.png", "b.png", "c.png"], [])
    (deg / "x.gif").write_bytes(b"GIF89a")
    (deg / "notes.txt").write_text("mine")
    other = tmp_path / "more"
    write_image(other / "a.png", _clean_images()["cat"][:H, :W])
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--input", str(deg / "a.png"),
                                                     str(deg / "b.png"), str(other), "--save", str(tmp_path / "o")])
    res = tester_bary.main(args)
    assert sorted(Path(r["output"]).name for r in res["restored"]) == ["a.png", "a_2.png", "b.png"]
    assert "left out" not in capsys.readouterr().err  # single files and a folder of images only
    res = tester_bary.main(tester_bary.get_args_parser().parse_args(
        ["--model", str(checkpoint), "--input", str(deg), "--save", str(tmp_path / "o2")]))
    assert len(res["restored"]) == 3
    err = capsys.readouterr().err
    assert "note: 2 file(s) of the --input folders are not images of a kind read here" in err
    assert "notes.txt" in err and "x.gif" in err and "neither a file nor a folder" not in err
    assert "subfolder" not in err
    write_image(deg / "2024" / "d.png", _clean_images()["cat"][:H, :W])  # was left out without a word
    res = tester_bary.main(tester_bary.get_args_parser().parse_args(
        ["--model", str(checkpoint), "--input", str(deg), "--save", str(tmp_path / "o3")]))
    assert len(res["restored"]) == 3
    err = capsys.readouterr().err
    assert f"note: 1 subfolder(s) of the --input folders are not read (pass them too, e.g. --input {deg}/*/)" in err
    assert str(deg / "2024") in err
    (deg / "gone.png").symlink_to(tmp_path / "moved-away.png")  # were left out without a word
    os.mkfifo(deg / "pipe.png")
    res = tester_bary.main(tester_bary.get_args_parser().parse_args(
        ["--model", str(checkpoint), "--input", str(deg), "--save", str(tmp_path / "o4")]))
    assert len(res["restored"]) == 3
    err = capsys.readouterr().err
    assert "note: 2 entries of the --input folders are neither a file nor a folder" in err
    assert "gone.png" in err and "pipe.png" in err
    with pytest.raises(ImageReadError, match=r"x\.gif is not an image file of a kind this project reads \(\.png"):
        run("--model", checkpoint, "--input", deg / "x.gif", "--save", tmp_path / "o3")


def test_a_tiled_image_shows_its_tiles_progress(checkpoint, tmp_path, capsys, monkeypatch):
    """A 2000x1500 image in 256-pixel tiles sat at "0/1 [00:00<?]" for 34 s: the images' bar moves once an
    image is done, and nothing showed the tiles, nor how long the rest would take."""
    from utils.eval import evaluation
    from utils.eval import protocol as protocol_module
    write_image(tmp_path / "in" / "big.png", np.tile(_clean_images()["cat"], (3, 3, 1)))
    seen = []
    real = protocol_module.restore_tiled

    def spy(*a, progress=None, **k):
        return real(*a, progress=lambda d, t: (seen.append((d, t)), progress(d, t)), **k)
    monkeypatch.setattr(protocol_module, "restore_tiled", spy)
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--input", str(tmp_path / "in"),
                                                     "--save", str(tmp_path / "o"), "--tile", "32", "--tile-overlap",
                                                     "8", "--tile-batch", "2"])
    tester_bary.main(args)
    total = seen[0][1]
    assert seen[0] == (0, total) and seen[-1] == (total, total) and total > 2
    err = capsys.readouterr().err  # the tiles' bar, on the console (drawn as tqdm's refresh interval allows)
    assert re.search(rf"tiles:\s+0%\|[^|]*\| 0/{total} \[", err), err
    bar = evaluation.TileBar(enabled=False)
    bar(0, 10)
    assert bar.bar is None  # --no-progress: no bar


def test_transparency_and_colour_profiles_the_png_does_not_keep_are_said(checkpoint, tmp_path, capsys):
    """An RGBA PNG came out RGB (the colour under transparent pixels showing) and a photo's ICC profile was
    dropped (a Display P3 photo shifts colour), with no word on the console or in results.json."""
    cat = _clean_images()["cat"]
    (tmp_path / "in").mkdir()
    Image.fromarray(np.dstack([cat, np.full(cat.shape[:2], 128, np.uint8)])).save(tmp_path / "in" / "alpha.png")
    Image.fromarray(cat).save(tmp_path / "in" / "profiled.png", icc_profile=b"\0" * 128)
    Image.fromarray(cat).save(tmp_path / "in" / "plain.png")
    from PIL import ImageCms
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(cat).save(tmp_path / "in" / "srgb.png", icc_profile=srgb)  # what the PNG is read as anyway
    res = run("--model", checkpoint, "--input", tmp_path / "in", "--save", tmp_path / "o")
    kept = {r["name"]: r.get("not_kept", []) for r in res["restored"]}
    assert kept == {"alpha.png": ["transparency"], "profiled.png": ["colour profile"], "plain.png": [],
                    "srgb.png": []}
    out = capsys.readouterr()
    said = out.out + out.err
    assert "the transparency of 1 image is not kept in the restored PNG" in said and "alpha.png" in said
    assert "the colour profile of 1 image is not kept" in said
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert {r["name"]: r.get("not_kept", []) for r in saved["restored"]} == kept


def test_an_animation_restored_as_its_first_frame_is_said(checkpoint, tmp_path, capsys):
    """An animated WebP came back as a one-frame PNG of its first frame, the other frames dropped with no word."""
    cat = _clean_images()["cat"]
    frames = [Image.fromarray(cat), Image.fromarray(255 - cat)]
    frames[0].save(tmp_path / "clip.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    res = run("--model", checkpoint, "--input", tmp_path / "clip.webp", "--save", tmp_path / "o")
    assert res["restored"][0]["not_kept"] == ["animation"]
    out = capsys.readouterr()
    assert "the animation of 1 image is not kept in the restored PNG (only the first frame" in out.out + out.err


def test_an_input_folder_without_images_says_what_it_holds_and_the_fix(checkpoint, tmp_path):
    """`--input photos/` with the photos in photos/2023/ and photos/2024/, or only .gif/.heic files, was
    'the folder holds no images': untrue for the latter, and no fix for either."""
    (tmp_path / "photos" / "2023").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "2023" / "a.png")
    with pytest.raises(ImageReadError, match=r"holds no images \(its 1 subfolder is not read: pass it, e\.g\. "
                                             r"--input .*photos/\*/\)$"):
        run("--model", checkpoint, "--input", tmp_path / "photos", "--save", tmp_path / "o")
    (tmp_path / "gifs").mkdir()
    (tmp_path / "gifs" / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(ImageReadError, match=r"holds no images \(its 1 file is not of a kind read here "
                                             r"\(\.png .*\), e\.g\. x\.gif: convert it, e\.g\. to PNG\)$"):
        run("--model", checkpoint, "--input", tmp_path / "gifs", "--save", tmp_path / "o")


def test_one_folder_named_twice_is_restored_once(checkpoint, tmp_path, monkeypatch):
    """`--input /abs/photos photos` restored every image twice (a.png and a_2.png): paths were compared as text."""
    deg, _ = _pair_dirs(tmp_path, ["a.png", "b.png"], [])
    monkeypatch.chdir(tmp_path)
    res = run("--model", checkpoint, "--input", deg, "deg", "deg/a.png", "--save", tmp_path / "o")
    assert sorted(Path(r["output"]).name for r in res["restored"]) == ["a.png", "b.png"]


def test_a_refused_run_moves_nothing_and_links_are_inputs_of_their_own(checkpoint, tmp_path):
    """Second review of the keep-aside: --save's files were moved before --savetar's collision with an input
    was found (a refused run had moved files); two links to one image in --input became one input; a link
    that loops among the outputs was a RuntimeError traceback."""
    deg, tar = tmp_path / "deg", tmp_path / "tar"
    for folder in (deg, tar):  # multiples of 8: the target saved as scored is the target's own size
        write_image(folder / "a.png", _clean_images()["cat"][:40, :56])
    run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "r", "--savetar",
        tmp_path / "st")
    (tar / "a.png").unlink()
    (tar / "a.png").symlink_to(tmp_path / "st" / "a.png")  # the target read is the --savetar file
    before = sorted(p.name for p in (tmp_path / "r").iterdir())
    with pytest.raises(UserError, match=r"--savetar"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "r", "--savetar",
            tmp_path / "st")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == before  # nothing moved aside
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "2024-01-01.png", _clean_images()["cat"][:H, :W])
    (tmp_path / "in" / "latest.png").symlink_to("2024-01-01.png")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "latest.png").symlink_to("latest.png")  # a link to itself
    res = run("--model", checkpoint, "--input", tmp_path / "in", "--save", tmp_path / "o")
    assert sorted(Path(r["output"]).name for r in res["restored"]) == ["2024-01-01.png", "latest.png"]
    [kept] = (tmp_path / "o").glob("results.before-*")
    assert (kept / "latest.png").is_symlink()


def test_a_jpeg_decoded_over_damage_is_scored_as_pillow_reads_it_and_the_results_say_so(checkpoint, tmp_path,
                                                                                        capsys):
    """libjpeg decodes a JPEG over damaged data (grey where it lost it), as the reference's Pillow does in
    silence: the tester scored and restored it with no word in its results."""
    import cv2
    ok, buf = cv2.imencode(".jpg", _clean_images()["cat"][:, :, ::-1].copy())
    b = bytearray(buf.tobytes())
    scan = b.find(b"\xff\xda")
    b[scan + 40:scan + 44] = b"\xff\xd0\xff\xd5"  # two restart markers where there are none
    deg, tar = _pair_dirs(tmp_path, [], ["a.png"])
    deg.mkdir()
    (deg / "a.jpg").write_bytes(bytes(b))
    results = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")
    [row] = next(iter(results["tasks"].values()))["images"]
    said = "a.jpg: the JPEG decoder says 'Corrupt JPEG data: premature end of data segment'"
    assert row["decoder_warnings"] == ["degraded " + said] and row["psnr"] > 0  # not the target, of the same name
    assert f"Decoded over damaged data (1; scored as decoded, as the reference reads them): degraded {said}" in \
        (tmp_path / "o" / "results.md").read_text()
    assert f"warning: {deg / 'a.jpg'}: the JPEG decoder says" in capsys.readouterr().err
    restored = run("--model", checkpoint, "--input", deg, "--save", tmp_path / "i")
    assert restored["restored"][0]["decoder_warnings"] == [said]


@pytest.mark.parametrize("task", ["denoise_-5", "denoise_2.5", "denoise"])
def test_a_mistyped_noise_level_is_named_before_anything_is_looked_for(task, tmp_path, monkeypatch):
    """--tasks denoise_-5 was taken for a benchmark folder of that name, and said so only once a checkpoint had
    been found and loaded (without one, the error was the missing checkpoint)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        tester_bary.main(tester_bary.get_args_parser().parse_args(["--tasks", "derain", task]))
    assert str(err.value).startswith(f"--tasks: {task!r} is not a denoising task") and "denoise_25" in str(err.value)
    assert list(tmp_path.iterdir()) == []
    assert tasks_module.task_layout("denoise_15_real").folder == "denoise_15_real"  # a folder of the user's own


class ClosedPipe:
    """Standard output or error into a pipe whose reader goes away at the first text ``gone_at`` holds true for
    (``tester_bary.py ... | head``): that write and every later one fail as the closed pipe's do."""

    def __init__(self, gone_at):
        self.gone_at, self.gone, self.said = gone_at, False, []

    def write(self, text):
        if self.gone or self.gone_at(text):
            self.gone = True
            raise BrokenPipeError(32, "Broken pipe")
        self.said.append(text)
        return len(text)

    def flush(self):
        if self.gone:
            raise BrokenPipeError(32, "Broken pipe")

    def isatty(self):
        return False

    def fileno(self):  # no descriptor to point at /dev/null: the guard passes over it
        raise io.UnsupportedOperation("fileno")


def test_a_table_printed_into_a_closed_pipe_loses_no_results(bench, checkpoint, tmp_path, monkeypatch):
    """`tester_bary.py ... | head -3`: the table was printed before results.* were written, so the broken pipe
    (a BrokenPipeError traceback) lost every score of the run."""
    monkeypatch.setattr(sys, "stdout", ClosedPipe(lambda text: "PSNR" in text))
    deg, tar = bench / "derain" / "Rain100L" / "input", bench / "derain" / "Rain100L" / "target"
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--degset", str(deg), "--tarset",
                                                     str(tar), "--save", str(tmp_path / "out"), "--no-progress"])
    assert tester_bary.run_main(tester_bary.main, args) == PIPE_CLOSED_STATUS
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "partial" not in saved and saved["tasks"]["input"]["count"] == len(list_images(deg))


def test_a_progress_bar_into_a_closed_pipe_stops_as_ctrl_c_does(checkpoint, tmp_path, monkeypatch):
    """`tester_bary.py ... 2>&1 | head`: the progress bar's write into the closed pipe ended the run with a
    traceback and no record; the run now stops as on Ctrl-C, its record written (here the bar's first write,
    before the first image: a bar redraws when time has passed, so a later one is not a test's to choose)."""
    (tmp_path / "in").mkdir()
    _photos(tmp_path / "in", [f"{i}.png" for i in range(4)])
    monkeypatch.setattr(sys, "stderr", ClosedPipe(lambda text: "restore:" in text))
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--input", str(tmp_path / "in"),
                                                     "--save", str(tmp_path / "out")])
    assert tester_bary.run_main(tester_bary.main, args) == PIPE_CLOSED_STATUS
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["partial"] == {"row": "input", "file": str(tmp_path / "in" / "0.png"),
                                "error": "the output's reader has gone (a closed pipe)"}
    assert saved["restored"] == []


def test_a_closed_pipe_between_tasks_keeps_the_tasks_done(bench, checkpoint, tmp_path, monkeypatch):
    """The second task's progress bar meets the closed pipe: the first task's scores are written whole, the run
    marked partial at the second."""
    monkeypatch.setattr(sys, "stderr", ClosedPipe(lambda text: text.lstrip("\r").startswith("[2/2] dehaze")))
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--data-root", str(bench), "--tasks",
                                                     "derain", "dehaze", "--no-images", "--save", str(tmp_path / "o")])
    assert tester_bary.run_main(tester_bary.main, args) == PIPE_CLOSED_STATUS
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["partial"]["row"] == "dehaze" and "partial" not in saved["tasks"]["derain/Rain100L"]
    assert saved["tasks"]["derain/Rain100L"]["count"] == len(list_images(bench / "derain" / "Rain100L" / "input"))


def test_results_that_cannot_be_written_are_still_shown(bench, checkpoint, tmp_path, monkeypatch, capsys):
    """results.* are written before the table is printed (a closed pipe must not lose them); a full disk there
    must not lose the scores from the screen as well."""
    import errno

    from utils.eval import tester as tester_module

    def full_disk(results, save):
        raise OSError(errno.ENOSPC, "No space left on device", str(save / "results.json"))
    monkeypatch.setattr(tester_module, "write_results", full_disk)
    deg, tar = bench / "derain" / "Rain100L" / "input", bench / "derain" / "Rain100L" / "target"
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--degset", str(deg), "--tarset",
                                                     str(tar), "--save", str(tmp_path / "out"), "--no-progress"])
    assert tester_bary.run_main(tester_bary.main, args) == 1
    said = capsys.readouterr()
    assert "PSNR" in said.out and said.err.strip().splitlines()[-1].startswith("error: disk full while writing ")


def _disk_fails_after(monkeypatch, images: int, error_number: int) -> None:
    """Image files from now on: the first ``images`` are written, then each write fails with ``error_number``
    (ENOSPC: a full disk; EFBIG: a file-size limit) inside :func:`utils.files.atomic_write`, as a real one does."""
    import errno

    from utils import files

    written = []

    def replace_file(path, data):
        def write(fh):
            if len(written) >= images:
                fh.write(data[:10])
                raise OSError(error_number, os.strerror(error_number))
            fh.write(data)
        files.atomic_write(path, write, size=len(data))
        written.append(path)
        return Path(path)
    assert error_number in (errno.ENOSPC, errno.EFBIG)
    monkeypatch.setattr(image_io, "replace_file", replace_file)


def test_a_disk_that_fills_midway_keeps_the_scores_so_far(bench, checkpoint, tmp_path, monkeypatch, capsys):
    """A full disk at the second restored image stopped the run with the disk's error alone: the first image's
    scores were neither shown nor written (hours of a benchmark lost). Now it stops as a bad image does: the
    table and results.*, marked partial, hold the images done, and the error line names the file."""
    import errno
    _disk_fails_after(monkeypatch, 1, errno.ENOSPC)
    deg, tar = bench / "derain" / "Rain100L" / "input", bench / "derain" / "Rain100L" / "target"
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--degset", str(deg), "--tarset",
                                                     str(tar), "--save", str(tmp_path / "out"), "--no-progress"])
    assert tester_bary.run_main(tester_bary.main, args) == 1
    said = capsys.readouterr()
    assert "| input (partial) | 1 |" in said.out  # the table of the images done is shown
    error = said.err.strip().splitlines()[-1]
    assert error.startswith("error: disk full: writing rain-2.png to ") and "results so far" in error
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["tasks"]["input"]["count"] == 1 and saved["partial"]["file"].endswith("rain-2.png")
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["rain-1.png"]  # no torn or hidden file


def test_a_file_size_limit_midway_is_one_line_and_keeps_the_record(checkpoint, tmp_path, monkeypatch, capsys):
    """EFBIG (ulimit -f, FAT32's 4 GiB) was a traceback and lost results.json of the images restored before it."""
    import errno
    src = tmp_path / "in"
    src.mkdir()
    _photos(src, ["a.png", "b.png"])
    _disk_fails_after(monkeypatch, 1, errno.EFBIG)
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--input", str(src), "--save",
                                                     str(tmp_path / "out"), "--no-progress"])
    assert tester_bary.run_main(tester_bary.main, args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: file too large: writing b.png to {tmp_path / 'out'} ")
    assert "ulimit" in lines[-1]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [e["name"] for e in saved["restored"]] == ["a.png"] and saved["partial"]["file"].endswith("b.png")


def test_an_input_already_called_its_output_name_keeps_it(checkpoint, tmp_path):
    """b.PNG and b.png (a case-sensitive disk) gave b.PNG -> b.png and b.png -> b_2.png: the restoration called
    b.png was another image's. An input already called its output's name keeps it, whatever sorts first."""
    assert output_names(["b.PNG", "b.png"]) == ["b_2.png", "b.png"]
    assert output_names(["a.jpg", "a.png", "a_jpg.png"]) == ["a_jpg_2.png", "a.png", "a_jpg.png"]  # an earlier
    # run's output read again keeps its name
    assert output_names(["a.PNG", "a.jpg"]) == ["a.png", "a_jpg.png"]  # no input called a.png: as before
    src = tmp_path / "in"
    src.mkdir()
    _photos(src, ["b.png", "b.PNG"])
    if len(list(src.iterdir())) < 2:
        pytest.skip("a case-blind file system holds one of b.png and b.PNG")
    res = run("--model", checkpoint, "--input", src, "--save", tmp_path / "out")
    assert {Path(r["output"]).name for r in res["restored"]} == {"b.png", "b_2.png"}
    for name in ("b.png", "b.PNG"):  # the zero model returns its input: each output is its own image's
        out = tmp_path / "out" / ("b.png" if name == "b.png" else "b_2.png")
        assert np.array_equal(read_image(out), read_image(src / name))


def test_results_json_says_which_input_each_restoration_is_of(checkpoint, tmp_path):
    """--input d1 d2 with an a.png in each recorded two entries {"name": "a.png"} for a.png and a_2.png: which
    photo a_2.png restored was not said anywhere. Each entry now names its input as given."""
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        _photos(tmp_path / d, ["a.png"] if d == "d1" else ["b.png", "a.png"])
    run("--model", checkpoint, "--input", tmp_path / "d1", tmp_path / "d2", "--save", tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    pairs = {Path(e["output"]).name: e["input"] for e in saved["restored"]}
    assert pairs == {"a.png": str(tmp_path / "d1" / "a.png"), "a_2.png": str(tmp_path / "d2" / "a.png"),
                     "b.png": str(tmp_path / "d2" / "b.png")}
    for out, src in pairs.items():  # the zero model returns its input
        assert np.array_equal(read_image(tmp_path / "out" / out), read_image(src))


def _tree(folder):
    """Every file under ``folder`` but the kept-aside runs', as paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.relative_to(folder).parts[0].startswith("results.before-"))


def test_an_earlier_runs_restorations_this_run_does_not_write_go_aside_with_its_results(bench, checkpoint, tmp_path,
                                                                                        capsys):
    """A run scoring other tasks (or fewer images, or none saved) into the --save of an earlier run moved aside
    the earlier results.* and the files of its own names, but left the earlier run's other restorations beside
    the new results.json, which does not describe them: one folder, images and scores of two runs."""
    save = tmp_path / "t"
    first = run("--model", checkpoint, "--data-root", bench, "--tasks", "dehaze", "jpeg", "--save", save)
    assert [im["output"] for im in first["tasks"]["jpeg"]["images"]] == \
        ["jpeg/astro.png", "jpeg/cat.png", "jpeg/coffee.png"]  # the record says which files the run wrote
    (save / "dehaze" / "notes.txt").write_text("the user's own")  # never written by the tester: stays
    earlier = {p: (save / p).read_bytes() for p in _tree(save) if p != "dehaze/notes.txt"}
    capsys.readouterr()
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--max-images", "2", "--save", save)
    [kept] = save.glob("results.before-*")
    assert {p: (kept / p).read_bytes() for p in _tree(kept)} == earlier  # the earlier run whole, at its places
    assert _tree(save) == ["dehaze/notes.txt", "jpeg/astro.png", "jpeg/cat.png", "results.csv", "results.json",
                           "results.md"]
    said = (f"=> 5 file(s) of the names this run writes were already in {save}, and 4 more that the earlier "
            f"results.json there records (this run does not write them): moved to {kept}/")
    assert said in capsys.readouterr().out
    # --no-images: the earlier restorations go with their record; folders left empty go too
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--no-images")
    assert _tree(save) == ["dehaze/notes.txt", "results.csv", "results.json", "results.md"]
    assert not (save / "jpeg").exists()
    # --input: the earlier run's restorations of photos not given again go aside too
    photos = tmp_path / "photos"
    photos.mkdir()
    _photos(photos, ["a.png", "b.png"])
    run("--model", checkpoint, "--input", photos, "--save", tmp_path / "i")
    (photos / "b.png").unlink()
    run("--model", checkpoint, "--input", photos, "--save", tmp_path / "i")
    [kept] = (tmp_path / "i").glob("results.before-*")
    assert _tree(tmp_path / "i") == ["a.png", "results.json"] and _tree(kept) == ["a.png", "b.png", "results.json"]
    # --overwrite (--save among the inputs): what this run writes is replaced, as it says, but the earlier record
    # goes aside with the restorations it records that this run does not write; the images read stay
    shutil.copytree(photos, tmp_path / "o")
    _photos(tmp_path / "o", ["c.jpg", "d.jpg"])
    run("--model", checkpoint, "--input", tmp_path / "o" / "c.jpg", tmp_path / "o" / "d.jpg", "--save", tmp_path / "o",
        "--overwrite")
    capsys.readouterr()
    run("--model", checkpoint, "--input", tmp_path / "o" / "c.jpg", "--save", tmp_path / "o", "--overwrite")
    [kept] = (tmp_path / "o").glob("results.before-*")
    assert _tree(kept) == ["d.png", "results.json"]
    assert _tree(tmp_path / "o") == ["a.png", "c.jpg", "c.png", "d.jpg", "results.json"]
    said = "=> an earlier run's results.json and 1 file it records that this run does not write were in "
    assert said + f"{tmp_path / 'o'}: moved to {kept}/\n" in capsys.readouterr().out


def test_a_record_names_no_file_outside_its_folder(tmp_path):
    """The earlier results.json decides what is moved aside: no entry of it may name a file elsewhere."""
    from utils.eval.outputs import recorded_outputs
    record = {"restored": [{"output": "/elsewhere/a.png"}, {"output": ".."}, {"output": 3}, "b.png"],
              "tasks": {"r": {"images": [{"output": "r/x.png"}, {"output": "../x.png"}, {"output": "/etc/x.png"},
                                         {"output": "r/../../x.png"}, {"output": ""}, {"name": "y.png"}]},
                        "s": "not a row"}}
    assert recorded_outputs(record, tmp_path) == [tmp_path / "a.png", tmp_path / "r" / "x.png"]
    assert recorded_outputs(["not", "a", "record"], tmp_path) == [] == recorded_outputs({"an earlier run": 1}, tmp_path)
    # names the tester never gives a restoration: its lock, its record, a checkpoint, a user's notes, a hidden
    # file, another row's folder
    foreign = {"restored": [{"output": n} for n in (".lock", "results.json", "zero.pth", "notes.md", ".x.png")],
               "tasks": {"r": {"images": [{"output": n} for n in ("s/x.png", "r/.lock", "r/a.pth", "r/s/x.png")]}}}
    assert recorded_outputs(foreign, tmp_path) == []


def test_a_record_moves_nothing_the_run_reads_or_holds(bench, checkpoint, tmp_path):
    """An earlier results.json decided what moved aside: one naming .lock and the --model checkpoint moved both
    (a second tester could then take the lock), and restorations scored in their own folder (--degset there,
    --max-images 2) left that folder with 2 of its 3 images."""
    save = tmp_path / "res"
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save)
    shutil.copytree(save / "jpeg", tmp_path / "tar")  # targets of the restorations' sizes and names
    run("--model", checkpoint, "--degset", save / "jpeg", "--tarset", tmp_path / "tar", "--save", save,
        "--max-images", "2")
    assert sorted(p.name for p in (save / "jpeg").iterdir()) == ["astro.png", "cat.png", "coffee.png"]
    model = save / "zero.pth"
    shutil.copy(checkpoint, model)
    (save / "notes.md").write_text("mine")
    record = json.loads((save / "results.json").read_text())
    record["restored"] = [{"output": n} for n in (".lock", "zero.pth", "notes.md")]
    (save / "results.json").write_text(json.dumps(record))
    run("--model", model, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--no-images")
    assert model.is_file() and (save / "notes.md").read_text() == "mine"
    assert not any(p.name in (".lock", "zero.pth", "notes.md") for p in save.glob("results.before-*/*"))


def test_temporaries_a_killed_run_left_are_removed_and_nothing_else(bench, checkpoint, tmp_path, capsys):
    """kill -9 while an image or results.json was being written left its hidden temporary in --save for good;
    the next run into the folder removes those of writers that are gone, and nothing else."""
    import time
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    two_minutes_ago = time.time() - 120
    save = tmp_path / "t"
    files = {  # name: removed
        f"jpeg/.cat.png.{gone.pid}.ab12cd34.tmp": True,  # its writer is gone
        f".results.json.{gone.pid}.zz99z_9z.tmp": True,
        f"jpeg/.astro.png.{os.getpid()}.ab12cd34.tmp": False,  # being written
        f".notes.txt.{gone.pid}.ab12cd34.tmp": False,  # not a name the tester writes
        f".cat.png.{gone.pid}.tmp": False,  # not atomic_write's naming
        f".cat.png.{gone.pid}.ab12cd3.tmp": False,
        f"cat.png.{gone.pid}.ab12cd34.tmp": False,
        "scratch.tmp": False,
        f"other/.cat.png.{gone.pid}.ab12cd34.tmp": False,  # in no folder this run writes
        ".holiday.png.original.tmp": False,  # a user's file named like the older, pid-less temporaries
    }
    for name, _ in files.items():
        (save / name).parent.mkdir(parents=True, exist_ok=True)
        (save / name).write_bytes(b"partial")
        os.utime(save / name, (two_minutes_ago, two_minutes_ago))
    an_hour_ago = time.time() - 3600  # past the 15 minutes after which a pid-less temporary counts as stale
    os.utime(save / ".holiday.png.original.tmp", (an_hour_ago, an_hour_ago))
    fresh = save / f".coffee.png.{gone.pid}.ab12cd34.tmp"  # too fresh to judge: a writer on another machine
    fresh.write_bytes(b"partial")
    link = save / f".link.png.{gone.pid}.ab12cd34.tmp"
    link.symlink_to(save / "scratch.tmp")
    os.utime(link, (two_minutes_ago, two_minutes_ago), follow_symlinks=False)
    unlocked = tmp_path / "targets" / f".cat.png.{gone.pid}.ab12cd34.tmp"  # --savetar has no lock: another
    unlocked.parent.mkdir()                                                # tester may be writing it
    unlocked.write_bytes(b"partial")
    os.utime(unlocked, (two_minutes_ago, two_minutes_ago))
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--savetar",
        tmp_path / "targets")
    assert all((save / name).exists() != removed for name, removed in files.items())
    assert fresh.exists() and link.is_symlink() and unlocked.exists()
    said = [line for line in capsys.readouterr().out.splitlines() if "temporary" in line]
    removed = [save / n for n in (f".results.json.{gone.pid}.zz99z_9z.tmp", f"jpeg/.cat.png.{gone.pid}.ab12cd34.tmp")]
    assert said == [f"=> removed 2 unfinished temporary files that a killed run left: {removed[0]}, {removed[1]}"]


def test_an_earlier_degset_runs_restorations_this_run_does_not_write_go_aside(checkpoint, tmp_path, capsys):
    """A --degset run records its restorations as <name>.png, in --save itself: those a later run into the folder
    does not write (--max-images) go aside with the record, counted as they are (one the user deleted is not
    said to have moved)."""
    deg, tar = _pair_dirs(tmp_path, ["a.png", "b.png", "c.png"], ["a.png", "b.png", "c.png"])
    save = tmp_path / "o"
    first = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", save)
    assert [im["output"] for im in first["tasks"]["deg"]["images"]] == ["a.png", "b.png", "c.png"]
    (save / "c.png").unlink()
    capsys.readouterr()
    run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", save, "--max-images", "1")
    [kept] = save.glob("results.before-*")
    assert _tree(kept) == ["a.png", "b.png", "results.csv", "results.json", "results.md"]
    assert _tree(save) == ["a.png", "results.csv", "results.json", "results.md"]
    said = (f"=> 4 file(s) of the names this run writes were already in {save}, and 1 more that the earlier "
            f"results.json there records (this run does not write them): moved to {kept}/")
    assert said in capsys.readouterr().out


def test_a_recorded_row_folder_that_links_out_of_save_is_not_emptied(bench, checkpoint, tmp_path):
    """The earlier record names dehaze/<name>.png; the user moved that row's restorations to a folder of their own
    and left a link to it in --save: the next run kept aside what the record names through the link, taking
    the user's files out of their folder."""
    save = tmp_path / "t"
    run("--model", checkpoint, "--data-root", bench, "--tasks", "dehaze", "jpeg", "--save", save, "--max-images", "1")
    mine = tmp_path / "mine"
    (save / "dehaze").rename(mine)
    (save / "dehaze").symlink_to(mine, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--max-images", "1")
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    assert (save / "dehaze").is_symlink()
    assert not any(p.match("*/dehaze/*") for p in save.glob("results.before-*/**/*"))


def test_an_earlier_record_with_savetar_keeps_aside_in_save_alone(bench, checkpoint, tmp_path):
    """The restorations an earlier record names lie in --save: kept aside there, not again under --savetar (whose
    folder they are not in: a traceback) or --figs-dir."""
    save, targets, figs = tmp_path / "t", tmp_path / "tt", tmp_path / "figs"
    outputs = ["--save", save, "--savetar", targets, "--figs", "--figs-dir", figs, "--max-images", "1"]
    run("--model", checkpoint, "--data-root", bench, "--tasks", "dehaze", "jpeg", *outputs)
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", *outputs)
    [kept] = save.glob("results.before-*")
    assert "dehaze/astro_0.8_0.1.png" in _tree(kept) and not (save / "dehaze").exists()
    [kept_targets] = targets.glob("results.before-*")
    assert _tree(kept_targets) == ["jpeg/astro.png"]  # the target of this run's name; the dehaze one stays
    assert _tree(targets) == ["dehaze/astro_0.8_0.1.png", "jpeg/astro.png"]
    [kept_figs] = figs.glob("results.before-*")
    assert _tree(kept_figs) == ["jpeg.png"]


def test_an_earlier_run_whose_files_cannot_all_be_moved_aside_stays_whole(bench, checkpoint, tmp_path, monkeypatch):
    """An earlier run of denoise_15, derain and dehaze in --save, its derain restorations in a folder they cannot
    be moved out of (chattr +i): a run of denoise_15 and derain there stopped at them with 'permission denied',
    its results.* and denoise_15 restorations already moved aside and its dehaze ones left in --save with no
    results.json describing them. Now it stops with everything where it was, and says so."""
    save = tmp_path / "r1"
    run("--model", checkpoint, "--data-root", bench, "--tasks", "denoise_15", "derain", "dehaze", "--save", save,
        "--max-images", "1")
    before = _contents(save)
    assert any(k.startswith("derain/") for k in before) and any(k.startswith("dehaze/") for k in before)
    _refuse_moves(monkeypatch, lambda src, dst: save / "derain" in src.parents)
    with pytest.raises(UserError, match=r"derain/.*could not be moved aside \(Operation not permitted\), so "
                                        r"nothing was moved: the \d+ file\(s\) moved before it were moved back"):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "denoise_15", "derain", "--save", save,
            "--max-images", "1")
    assert _contents(save) == before and not list(save.glob("results.before-*"))


def test_a_run_without_figs_holds_no_figs_folder(bench, checkpoint, tmp_path, monkeypatch):
    """Without --figs nothing is drawn: the default --figs-dir (results/figs, shared by every run started here)
    is neither created nor locked, so a tester drawing figures there does not refuse this one."""
    from utils.output_lock import OutputLock
    monkeypatch.chdir(tmp_path)
    args = ["--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--max-images", "1"]
    run(*args, "--save", tmp_path / "a")
    assert not (tmp_path / "results").exists()
    with OutputLock(tmp_path / "results" / "figs", "--figs-dir", "tester"):  # another tester drawing figures
        assert run(*args, "--save", tmp_path / "b")["tasks"]["jpeg"]["count"] == 1
        assert run(*args, "--save", tmp_path / "c", "--dry-run")["dry_run"]


def test_a_run_refused_at_a_later_lock_removes_a_folder_it_made_that_holds_another(checkpoint, tmp_path):
    """--savetar t with --save t/o (neither there yet) and a busy --figs-dir: the locks went --save, --savetar,
    so t/o made t, whose own lock found it there; refused, t/o went but t was left behind, empty. In the order
    of the paths t comes first and both go."""
    from utils.output_lock import OutputFolderBusy, OutputLock
    deg, tar = _pair_dirs(tmp_path, ["a.png"], ["a.png"])
    shared, t = tmp_path / "shared", tmp_path / "t"
    with OutputLock(shared, "--figs-dir", "tester"):
        with pytest.raises(OutputFolderBusy, match="in use by another tester"):
            run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", t / "o", "--savetar", t, "--figs",
                "--figs-dir", shared)
    assert not t.exists()


def test_keeping_aside_removes_each_folder_it_empties_inner_ones_first(tmp_path):
    """keep_aside removes the folders below the kept folder's place that the move left empty, and their parents
    left empty in turn: a parent tried before its emptied child (or the child alone) stayed, empty; a folder
    holding anything else, and the place itself, stay."""
    from utils.files import keep_aside
    save = tmp_path / "o"
    for rel in ("derain/Rain100L/a.png", "derain/Rain100L/b.png", "jpeg/c.png", "jpeg/notes.txt", "x/y/z/d.png"):
        (save / rel).parent.mkdir(parents=True, exist_ok=True)
        (save / rel).write_text(rel)
    moved = [save / "derain" / "Rain100L" / "a.png", save / "derain" / "Rain100L" / "b.png", save / "jpeg" / "c.png",
             save / "x" / "y" / "z" / "d.png"]
    kept = keep_aside(moved, save / "results")
    assert sorted(p.relative_to(save).as_posix() for p in save.rglob("*") if kept not in (p, *p.parents)) == \
        ["jpeg", "jpeg/notes.txt"]
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()) == \
        ["derain/Rain100L/a.png", "derain/Rain100L/b.png", "jpeg/c.png", "x/y/z/d.png"]


def test_keeping_aside_twice_in_one_second_makes_a_second_folder_and_merges_nothing(tmp_path, monkeypatch):
    """Two runs keeping files aside within one second get ``.before-<time>`` and ``.before-<time>-2``: the second
    run's files never land in (and replace the files of) the first run's kept folder."""
    from utils import files
    monkeypatch.setattr(files.time, "strftime", lambda fmt: "20250101-120000")
    save = tmp_path / "o"
    save.mkdir()
    kept = []
    for run_text in ("first run", "second run"):
        (save / "a.png").write_text(run_text)
        kept.append(files.keep_aside([save / "a.png"], save / "results"))
    assert [k.name for k in kept] == ["results.before-20250101-120000", "results.before-20250101-120000-2"]
    assert [(k / "a.png").read_text() for k in kept] == ["first run", "second run"]


def test_keeping_aside_passes_over_a_file_moved_away_meanwhile(tmp_path):
    """A file another run moved away between the listing and the move is passed over: the others are still kept
    aside, and no error ends the run halfway through its moves."""
    from utils.files import keep_aside
    save = tmp_path / "o"
    save.mkdir()
    (save / "b.png").write_text("b")
    kept = keep_aside([save / "a.png", save / "b.png"], save / "results")
    assert sorted(p.name for p in kept.iterdir()) == ["b.png"] and not (save / "b.png").exists()


def test_an_earlier_run_across_save_and_figs_dir_stays_whole_when_one_cannot_move(bench, checkpoint, tmp_path,
                                                                                  monkeypatch):
    """Keep-aside was all or nothing in each folder but not across them: an earlier run's figure in --figs-dir that
    could not be moved stopped the run with --save's files already moved aside (results.json and restorations in
    results.before-*, the figure still beside them in --figs-dir). Now --save's move is undone too, and said."""
    save, figs = tmp_path / "s", tmp_path / "figs"
    outputs = ["--save", save, "--figs", "--figs-dir", figs, "--max-images", "1"]
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "dehaze", *outputs)
    saved, drawn = _contents(save), _contents(figs)
    assert saved and drawn
    _refuse_moves(monkeypatch, lambda src, dst: figs in src.parents)
    with pytest.raises(UserError, match=r"figs/.*could not be moved aside \(Operation not permitted\), so nothing "
                                        r"was moved; the \d+ file\(s\) moved aside from 1 other folder\(s\) before "
                                        r"it were moved back"):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "dehaze", *outputs)
    assert _contents(save) == saved and _contents(figs) == drawn
    assert not list(save.glob("results.before-*")) and not list(figs.glob("results.before-*"))


def test_keeping_aside_together_whose_move_back_fails_names_the_folder_holding_what_is_aside(tmp_path, monkeypatch):
    """Across folders as within one: a file of an earlier folder that cannot move back is named, with the folder
    that holds it."""
    from utils.files import keep_aside_together
    a, b = tmp_path / "a", tmp_path / "b"
    for f in (a / "x" / "1.png", a / "2.png", b / "3.png"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f.name)
    _refuse_moves(monkeypatch, lambda src, dst: src == b / "3.png" or dst == a / "2.png")
    with pytest.raises(UserError) as caught:
        keep_aside_together([([a / "x" / "1.png", a / "2.png"], a / "results"), ([b / "3.png"], b / "results")])
    [kept] = a.glob("results.before-*")
    assert _contents(kept) == {"2.png": b"2.png"} and _contents(a) == {"x/1.png": b"1.png",
                                                                       f"{kept.name}/2.png": b"2.png"}
    assert (f"{b / '3.png'} could not be moved aside (Operation not permitted), so nothing was moved; and file(s) "
            f"moved aside from other folders before it could not be moved back, for {a / '2.png'} (Operation not "
            f"permitted): they are still in {kept}/ (1), each at the place it had beside that folder — move them "
            f"back from there, then make its folder") in str(caught.value)
    assert not list(b.glob("results.before-*"))


@pytest.mark.parametrize("landed", ["before", "after"])
@pytest.mark.parametrize("after", [0, 1, 2])
def test_a_stop_signal_while_keeping_aside_moves_everything_back(tmp_path, monkeypatch, after, landed):
    """Ctrl-C or SIGTERM (which the scripts raise as KeyboardInterrupt) landing among keep-aside's moves left the
    earlier run half in its folder and half aside: the rollback ran only for OSError. ``after``: the renames done
    before the stop; it lands in the next one, ``landed`` before or after the kernel renamed."""
    from utils.files import keep_aside, keep_aside_together
    a, b = tmp_path / "a", tmp_path / "b"
    for f in (a / "x" / "1.png", a / "2.png", b / "3.png"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f.name)
    before = {**{f"a/{k}": v for k, v in _contents(a).items()}, **{f"b/{k}": v for k, v in _contents(b).items()}}
    rename, count = os.rename, []

    def stopped(src, dst, *args, **kwargs):  # one stop, as one signal; the moves back are not stopped
        count.append(src)
        if len(count) != after + 1:
            return rename(src, dst, *args, **kwargs)
        if landed == "after":
            rename(src, dst, *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "rename", stopped)
    with pytest.raises(KeyboardInterrupt):
        keep_aside_together([([a / "x" / "1.png", a / "2.png"], a / "results"), ([b / "3.png"], b / "results")])
    monkeypatch.setattr(os, "rename", rename)
    assert {**{f"a/{k}": v for k, v in _contents(a).items()}, **{f"b/{k}": v for k, v in _contents(b).items()}} \
        == before
    assert not list(a.glob("results.before-*")) and not list(b.glob("results.before-*"))
    count.clear()
    monkeypatch.setattr(os, "rename", stopped)
    with pytest.raises(KeyboardInterrupt):
        keep_aside([a / "x" / "1.png", a / "2.png", b / "3.png"], tmp_path / "results")
    monkeypatch.setattr(os, "rename", rename)
    assert not list(tmp_path.glob("results.before-*")) and (a / "x" / "1.png").is_file() and (b / "3.png").is_file()


def _refuse_moves(monkeypatch, refused):
    """``os.rename`` refusing (EPERM, as for an immutable folder: ``chattr +i``) each move for which
    ``refused(source, destination)`` is true; the others are done. Root can write a folder without write
    permission, so a refused rename is stood in for."""
    rename = os.rename

    def refusing(src, dst, *args, **kwargs):
        if refused(Path(src), Path(dst)):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(src), None, str(dst))
        return rename(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "rename", refusing)


def _contents(folder):
    """Every file under ``folder`` with its bytes, by path relative to it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_keeping_aside_that_cannot_move_a_file_moves_back_what_it_had_moved(tmp_path, monkeypatch):
    """A file that could not be moved (its folder immutable) ended keep_aside halfway: the files before it were
    in the kept folder, those after it in their folder, and the error (permission denied) did not say so. Now
    what had moved moves back, the kept folder is removed, and the error names the file and says nothing moved."""
    from utils.files import keep_aside
    save = tmp_path / "o"
    rels = ["results.json", "denoise/a.png", "derain/demo/rain-1.png", "dehaze/c.png"]  # moved in this order
    for rel in rels:
        (save / rel).parent.mkdir(parents=True, exist_ok=True)
        (save / rel).write_text(rel)
    before = _contents(save)
    _refuse_moves(monkeypatch, lambda src, dst: src.parent.name == "demo")
    with pytest.raises(UserError, match=re.escape(f"{save / 'derain' / 'demo' / 'rain-1.png'} could not be moved "
                                                  f"aside (Operation not permitted), so nothing was moved: the 2 "
                                                  f"file(s) moved before it were moved back — make its folder")):
        keep_aside([save / rel for rel in rels], save / "results")
    assert _contents(save) == before and not list(save.glob("results.before-*"))


def test_keeping_aside_whose_move_back_fails_too_names_the_folder_holding_what_is_aside(tmp_path, monkeypatch):
    """A file that could not be moved back after another could not be moved is not lost track of: the error says
    which folder holds it (and at its place there), and what did move back is back."""
    from utils.files import keep_aside
    save = tmp_path / "o"
    rels = ["results.json", "denoise/a.png", "derain/demo/rain-1.png"]
    for rel in rels:
        (save / rel).parent.mkdir(parents=True, exist_ok=True)
        (save / rel).write_text(rel)
    before = _contents(save)
    _refuse_moves(monkeypatch, lambda src, dst: src.parent.name == "demo" or dst == save / "denoise" / "a.png")
    with pytest.raises(UserError, match="could not be moved aside") as caught:
        keep_aside([save / rel for rel in rels], save / "results")
    [kept] = save.glob("results.before-*")
    assert _contents(kept) == {"denoise/a.png": b"denoise/a.png"}
    assert _contents(save) == {k if k != "denoise/a.png" else f"{kept.name}/{k}": v for k, v in before.items()}
    assert (f"moving back what had moved before it failed too, for {save / 'denoise' / 'a.png'} (Operation not "
            f"permitted): 1 file(s) are still in {kept}/, each at the place it had in {save} — move them back from "
            f"there, then make its folder") in str(caught.value)


def test_a_record_whose_row_is_a_dot_folder_names_nothing(tmp_path):
    """A task key "..", "." or "" in an edited results.json made "../x.png" (or "/x.png") a restoration of that
    row: a file of --save's parent, or of the root, to be moved aside."""
    from utils.eval.outputs import recorded_outputs
    record = {"tasks": {row: {"images": [{"output": f"{row}/x.png"}]} for row in ("..", ".", "")}}
    assert recorded_outputs(record, tmp_path / "save") == []


def test_an_earlier_restoration_read_through_a_link_stays_for_the_run(checkpoint, tmp_path):
    """--input links/again.png, a link to b.png that the earlier run in --save restored and records: the record's
    files this run does not write went aside, this run's own input with them, and the run stopped at it ("image
    not found")."""
    photos, save = tmp_path / "photos", tmp_path / "s"
    photos.mkdir()
    _photos(photos, ["a.png", "b.png"])
    run("--model", checkpoint, "--input", photos, "--save", save)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "again.png").symlink_to(save / "b.png")
    res = run("--model", checkpoint, "--input", tmp_path / "links" / "again.png", "--save", save)
    assert [r["output"] for r in res["restored"]] == [str(save / "again.png")]
    [kept] = save.glob("results.before-*")
    assert _tree(kept) == ["a.png", "results.json"]
    assert _tree(save) == ["again.png", "b.png", "results.json"]


def test_an_earlier_two_level_rows_restorations_go_aside_with_its_parent_folder(bench, checkpoint, tmp_path):
    """A row of two levels (derain/Rain100L) an earlier run wrote and this one does not: its restorations go aside
    with the record, and both folders they leave empty go too, the inner one first (not left beside the new
    results.json, which does not describe them)."""
    save = tmp_path / "t"
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "jpeg", "--save", save, "--max-images", "1")
    assert (save / "derain" / "Rain100L").is_dir()
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--max-images", "1")
    [kept] = save.glob("results.before-*")
    assert _tree(kept) == ["derain/Rain100L/rain-1.png", "jpeg/astro.png", "results.csv", "results.json",
                           "results.md"]
    assert not (save / "derain").exists()
    assert _tree(save) == ["jpeg/astro.png", "results.csv", "results.json", "results.md"]


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
    deg, tar = _pair_dirs(tmp_path, ["a.png"], ["a.png"])
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
    _interrupt_restoring_at(5, monkeypatch)
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
    before = _photos(src, ["a.jpg"])
    deg, tar = _pair_dirs(tmp_path, ["b.jpg"], ["b.jpg"])
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


def test_results_record_the_checkpoints_digest(bench, checkpoint, tmp_path):
    """results.json named the checkpoint by its path only; a fresh run in the checkpoint's folder later writes other
    weights under that very name (the earlier ones moved to run.before-*/), and nothing told the two apart."""
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--no-images", "--save", tmp_path / "a")
    made = json.loads((tmp_path / "a" / "results.json").read_text())["provenance"]
    assert made["model_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
