"""The data doctor (utils/data/doctor.py) and --check-data of the tester and both trainers, on tiny layouts."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _train_data import (
    _write,
    add_listed_ids,
    damage_middle,
    make_test_tree,
    make_train_tree,
    make_val_tree,
    smooth_image,
    train_flags,
    unpack_flat,
)

import tester_bary
import trainer_bary
from utils.data import data_report, doctor, integrity
from utils.eval.tasks import find_task_sets
from utils.train.options import get_args_parser as train_parser
from utils.train.options import resolve_data_file_dir

REPO = Path(__file__).resolve().parents[1]
TINY = {"denoise/bsd68": 3, "derain/rain100l": 3, "dehaze": 3, "deblur": 3, "lowlight": 3}
DE_5D = ["derain", "dehaze", "deblur", "denoise_25", "lowlight"]


@pytest.fixture
def tiny_counts(monkeypatch):
    """The paper's test-set counts replaced by the tiny layout's 3 (the same dict the scripts use)."""
    for key, n in TINY.items():
        monkeypatch.setitem(doctor.TEST_EXPECTED, key, n)


def check_tester(*argv) -> int:
    return tester_bary.main(tester_bary.get_args_parser().parse_args([*map(str, argv), "--check-data"]))


def check_trainer(tree: dict, out: Path, *extra, de_type=DE_5D) -> int:
    flags = train_flags(tree, out, de_type=de_type)
    flags[flags.index("--data_file_dir") + 1] = str(tree["data_file_dir"])
    return trainer_bary.main(train_parser().parse_args([*flags, *map(str, extra), "--check-data"]))


def truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


# --------------------------------------------------------------------------- a complete layout

def test_complete_test_layout_passes_without_a_model(tmp_path, tiny_counts, capsys):
    root = make_test_tree(tmp_path / "test")
    # no --model (and one that does not exist): --check-data never loads one, and writes nothing
    assert check_tester("--data-root", root, "--save", tmp_path / "out") == 0
    assert check_tester("--data-root", root, "--model", tmp_path / "none.pth", "--tasks", "denoise_15", "denoise_50",
                  "derain") == 0
    assert not (tmp_path / "out").exists()
    out = capsys.readouterr().out
    assert "everything needed is present and well-formed" in out and "FAIL" not in out
    report = doctor.check_test_data(root)
    assert [(s.name, s.found, s.expected, s.status) for s in report.sets] == [
        ("denoise/bsd68", 3, 3, "ok"), ("derain/Rain100L", 3, 3, "ok"), ("dehaze", 3, 3, "ok"),
        ("deblur", 3, 3, "ok"), ("lowlight", 3, 3, "ok")]
    assert report.files_read == 3 + 4 * 6 and report.exit_status == 0
    # the rows are the tester's own sets (one denoise row serves every sigma)
    names = {s.name.replace("denoise_15/", "denoise/") for s in find_task_sets(
        ["denoise_15", "derain", "dehaze", "deblur", "lowlight"], root)}
    assert names == {s.name for s in report.sets}
    sigmas = doctor.check_test_data(root, ["denoise_15", "denoise_50"]).sets
    assert len(sigmas) == 1 and sigmas[0].used_by == ("denoise_15", "denoise_50")


def test_a_bad_input_file_gets_one_full_stop_and_no_pair_to_remove(tmp_path, capsys):
    """--check-data on --input read "... Replace or remove it.. Fix: re-download or replace it (or remove it,
    and its pair)": --input images have no pair."""
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    assert check_tester("--input", tmp_path / "bad.png") == 1
    out = capsys.readouterr().out
    assert ".." not in out and "its pair" not in out and "Replace or remove it" not in out, out
    assert "Fix: replace it, or leave it out of --input" in out, out


