# ruff: noqa: F811 - the fixtures bench and checkpoint come from _tester_case, and tests take them by name
"""tester_bary.py with users' files: outputs never overwrite inputs, stops (Ctrl-C, SIGTERM, a full disk, a
closed pipe) keep the results so far, bad images are named or skipped, flags that cannot work are refused before
anything is written, and two testers never share an output folder (:mod:`_tester_case`).
"""
import csv
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _disks import FileWrapper
from _processes import as_in_a_terminal
from _tester_case import (  # noqa: F401 - fixtures, taken by name
    REPO,
    H,
    W,
    bench,
    checkpoint,
    clean_images,
    degrade,
    interrupt_restoring_at,
    pair_dirs,
    run,
    run_tester_in,
    write_photos,
)
from PIL import Image
from skimage import data

import tester_bary
from utils.compiled import inference_compile_note
from utils.data import image_io
from utils.data.image_files import list_images
from utils.data.image_io import ImageReadError, read_image, write_image
from utils.errors import UserError
from utils.eval import protocol as protocol_module
from utils.eval import tasks as tasks_module
from utils.eval.outputs import output_names
from utils.eval.protocol import Protocol
from utils.eval.report import summary_table
from utils.eval.tasks import find_task_sets
from utils.streams import PIPE_CLOSED_STATUS

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_outputs_never_overwrite_inputs(bench, checkpoint, tmp_path):
    """Failure 1: --save/--savetar in an input folder are refused (unless --overwrite); same-stem inputs get
    distinct outputs; a symbolic link at an output path is replaced, its target never written."""
    src = tmp_path / "photos"
    src.mkdir()
    before = write_photos(src, ["a.png", "a.jpg", "b.png"])
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
    deg, tar = pair_dirs(tmp_path, ["a.png", "b.png", "c.png"], ["a.png", "b.png", "c.png"])
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
    write_photos(tmp_path, ["in.png"])
    done = run_tester_in(tmp_path, "--model", tmp_path / "nope.pth", "--input", tmp_path / "in.png")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "nope.pth" in line
    debug = run_tester_in(tmp_path, "--model", tmp_path / "nope.pth", "--input", tmp_path / "in.png", "--debug")
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
    deg, tar = pair_dirs(tmp_path, ["a.png"], ["a.png"])
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


@pytest.mark.parametrize("where", ["figure", "between rows"])
def test_ctrl_c_while_a_figure_is_drawn_or_between_rows_keeps_the_results_so_far(bench, checkpoint, tmp_path,
                                                                                   monkeypatch, where):
    """Ctrl-C (or SIGTERM: a job's time limit) while --figs drew a row's figure, or while the line after a row said
    how many were done, came outside the handling of a stop at an image: the run ended with "interrupted" and no
    results.json, every row it had scored lost. The results so far are now written, marked partial there."""
    from utils.eval import evaluation
    calls, real = [], evaluation.save_comparison_figure

    def figure(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second row's figure, its images all scored
            raise KeyboardInterrupt
        return real(*a, **k)

    def line(self, done):
        raise KeyboardInterrupt

    if where == "figure":
        monkeypatch.setattr(evaluation, "save_comparison_figure", figure)
    else:
        monkeypatch.setattr(evaluation.OverallClock, "line", line)
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--data-root", str(bench), "--tasks",
                                                     "derain", "dehaze", "--no-images", "--save", str(tmp_path / "o"),
                                                     "--figs", "--figs-dir", str(tmp_path / "f")])
    assert tester_bary.run_main(tester_bary.main, args) == 130
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    rain = len(list_images(bench / "derain" / "Rain100L" / "input"))
    assert saved["tasks"]["derain/Rain100L"]["count"] == rain and "partial" not in saved["tasks"]["derain/Rain100L"]
    assert saved["partial"]["row"] == "dehaze" and saved["tasks"]["dehaze"]["partial"]
    haze = len(list_images(bench / "dehaze" / "input"))
    assert saved["tasks"]["dehaze"]["count"] == (haze if where == "figure" else 0)