def test_input_images_over_the_pixel_limit_fail_the_check_as_they_fail_the_run(tmp_path, capsys):
    """--check-data --input passed images the run then refused: it checked readability only, not --max-pixels
    (nor the default 100 Mpx of a header that says 100000x100000). The folder column is the inputs' common one."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write(tmp_path / "a" / "small.png", np.zeros((10, 10, 3), np.uint8))
    _write(tmp_path / "b" / "wide.png", np.zeros((10, 30, 3), np.uint8))
    assert check_tester("--input", tmp_path / "a" / "small.png", tmp_path / "b" / "wide.png") == 0
    assert check_tester("--input", tmp_path / "a" / "small.png", tmp_path / "b" / "wide.png",
                        "--max-pixels", "200") == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'b' / 'wide.png'} is 30x10 = 300 pixels, over the 200 pixels limit. Fix: downscale it, " \
           f"or raise the limit (tester_bary.py --max-pixels N)" in out
    assert "small.png" not in out.split("FAIL", 1)[1] and f"  {tmp_path}\n" in out
    huge = bytearray((tmp_path / "a" / "small.png").read_bytes())
    huge[16:24] = (100_000).to_bytes(4, "big") * 2  # the IHDR's width and height: 10 Gpx
    (tmp_path / "huge.png").write_bytes(bytes(huge))
    assert check_tester("--input", tmp_path / "huge.png") == 1
    assert "is 100000x100000 = 10000.0 Mpx, over the 100.0 Mpx limit" in capsys.readouterr().out


def test_a_small_pixel_limit_is_said_in_pixels(tmp_path, tiny_counts, capsys):
    """--max-pixels 1000 gave rows "40x40 = 0.0 Mpx, over the 0.0 Mpx limit"."""
    root = make_test_tree(tmp_path / "test")
    assert check_tester("--data-root", root, "--tasks", "deblur", "--max-pixels", "1000") == 1
    out = capsys.readouterr().out
    assert "GOPR0.png is 40x40 = 1,600 pixels, over the 1,000 pixels limit" in out and "0.0 Mpx" not in out, out


def test_complete_training_layout_passes_both_trainers(tmp_path, capsys):
    tree = make_train_tree(tmp_path, five_d=True, n=3, id_lists=True)
    assert check_trainer(tree, tmp_path / "run") == 0
    out = capsys.readouterr().out
    assert "everything needed is present and well-formed" in out
    for fam in ("denoise", "derain", "dehaze", "deblur", "lowlight"):
        assert any(line.startswith(fam) and " ok " in line for line in out.splitlines()), fam
    assert not (tmp_path / "run").exists()  # no output folder, lock, log or checkpoint
    # the DDP trainer, started without torchrun (no process group is set up)
    flags = train_flags(tree, tmp_path / "run", de_type=DE_5D)
    flags[flags.index("--data_file_dir") + 1] = str(tree["data_file_dir"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "trainer_bary_ddp.py"), *flags, "--check-data"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "training data for --de-type derain dehaze deblur denoise_25 lowlight" in done.stdout
    assert not (tmp_path / "run").exists()


def test_a_validation_image_that_does_not_decode_fails_the_trainers_check(tmp_path, capsys):
    """--check-data said "validation ok" of a complete PNG with bytes damaged in its middle, which stopped the run
    at its first validation: the validation images (few, read after each epoch) are each decoded."""
    tree = make_train_tree(tmp_path, n=3, id_lists=True)
    deg, tar = make_val_tree(tmp_path, n=3)
    bad = damage_middle(tar / "norain-2.png")
    assert check_trainer(tree, tmp_path / "run", "--degset", deg, "--tarset", tar, de_type=["derain"]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("validation"))
    assert "FAIL" in row, out
    assert f"cannot decode image {bad}: the file is damaged (libpng error: " in out
    assert (f"Fix: replace it, remove it and its pair ({deg / 'rain-2.png'}), pass --skip-bad-files to validate "
            f"without the pair, or pass --degset '' --tarset '' to train without validation") in out
    damage_middle(tree["derain"] / "gt" / "norain-1.png")  # a training image is decoded only if its ending is wrong
    (tar / "norain-2.png").unlink()
    (deg / "rain-2.png").unlink()
    assert check_trainer(tree, tmp_path / "run", "--degset", deg, "--tarset", tar, de_type=["derain"]) == 0


def test_a_data_folder_the_check_would_not_read_is_said(tmp_path, capsys):
    """--check-data --de_type derain --deblur_dir X checked derain alone and said nothing of X."""
    tree = make_train_tree(tmp_path, five_d=True, n=3, id_lists=True)
    assert check_trainer(tree, tmp_path / "run", "--deblur_dir", tree["deblur"], de_type=["derain"]) == 0
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert line.startswith(f"warning: --deblur-dir {tree['deblur']} has no effect: --de-type derain does "
                           "not train deblur"), line


# --------------------------------------------------------------------------- each problem, named with a fix

def test_test_set_problems_are_named_with_a_fix(tmp_path, tiny_counts, capsys):
    root = make_test_tree(tmp_path / "test")
    rain = root / "derain" / "Rain100L"
    (rain / "target" / "norain-2.png").unlink()                                    # a missing target
    _write(rain / "target" / "norain-9.png", smooth_image(np.random.default_rng(1), 40))  # an unpaired extra
    _write(root / "dehaze" / "input" / "0001_0.8_0.2.png", np.zeros((32, 40, 3), np.uint8))  # size mismatch
    truncate(root / "lowlight" / "high" / "1.png")                                # a truncated PNG
    for f in (root / "deblur" / "input").iterdir():                               # an empty set
        f.unlink()
    assert check_tester("--data-root", root) == 1
    out = capsys.readouterr().out
    expected_lines = [
        f"{rain / 'input' / 'rain-2.png'} has no target: expected at {rain / 'target' / 'norain-2.png'}. Fix: add "
        f"that file",
        f"target {rain / 'target' / 'norain-9.png'} has no degraded image: expected at "
        f"{rain / 'input' / 'rain-9.png'}. Fix: add that file, or move",
        f"{root / 'dehaze' / 'input' / '0001_0.8_0.2.png'} is 32x40 (height x width) but its target "
        f"{root / 'dehaze' / 'target' / '0001.png'} is 40x40. Fix: replace one",
        f"{root / 'lowlight' / 'high' / '1.png'} is cut short: it ends before its image data, and does not decode. "
        f"Fix: re-download",
        f"no images in {root / 'deblur' / 'input'}/. Fix: put the degraded images of deblur there",
    ]
    for line in expected_lines:
        assert line in out, line
    report = doctor.check_test_data(root)
    status = {s.name: s.status for s in report.sets}
    assert status == {"denoise/bsd68": "ok", "derain/Rain100L": "FAIL", "dehaze": "FAIL", "deblur": "FAIL",
                      "lowlight": "FAIL"}
    kinds = {(p.kind, Path(p.file).name) for p in report.all_problems()}
    assert {("no target", "rain-2.png"), ("no input", "norain-9.png"), ("size mismatch", "0001_0.8_0.2.png"),
            ("truncated", "1.png"), ("empty", "input")} <= kinds
    assert all(p.fix for p in report.all_problems())
    assert "=> 5 errors in 4 places" in out


def test_download_layouts_get_a_move_or_rename_fix(tmp_path):
    root = tmp_path / "test"
    rng = np.random.default_rng(2)
    for i in (1, 2):  # Rain100L as downloaded: rain-N and norain-N side by side
        _write(root / "derain" / "Rain100L" / f"rain-{i}.png", smooth_image(rng, 32))
        _write(root / "derain" / "Rain100L" / f"norain-{i}.png", smooth_image(rng, 32))
    _write(root / "dehaze" / "hazy" / "0001_0.8_0.2.png", smooth_image(rng, 32))  # SOTS: hazy/ and gt/
    _write(root / "dehaze" / "gt" / "0001.png", smooth_image(rng, 32))
    report = doctor.check_test_data(root, ["derain", "dehaze"])
    fixes = [p.fix for p in report.all_problems()]
    rain = root / "derain" / "Rain100L"
    assert f"move it into {rain / 'input'}/" in fixes and f"move it into {rain / 'target'}/" in fixes
    dehaze = root / "dehaze"
    assert (f"rename {dehaze / 'hazy'}/ to {dehaze / 'input'}/; rename {dehaze / 'gt'}/ to {dehaze / 'target'}/"
            in fixes)
    assert report.exit_status == 1


def test_training_problems_are_named_with_a_fix(tmp_path, capsys):
    tree = make_train_tree(tmp_path, five_d=True, n=3, id_lists=True)
    (tree["derain"] / "gt" / "norain-2.png").unlink()                           # a missing target
    truncate(tree["dehaze"] / "original" / "0001.png")                           # a truncated PNG
    _write(tree["lowlight"] / "low" / "1.png", np.zeros((48, 64, 3), np.uint8))  # size mismatch
    _write(tree["lowlight"] / "high" / "extra.png", np.zeros((64, 64, 3), np.uint8))  # an unpaired extra
    _write(tree["derain"] / "gt" / "norain-3.png", np.zeros((20, 30, 3), np.uint8))  # a target too small
    for f in (tree["deblur"] / "sharp").iterdir():       # an empty set: its image lies one folder down
        f.unlink()
    _write(tree["deblur"] / "sharp" / "GOPR0372_07_00" / "000047.png", np.zeros((64, 64, 3), np.uint8))
    assert check_trainer(tree, tmp_path / "run") == 1
    out = capsys.readouterr().out
    for text in (f"{tree['derain'] / 'rainy' / 'rain-2.png'} has no target: expected at "
                 f"{tree['derain'] / 'gt' / 'norain-2.png'}. Fix: add that file, or remove",
                 f"{tree['dehaze'] / 'original' / '0001.png'} is cut short",
                 f"{tree['lowlight'] / 'low' / '1.png'} is 48x64 (height x width) but its target "
                 f"{tree['lowlight'] / 'high' / '1.png'} is 64x64",
                 f"{tree['lowlight'] / 'high' / 'extra.png'} pairs with no degraded image, so --lowlight-dir "
                 f"training does not use it. Fix: add its pair at {tree['lowlight'] / 'low' / 'extra.png'}",
                 f"no images in {tree['deblur'] / 'sharp'}/. Fix: {tree['deblur'] / 'sharp'} has 1 image in its "
                 f"subfolders (GOPR0372_07_00/ 1), and only those directly in it are read",
                 f"{tree['derain'] / 'gt' / 'norain-3.png'} is 20x30, smaller than --patch-size 32"):
        assert text in out, text
    assert "rain-3.png is 20x30" not in out.replace("norain-3.png is 20x30", "")  # the degraded one is 64x64
    assert not (tmp_path / "run").exists()


def test_listed_ids_absent_are_warnings_unless_strict(tmp_path, capsys):
    tree = make_train_tree(tmp_path, n=3, id_lists=True)
    add_listed_ids(tree, "denoise", [f"gone_{i}.png" for i in range(5)])
    de3 = ("denoise_15", "denoise_25", "denoise_50", "derain", "dehaze")
    assert check_trainer(tree, tmp_path / "run", de_type=de3) == 0
    out = capsys.readouterr().out
    assert "listed id absent (warning, 5):" in out and "... and 2 more" in out
    assert f"{tree['denoise'] / 'gone_0.png'} is listed in" in out
    assert ["denoise", "3", "8", "warn"] in [line.split()[:4] for line in out.splitlines()]  # 3 of 8 listed
    assert check_trainer(tree, tmp_path / "run", "--strict-ids", de_type=de3) == 1
    assert "listed id absent (error, 5):" in capsys.readouterr().out


def test_a_list_missing_from_the_list_folder_is_a_warning_naming_it(tmp_path):
    """--check-data with a --data-file-dir that lacks hazy/hazy_outside.txt compared the scan's count with the
    authors' 72,135 and advised completing the download; the trainer scans that family instead of the list."""
    tree = make_train_tree(tmp_path, n=2, id_lists=True)
    (tree["data_file_dir"] / "hazy" / "hazy_outside.txt").unlink()
    dirs = {k: str(v) for k, v in tree.items() if k != "data_file_dir"}
    report = doctor.check_training_data(["derain", "dehaze"], dirs, tree["data_file_dir"], 32)
    rain, haze = report.sets
    assert not [p for p in rain.problems if p.kind == "no id list"]
    lines = [p.line() for p in haze.problems if p.kind == "no id list"]
    assert lines == [f"{tree['data_file_dir']} has no hazy/hazy_outside.txt: the trainer takes every image a scan of "
                     f"{tree['dehaze']} finds (4), not the authors' list. Fix: put the list there (data_dir/ ships "
                     f"the authors'), or pass --data-file-dir '' to scan on purpose"]
    assert haze.status == "warn" and report.exit_status == 0
    scanned = doctor.check_training_data(["dehaze"], dirs, None, 32)  # no list folder: a scan asked for
    assert not [p for p in scanned.sets[0].problems if p.kind == "no id list"]


# --------------------------------------------------------------------------- counts, files, the table

def test_counts_are_compared_with_the_expected_numbers(tmp_path):
    root = make_test_tree(tmp_path / "test")
    report = doctor.check_test_data(root, ["denoise_25", "derain"], expected={"denoise/bsd68": 3,
                                                                              "derain/rain100l": 5})
    rain = report.sets[1]
    assert (rain.found, rain.expected, rain.status) == (3, 5, "FAIL")
    assert [p.line() for p in rain.problems] == [
        f"found 3 degraded images, expected 5. Fix: 2 degraded images missing: complete the download into "
        f"{root / 'derain' / 'Rain100L'}"]
    assert doctor.check_test_data(root, ["derain"], expected={}).sets[0].expected is None  # no expectation: ok
    assert doctor.check_test_data(root, ["derain"], expected={}).exit_status == 0
    # training: a count other than the paper's is a warning (the trainer goes on), with a fix
    tree = make_train_tree(tmp_path / "train", n=3)
    dirs = {k: str(v) for k, v in tree.items()}
    expected = {"derain": doctor.Expected(4, note="Rain100L training set"), "denoise": doctor.Expected(5, (3,))}
    train = doctor.check_training_data(["denoise_25", "derain"], dirs, None, 32, expected=expected)
    assert [(s.name, s.found, s.status) for s in train.sets] == [("denoise", 3, "ok"), ("derain", 3, "warn")]
    assert train.exit_status == 0 and str(train.sets[0].expected) == "5 (3)"
    assert train.sets[1].problems[0].detail == "found 3 images, expected 4 (Rain100L training set)"