def test_ctrl_c_keeps_the_results_so_far(bench, checkpoint, tmp_path, monkeypatch, capsys):
    """Failure 8: Ctrl-C used to end the run with no results written (an earlier run's results.json stayed
    beside the new images); now the images finished so far are written as partial results, exit status 130.
    Ctrl-C in --input's 1000 photos also said nothing of how far it got (a benchmark run shows its table): now
    "restored 1 of 3 images into OUT before the run stopped at FILE"."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text('{"stale": true}')
    calls = interrupt_restoring_at(2, monkeypatch)
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
    deg, tar = pair_dirs(tmp_path, ["a.png", "b.png", "c.png"], ["a.png", "b.png", "c.png"])
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
    img = clean_images()["cat"]
    for name, (h, w) in (("big.png", (H, W)), ("small.png", (side - 1, side + 7))):
        write_image(deg / name, degrade(img[:h, :w], 0))
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
    from utils.eval.report import protocol_summary
    lines = {tile: protocol_summary({**Protocol(tile=tile).describe(), "device": "cpu"}) for tile in (None, 0, 512)}
    assert lines[None].endswith("fp32, tiled only where an image would not fit the free memory on cpu")
    assert lines[512].endswith("fp32, 512x512 tiles on cpu") and lines[0].endswith("fp32 on cpu")


@pytest.mark.parametrize("tile, fix", [(-8, "--tile 512"), (100, "--tile 96 or 104"), (4, "--tile 512")])
def test_a_tile_the_network_cannot_take_names_0_and_a_usable_tile(tile, fix):
    """--tile -8 and --tile 100 said only "must be a positive multiple of 8", leaving out the documented 0 (never
    tile) and a side that works; the branch that named 0 was never reached."""
    with pytest.raises(ValueError) as err:
        Protocol(tile=tile).validate()
    message = str(err.value)
    assert "or 0 never to tile" in message and f"got {tile}" in message and fix in message
    Protocol(tile=0).validate(), Protocol(tile=96).validate()


def test_the_png_input_keeps_its_name_whatever_the_case_of_its_extension():
    """Failure 12: a.PNG beside a.jpg gave a_PNG.png and a_jpg.png; the .png one keeps a.png, as documented."""
    assert output_names(["a.PNG", "a.jpg"]) == ["a.png", "a_jpg.png"]
    assert output_names(["a.Png", "a.JPG", "b.TIF"]) == ["a.png", "a_JPG.png", "b.png"]


def test_fp16_on_the_cpu_and_empty_paths_are_flag_errors_before_anything_is_written(checkpoint, tmp_path, capsys,
                                                                                  monkeypatch):
    """--precision fp16 on the CPU ended in a traceback after --save was made (and --dry-run called it fine);
    --save "" (an unset variable) restored into the current folder over same-named files."""
    write_photos(tmp_path, ["in.png"])
    parser = tester_bary.get_args_parser()
    for argv in (["--precision", "fp16"], ["--precision", "fp16", "--dry-run"]):
        args = parser.parse_args(["--model", str(checkpoint), "--input", str(tmp_path / "in.png"), "--save",
                                  str(tmp_path / "out"), "--device", "cpu", *argv])
        assert tester_bary.run_main(tester_bary.main, args) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: --precision fp16 needs a CUDA device") and "bf16" in line
        assert not (tmp_path / "out").exists()
    monkeypatch.chdir(tmp_path)  # the folder an empty path would have named
    for flag in ("--save", "--figs-dir", "--data-root"):  # refused by the parser: the script's main never runs
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(["--model", str(checkpoint), "--input", str(tmp_path / "in.png"), flag, ""])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and f"{flag}: an empty path" in err, (flag, err)
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


@pytest.mark.parametrize("how", ["same", "slash", "link"])
def test_degset_and_tarset_naming_one_folder_is_refused(bench, checkpoint, tmp_path, capsys, how):
    """--degset and --tarset naming one folder (a slip when typing the second) scored every image against itself:
    a table of 100 dB and SSIM 1 with a note under it, results written. It is one error line, before anything."""
    deg = bench / "derain" / "Rain100L" / "input"
    tar = {"same": deg, "slash": f"{deg}/", "link": tmp_path / "link"}[how]
    if how == "link":
        os.symlink(deg, tar)
    args = tester_bary.get_args_parser().parse_args(["--model", str(checkpoint), "--degset", str(deg), "--tarset",
                                                     str(tar), "--save", str(tmp_path / "out"), "--no-progress"])
    assert tester_bary.run_main(tester_bary.main, args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --degset {deg} and --tarset {tar} are the same folder") and "against itself" in line
    assert not (tmp_path / "out").exists()


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
    write_photos(tmp_path, ["in.png"])
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
    """--compile default left the first image's progress at 0 for minutes without a word of why. On the CPU it said
    the compiled forward was cached for later runs, and each run compiled it again: inductor caches no graph whose
    weights it froze and prepacked for oneDNN."""
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o", "--device", "cpu",
        "--compile", "default", "--dry-run")
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("=> --compile")]
    assert line.startswith("=> --compile default: the first image of each size compiles the network's forward "
                           "(minutes, again in every run: on the CPU inductor does not cache "), line
    assert inference_compile_note(torch.device("cuda")).startswith("minutes; cached under ")
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
    deg, tar = pair_dirs(tmp_path, ["a.png"], ["a.png"])  # 44x61
    with pytest.raises(UserError, match=r"a.png: 40x56 after the crop to multiples of 8 is too small to evaluate "
                                        r"\(at least 67x67 to score with --ssim skimage, --crop-border 30, so a file "
                                        r"of at least 72x72\)"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o", "--crop-border", "30")


def test_a_run_that_scores_nothing_is_an_error(checkpoint, tmp_path):
    """Every image skipped (--skip-bad-files) printed 'restored 0 image(s)' and exited 0."""
    deg, tar = pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    for name in ("a.png", "b.png"):
        (deg / name).write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"--input .*none of the 2 image\(s\) could be used"):
        run("--model", checkpoint, "--input", deg, "--save", tmp_path / "i", "--skip-bad-files")
    assert len(json.loads((tmp_path / "i" / "results.json").read_text())["skipped_files"]) == 2
    deg, tar = pair_dirs(tmp_path / "small", ["a.png", "b.png"], ["a.png", "b.png"])  # readable, 44x61
    with pytest.raises(UserError, match=r"deg: none of the 2 image\(s\) could be used"):
        run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "d", "--skip-bad-files",
            "--crop-border", "30")
    assert "too small to evaluate" in (tmp_path / "d" / "results.md").read_text()


def test_a_stopped_run_keeps_the_earlier_complete_results(checkpoint, tmp_path):
    """A run stopped at its first image replaced results.json, the only record of an earlier complete run's
    restorations still in --save, with an empty partial one."""
    deg, tar = pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
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
    deg, tar = pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
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
    pair_dirs(tmp_path / "bench" / "mine", ["a.png", "b.png"], ["a.png", "b.png"])
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
    write_image(photo, clean_images()["cat"][:H, :W])
    mine = photo.read_bytes()
    with pytest.raises(UserError, match=rf"{photo} is where this run writes, and it is the image {photo} the run "
                                        rf"reads — choose another --save: not even --overwrite writes over"):
        run("--model", checkpoint, "--input", photo, "--save", tmp_path, "--overwrite")
    with pytest.raises(UserError, match="not even --overwrite"):  # said before a model is looked for, or loaded
        run("--model", tmp_path / "missing.pth", "--input", photo, "--save", tmp_path, "--overwrite")
    deg, tar = pair_dirs(tmp_path / "pairs", ["a.png", "b.png"], ["a.png", "b.png"])
    inputs = {p: p.read_bytes() for p in [*deg.iterdir(), *tar.iterdir()]}
    for flags in (["--save", deg], ["--save", tmp_path / "o", "--savetar", tar]):
        with pytest.raises(UserError, match="not even --overwrite writes over an image the run reads"):
            run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--overwrite", *flags)
    assert photo.read_bytes() == mine and {p: p.read_bytes() for p in inputs} == inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs", "q.png"]  # nothing written, nothing moved
    photos = tmp_path / "photos"  # JPEGs restored into their own folder: the rerun reads a.png as an input
    photos.mkdir()
    write_photos(photos, ["a.jpg"])
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
    write_image(save / "a.png", clean_images()["cat"][:H, :W])
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "a.png").symlink_to(save / "a.png")
    said = r"o/a\.png is where this run writes, and it is the image .*links/a\.png the run reads \(through a link\)"
    with pytest.raises(UserError, match=said + " — choose another --save: not even --overwrite writes over"):
        run("--model", checkpoint, "--input", tmp_path / "links", "--save", save)
    assert (save / "a.png").is_file() and not list(save.glob("results.before-*"))
    with pytest.raises(UserError, match="--no-images leaves --input nothing to do"):
        run("--model", checkpoint, "--input", tmp_path / "links", "--save", tmp_path / "n", "--no-images")
    deg, tar = pair_dirs(tmp_path / "pairs", ["a.png"], ["a.png"])
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
    deg, tar = pair_dirs(tmp_path / "pairs", ["a.png"], ["a.png"])
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
    img = clean_images()["cat"]
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
    deg, tar = pair_dirs(tmp_path, ["a.png"], ["a.png"])
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
    deg, tar = pair_dirs(tmp_path, ["a.png"], ["a.png"])
    with OutputLock(tmp_path / "o", "--save", "tester"):  # as another tester running there holds it
        for flags in (["--degset", deg, "--tarset", tar], ["--input", deg], ["--input", deg, "--dry-run"]):
            with pytest.raises(OutputFolderBusy, match=r"--save .*/o is in use by another tester \(PID "):
                run("--model", checkpoint, *flags, "--save", tmp_path / "o")
        assert not (tmp_path / "o" / "results.json").exists() and not (tmp_path / "o" / "a.png").exists()
    assert run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", tmp_path / "o")["tasks"]["deg"]


@pytest.mark.parametrize("flag", ["--save", "--savetar"])
def test_a_tester_may_not_write_a_row_folder_another_one_writes_as_its_save(bench, checkpoint, tmp_path, monkeypatch,
                                                                          flag):
    """A benchmark run into --save o writes row derain/Rain100L's restorations into o/derain/Rain100L; a second run
    started meanwhile with --save o/derain/Rain100L (that set alone, another checkpoint) wrote its restorations
    under the same names there, and o/results.json described the other model's images (and the other way round).
    Each run now holds the row folders it writes as it holds --save (--savetar: its own), whichever starts first."""
    from utils.eval import tester as tester_module
    from utils.output_lock import OutputFolderBusy, OutputLock
    tasks = ["--model", checkpoint, "--data-root", bench, "--tasks", "derain", "--save", tmp_path / "o"]
    tasks += {"--save": [], "--savetar": ["--savetar", tmp_path / "t"]}[flag]
    row = tmp_path / ("o" if flag == "--save" else "t") / "derain" / "Rain100L"
    with OutputLock(row, flag, "tester"):  # the one-set run, into the row folder, started first
        with pytest.raises(OutputFolderBusy, match=rf"{flag} .*/derain/Rain100L is in use by another tester"):
            run(*tasks)
    assert not (tmp_path / "o" / "results.json").exists()
    real = tester_module.evaluate_sets

    def checking(*args, **kwargs):  # the benchmark run started first: the one-set run would be refused
        with pytest.raises(OutputFolderBusy, match="in use by another tester"):
            OutputLock(row, flag, "tester").check_free()
        return real(*args, **kwargs)
    monkeypatch.setattr(tester_module, "evaluate_sets", checking)
    assert run(*tasks)["tasks"]["derain/Rain100L"]["count"]
    assert not list(tmp_path.rglob(".lock"))


@pytest.mark.parametrize("flag", ["--savetar", "--figs-dir"])
def test_two_testers_may_not_write_one_savetar_or_figs_folder(checkpoint, tmp_path, flag):
    """Only --save was held: two testers given one --savetar (or one --figs-dir, whose default every run shares)
    replaced each other's targets or figures without a word. A refused run leaves no folder behind, also those
    it made before reaching the busy one (the locks go in the order of the paths: o, o/targets, shared)."""
    from utils.output_lock import OutputFolderBusy, OutputLock
    deg, tar = pair_dirs(tmp_path, ["a.png"], ["a.png"])
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
    deg, tar = pair_dirs(tmp_path, ["a.png"], ["a.png"])
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
    write_image(tmp_path / "in" / name, clean_images()["cat"])
    res = run("--model", checkpoint, "--input", tmp_path / "in", "--save", tmp_path / "o")
    assert [r["name"] for r in res["restored"]] == [name] and (tmp_path / "o" / name).is_file()


def test_a_non_finite_output_stops_the_run_instead_of_being_scored(checkpoint, tmp_path, monkeypatch):
    """NaN became black and inf white in the quantised output, which was scored (9 dB) and saved silently."""
    deg, tar = pair_dirs(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
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
    img = clean_images()["cat"][:32, :32]
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
    deg, _ = pair_dirs(tmp_path, ["a.png", "b.png", "c.png"], [])
    (deg / "x.gif").write_bytes(b"GIF89a")
    (deg / "notes.txt").write_text("mine")
    other = tmp_path / "more"
    write_image(other / "a.png", clean_images()["cat"][:H, :W])
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
    write_image(deg / "2024" / "d.png", clean_images()["cat"][:H, :W])  # was left out without a word
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
    write_image(tmp_path / "in" / "big.png", np.tile(clean_images()["cat"], (3, 3, 1)))
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
    cat = clean_images()["cat"]
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
    cat = clean_images()["cat"]
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
    deg, _ = pair_dirs(tmp_path, ["a.png", "b.png"], [])
    monkeypatch.chdir(tmp_path)
    res = run("--model", checkpoint, "--input", deg, "deg", "deg/a.png", "--save", tmp_path / "o")
    assert sorted(Path(r["output"]).name for r in res["restored"]) == ["a.png", "b.png"]


def test_a_refused_run_moves_nothing_and_links_are_inputs_of_their_own(checkpoint, tmp_path):
    """Second review of the keep-aside: --save's files were moved before --savetar's collision with an input
    was found (a refused run had moved files); two links to one image in --input became one input; a link
    that loops among the outputs was a RuntimeError traceback."""
    deg, tar = tmp_path / "deg", tmp_path / "tar"
    for folder in (deg, tar):  # multiples of 8: the target saved as scored is the target's own size
        write_image(folder / "a.png", clean_images()["cat"][:40, :56])
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
    write_image(tmp_path / "in" / "2024-01-01.png", clean_images()["cat"][:H, :W])
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
    ok, buf = cv2.imencode(".jpg", clean_images()["cat"][:, :, ::-1].copy())
    b = bytearray(buf.tobytes())
    scan = b.find(b"\xff\xda")
    b[scan + 40:scan + 44] = b"\xff\xd0\xff\xd5"  # two restart markers where there are none
    deg, tar = pair_dirs(tmp_path, [], ["a.png"])
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


@pytest.mark.parametrize("task", ["denoise_-5", "denoise_2.5", "denoise", "denoise_025"])
def test_a_mistyped_noise_level_is_named_before_anything_is_looked_for(task, tmp_path, monkeypatch):
    """--tasks denoise_-5 was taken for a benchmark folder of that name, and said so only once a checkpoint had
    been found and loaded (without one, the error was the missing checkpoint). --tasks denoise_25 denoise_025 scored
    BSD68 σ25 twice, under two rows, both in the Average and both filling the paper's σ25 column."""
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
    write_photos(tmp_path / "in", [f"{i}.png" for i in range(4)])
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
    src = tmp_path / "in"
    src.mkdir()
    write_photos(src, ["a.png", "b.png"])
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
    write_photos(src, ["b.png", "b.PNG"])
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
        write_photos(tmp_path / d, ["a.png"] if d == "d1" else ["b.png", "a.png"])
    run("--model", checkpoint, "--input", tmp_path / "d1", tmp_path / "d2", "--save", tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    pairs = {Path(e["output"]).name: e["input"] for e in saved["restored"]}
    assert pairs == {"a.png": str(tmp_path / "d1" / "a.png"), "a_2.png": str(tmp_path / "d2" / "a.png"),
                     "b.png": str(tmp_path / "d2" / "b.png")}
    for out, src in pairs.items():  # the zero model returns its input
        assert np.array_equal(read_image(tmp_path / "out" / out), read_image(src))