def test_file_checks_read_headers_and_ends(tmp_path):
    img = smooth_image(np.random.default_rng(3), 48)[:40]
    for ext in (".png", ".jpg", ".bmp", ".webp", ".tif"):  # a cut TIFF's end says nothing: it is decoded to tell
        good = _write(tmp_path / f"good{ext}", img)
        assert integrity.check_file(good) == integrity.FileCheck((40, 48)), ext
        cut = truncate(_write(tmp_path / f"cut{ext}", img))  # a cut WebP has no header Pillow reads: unreadable
        kinds = {".webp": ("unreadable",), ".tif": ("unreadable",)}.get(ext, ("truncated",))
        assert integrity.check_file(cut).size is None and integrity.check_file(cut).kind in kinds, ext
    from PIL import Image
    Image.fromarray(img).save(tmp_path / "tail.tif")  # Pillow writes the directory first, at byte 8
    raw = (tmp_path / "tail.tif").read_bytes()
    assert int.from_bytes(raw[4:8], "little") == 8
    (tmp_path / "tail.tif").write_bytes(raw[:len(raw) * 2 // 3])  # its header reads; only decoding tells
    assert integrity.check_file(tmp_path / "tail.tif").kind == "unreadable"  # in the decoder's own words
    extra = tmp_path / "extra.jpg"  # bytes after the end marker: decodes, so it is fine
    extra.write_bytes((tmp_path / "good.jpg").read_bytes() + b"\0" * 200)
    assert integrity.check_file(extra).size == (40, 48)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert integrity.check_file(tmp_path / "junk.png").kind == "unreadable"
    many = [_write(tmp_path / "many" / f"{i}.png", img) for i in range(70)]  # the threaded path
    assert {c.size for c in integrity.check_files(many).values()} == {(40, 48)}


def test_table_caps_examples(tmp_path):
    report = doctor.DataReport("t", [doctor.SetReport("s", "f", found=7, expected=9)], files_read=7)
    for i in range(5):
        report.sets[0].add("no target", f"x{i}.png", f"x{i}.png has no target", "add it")
    text = doctor.format_report(report, examples=2)
    assert text.splitlines()[1:] == [
        "set  found  expected  status  folder",
        "s        7         9  FAIL    f",
        "    no target (error, 5):",
        "      - x0.png has no target. Fix: add it",
        "      - x1.png has no target. Fix: add it",
        "      ... and 3 more",
        "=> 5 errors in 1 place: fix them and run --check-data again",
    ]


def test_shipped_id_lists_are_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (Path(resolve_data_file_dir("data_dir/")) / "noisy" / "denoise.txt").is_file()


def test_bad_task_name_is_a_usage_error(tmp_path):
    with pytest.raises(doctor.CheckDataUsage):
        check_tester("--data-root", make_test_tree(tmp_path / "t", n=1), "--tasks", "../up")


def test_no_test_data_says_where_to_put_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert check_tester("--data-root", tmp_path / "empty") == 1
    out = capsys.readouterr().out
    assert "none of the paper tasks' folders is under" in out and "derain/Rain100L/{input,target}" in out


def test_a_missing_task_folder_is_a_row_with_its_fix_not_a_crash(tmp_path):
    """--check-data --tasks derain deblur without deblur/ ended in 'no such file or folder' and lost the whole
    report; the missing-folder rows with their fixes were unreachable."""
    img = smooth_image(np.random.default_rng(0), 16)
    _write(tmp_path / "derain" / "Rain100L" / "input" / "rain-1.png", img)
    _write(tmp_path / "derain" / "Rain100L" / "target" / "norain-1.png", img)
    report = doctor.check_test_data(tmp_path, ["derain", "deblur", "denoise_25", "lowlight"], expected={})
    text = doctor.format_report(report)
    for folder in ("deblur", "denoise", "lowlight"):
        assert f"{tmp_path / folder}/ does not exist" in text or f"{tmp_path / folder}/ holds no test set" in text, \
            folder
    assert "derain/Rain100L" in text


def test_checking_files_in_threads_leaves_the_warning_filters_as_they_were(tmp_path):
    """Threads each saved and restored the process's one list of warning filters around Pillow's header read;
    finishing out of order they left "ignore every warning" behind, for the rest of a training run."""
    import warnings
    img = smooth_image(np.random.default_rng(4), 48)[:40]
    files = [_write(tmp_path / f"{i}.bmp", img) for i in range(200)]  # BMP: the header goes through Pillow
    before = list(warnings.filters)
    assert {c.size for c in integrity.check_files(files).values()} == {(40, 48)}
    assert warnings.filters == before


def test_a_whole_tiff_the_decoder_refuses_says_why(tmp_path):
    """Every TIFF that did not decode was called "cut short", hiding the decoder's reason and its fix."""
    from PIL import Image
    Image.fromarray(np.arange(40 * 48, dtype=np.int32).reshape(40, 48)).save(tmp_path / "i32.tif")
    check = integrity.check_file(tmp_path / "i32.tif")
    assert check.kind == "unreadable" and "cut short" not in check.error and "i32.tif" in check.error


def test_a_jpeg_is_whole_only_when_its_last_bytes_hold_its_end_marker(tmp_path):
    """A JPEG cut right after its scan header ends in other markers' 0xFF bytes, and one with an end marker inside
    an early comment holds those bytes near its start: both are cut short, found by their last bytes."""
    import struct

    img = smooth_image(np.random.default_rng(5), 48)[:40]
    raw = _write(tmp_path / "whole.jpg", img).read_bytes()
    scan = raw.index(b"\xff\xda")
    header_end = scan + 2 + struct.unpack(">H", raw[scan + 2:scan + 4])[0]
    (tmp_path / "no_data.jpg").write_bytes(raw[:header_end])
    comment = b"\xff\xfe" + struct.pack(">H", 8) + b"ab\xff\xd9cd"
    commented = raw[:2] + comment + raw[2:]
    (tmp_path / "commented.jpg").write_bytes(commented)
    (tmp_path / "commented_cut.jpg").write_bytes(commented[:len(commented) // 2])
    assert integrity.check_file(tmp_path / "commented.jpg") == integrity.FileCheck((40, 48))
    for name in ("no_data.jpg", "commented_cut.jpg"):
        check = integrity.check_file(tmp_path / name)
        assert check.kind == "truncated" and name in check.error, name


def test_a_cut_bmp_stored_top_down_is_truncated(tmp_path):
    """A BMP whose header gives a negative height (rows stored top down) needs as many bytes as one stored bottom
    up: cut in half, it is called cut short, not whole."""
    import struct

    img = smooth_image(np.random.default_rng(6), 48)[:40]
    raw = bytearray(_write(tmp_path / "up.bmp", img).read_bytes())
    height, = struct.unpack("<i", raw[22:26])
    raw[22:26] = struct.pack("<i", -height)
    (tmp_path / "down.bmp").write_bytes(bytes(raw))
    (tmp_path / "down_cut.bmp").write_bytes(bytes(raw[:len(raw) // 2]))
    assert integrity.check_file(tmp_path / "down.bmp") == integrity.FileCheck((40, 48))
    check = integrity.check_file(tmp_path / "down_cut.bmp")
    assert check.kind == "truncated" and "down_cut.bmp is cut short" in check.error


def test_the_expected_test_counts_are_the_published_sets_sizes():
    """Each paper test set is expected at its published size (BSD68: 68, Kodak24: 24, Rain100L: 100 test images,
    SOTS outdoor: 500, GoPro test: 1,111, LOL eval15: 15): a wrong number fails a complete download, or passes
    an incomplete one."""
    assert doctor.TEST_EXPECTED == {"denoise/bsd68": 68, "denoise/kodak24": 24, "derain/rain100l": 100,
                                    "dehaze": 500, "deblur": 1111, "lowlight": 15}
    assert doctor.TRAIN_EXPECTED["derain"].count == 200  # Rain100L's training set: 200 pairs


def test_a_paper_set_in_a_folder_of_its_own_name_is_expected_at_the_papers_count(tmp_path, capsys):
    """2-image sets under dehaze/SOTS_outdoor, deblur/GoPro and lowlight/LOLv1 passed --check-data ('expected -',
    exit 0) while --compare-paper took them for the SOTS/GoPro/LOL columns and flagged them (2 of the paper's
    500/1111/15 images): the doctor now expects the count of the set whose paper column the row fills
    (paper_column, --compare-paper's rule), an error as for the same images directly under dehaze/."""
    from utils.eval.paper import SET_SIZES, paper_column
    root = tmp_path / "R"
    rng = np.random.default_rng(5)
    for folder, deg, tar in (("dehaze/SOTS_outdoor", "input", "target"), ("deblur/GoPro", "input", "target"),
                             ("lowlight/LOLv1", "low", "high"), ("dehaze/indoor", "input", "target")):
        for i in (1, 2):
            img = smooth_image(rng, 32)
            _write(root / folder / deg / f"{i}.png", img)
            _write(root / folder / tar / f"{i}.png", img)
    assert check_tester("--data-root", root, "--tasks", "dehaze", "deblur", "lowlight") == 1
    report = doctor.check_test_data(root, ["dehaze", "deblur", "lowlight"])
    rows = {s.name: s for s in report.sets}
    assert {n: (s.found, data_report.expected_cell(s.expected), s.status) for n, s in rows.items()} == {
        "dehaze/SOTS_outdoor": (2, "500", "FAIL"), "dehaze/indoor": (2, "-", "ok"),  # SOTS indoor: no column
        "deblur/GoPro": (2, "1,111", "FAIL"), "lowlight/LOLv1": (2, "15", "FAIL")}
    assert rows["deblur/GoPro"].errors[0].line() == (
        f"found 2 degraded images, expected 1,111 (the paper's GoPro set, the column --compare-paper gives this "
        f"row). Fix: 1,109 degraded images missing: complete the download into {root / 'deblur' / 'GoPro'}")
    assert "2 degraded images, expected 500" in capsys.readouterr().out
    # the two rules agree: each count the doctor knows is the paper's size of the column its set fills
    assert all(SET_SIZES[paper_column(k.replace("denoise/", "denoise_25/")).split(" ")[0]] == n
               for k, n in doctor.TEST_EXPECTED.items() if k != "denoise/kodak24")


def test_a_pair_that_differs_in_width_only_is_a_size_mismatch(tmp_path):
    """A degraded image as tall as its target but narrower is a mismatch, as one of another height is, and the
    found count is of the degraded images, whatever else lies among the targets."""
    root = make_test_tree(tmp_path / "test")
    _write(root / "deblur" / "input" / "GOPR1.png", np.zeros((40, 32, 3), np.uint8))
    _write(root / "deblur" / "target" / "extra.png", np.zeros((40, 40, 3), np.uint8))
    [row] = doctor.check_test_data(root, ["deblur"], expected={"deblur": 3}).sets
    assert [(p.kind, Path(p.file).name) for p in row.errors] == [("no input", "extra.png"),
                                                                 ("size mismatch", "GOPR1.png")]
    assert row.found == 3 and row.status == "FAIL"


def test_an_empty_paper_denoising_set_is_an_error_and_an_extra_one_a_warning(tmp_path):
    """An empty folder where a paper set is expected (the tester would score nothing there) fails the check; an
    empty folder of a set the paper does not have is only said."""
    root = make_test_tree(tmp_path / "test")
    (root / "denoise" / "kodak24").mkdir()
    (root / "denoise" / "mine").mkdir()
    report = doctor.check_test_data(root, ["denoise_25"], expected={"denoise/bsd68": 3, "denoise/kodak24": 24})
    assert {s.name: s.status for s in report.sets} == {"denoise/bsd68": "ok", "denoise/kodak24": "FAIL",
                                                       "denoise/mine": "warn"}
    assert report.exit_status == 1


def test_a_training_image_exactly_the_patch_size_is_not_too_small(tmp_path):
    """The trainer takes an image whose centre-crop is exactly --patch-size; the check says so too, and names
    one just under it."""
    tree = make_train_tree(tmp_path, n=3, size=64)
    _write(tree["derain"] / "rainy" / "rain-4.png", np.zeros((48, 48, 3), np.uint8))
    _write(tree["derain"] / "gt" / "norain-4.png", np.zeros((48, 48, 3), np.uint8))
    dirs = {k: str(v) for k, v in tree.items()}
    assert doctor.check_training_data(["derain"], dirs, None, 48, expected={}).exit_status == 0
    report = doctor.check_training_data(["derain"], dirs, None, 49, expected={})
    assert {Path(p.file).name for p in report.all_problems() if p.kind == "too small"} == {"rain-4.png"}


def test_the_pixel_limit_applies_to_degset_and_tarset_too(tmp_path, capsys):
    """--check-data with --degset/--tarset holds their images to --max-pixels, as the run would."""
    root = make_test_tree(tmp_path / "test")
    deg, tar = root / "deblur" / "input", root / "deblur" / "target"
    assert check_tester("--degset", deg, "--tarset", tar) == 0
    assert check_tester("--degset", deg, "--tarset", tar, "--max-pixels", "1000") == 1
    assert "over the 1,000 pixels limit" in capsys.readouterr().out


def test_images_too_small_for_the_flags_scoring_fail_the_check_as_they_stop_the_run(tmp_path, tiny_counts, capsys):
    """--check-data said "ok" of a 7x7 pair and a 7x7 clean image, and the run with the same flags stopped at them
    ("too small to evaluate"). They are errors now, at the least the flags score (8x8; 16x16 for --ssim
    gaussian under the reference crop), and --input, which scores nothing, restores any size."""
    root = make_test_tree(tmp_path / "test")
    deg, tar = root / "deblur" / "input", root / "deblur" / "target"
    for f in (deg / "GOPR1.png", tar / "GOPR1.png", root / "denoise" / "bsd68" / "test001.png"):
        _write(f, np.zeros((7, 9, 3), np.uint8))
    assert check_tester("--degset", deg, "--tarset", tar) == 1
    out = capsys.readouterr().out
    assert (f"{deg / 'GOPR1.png'} is 7x9 (height x width), too small to score: at least 8x8. Fix: replace it, remove "
            f"it and its pair ({tar / 'GOPR1.png'}), or pass --skip-bad-files to leave it out") in out, out
    assert check_tester("--data-root", root, "--tasks", "denoise_25", "deblur") == 1
    out = capsys.readouterr().out
    assert f"{root / 'denoise' / 'bsd68' / 'test001.png'} is 7x9 (height x width), too small to score" in out, out
    assert check_tester("--input", deg / "GOPR1.png") == 0
    capsys.readouterr()
    for f in (deg / "GOPR1.png", tar / "GOPR1.png"):
        _write(f, np.zeros((15, 16, 3), np.uint8))
    assert check_tester("--degset", deg, "--tarset", tar) == 0
    assert check_tester("--degset", deg, "--tarset", tar, "--ssim", "gaussian") == 1
    assert "is 15x16 (height x width), too small to score: at least 16x16" in capsys.readouterr().out


def test_a_validation_pair_too_small_to_score_fails_the_trainers_check(tmp_path, capsys):
    """The trainer refuses a validation pair under 8x8 at its start; --check-data said "validation ok" of it."""
    tree = make_train_tree(tmp_path, n=3, id_lists=True)
    deg, tar = make_val_tree(tmp_path, n=2)
    for f in (deg / "rain-2.png", tar / "norain-2.png"):
        _write(f, np.zeros((7, 7, 3), np.uint8))
    assert check_trainer(tree, tmp_path / "run", "--degset", deg, "--tarset", tar, de_type=["derain"]) == 1
    out = capsys.readouterr().out
    assert (f"{deg / 'rain-2.png'} is 7x7 (height x width), too small to score: at least 8x8. Fix: replace it, "
            f"remove it and its pair ({tar / 'norain-2.png'}), pass --skip-bad-files to validate without the pair, "
            f"or pass --degset '' --tarset '' to train without validation") in out, out


def test_training_pairs_unpacked_flat_get_the_layout_as_their_fix(tmp_path):
    """--check-data on Rain100L pairs loose in --derain-dir said to put the degraded images in rainy/ (scanned) or
    to pass another folder (listed): each row now says the images are there, loose, and where they go."""
    tree = make_train_tree(tmp_path, n=2, id_lists=True)
    root = unpack_flat(tree["derain"])
    dirs = {k: str(v) for k, v in tree.items()}
    for id_lists, kinds in ((None, ["missing folder"] * 2), (tree["data_file_dir"], ["wrong folder"])):
        report = doctor.check_training_data(["derain"], dirs, id_lists, 32)
        problems = report.sets[0].problems
        assert [p.kind for p in problems] == kinds
        for p in problems:
            assert p.fix.startswith(f"{root} holds 4 images directly (norain-1.png, norain-2.png, ...), and "
                                    f"--derain-dir reads them from {root / 'rainy'}/ and {root / 'gt'}/"), p.fix


def test_a_training_image_beside_its_familys_folders_is_warned_as_not_read(tmp_path):
    """A rainy image left in Derain/ itself, beside rainy/ and gt/, is not trained on; --check-data said nothing of
    it, though it names files outside the folders that are read (as it does for the test sets)."""
    tree = make_train_tree(tmp_path, n=2)
    root = tree["derain"]
    _write(root / "rain-5.png", np.zeros((64, 64, 3), np.uint8))
    report = doctor.check_training_data(["derain"], {k: str(v) for k, v in tree.items()}, None, 32,
                                        expected={"derain": doctor.Expected(2)})
    [problem] = report.sets[0].problems
    assert (problem.kind, problem.severity, problem.fix) == ("misplaced", doctor.WARNING,
                                                             f"move it into {root / 'rainy'}/")
    assert report.exit_status == 0


def test_a_scanned_training_count_off_the_papers_gets_the_fix_of_its_direction(tmp_path):
    """A scanned family with fewer images than the paper's is told to complete its download; one with more is
    pointed at the authors' id lists, which pick theirs."""
    tree = make_train_tree(tmp_path, n=3)
    dirs = {k: str(v) for k, v in tree.items()}

    def fix(count):
        report = doctor.check_training_data(["derain"], dirs, None, 32, expected={"derain": doctor.Expected(count)})
        [problem] = report.sets[0].problems
        return problem.fix
    assert fix(5) == f"2 images missing: complete the download into {tree['derain']}"
    assert fix(4) == f"1 image missing: complete the download into {tree['derain']}"
    assert fix(2).startswith("1 image more than the authors' list picks: pass --data-file-dir")
    assert fix(1).startswith("2 images more than the authors' list picks: pass --data-file-dir")
