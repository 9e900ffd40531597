"""The web app (utils/app/): its pure functions, its command line, and the page in a real browser.

The browser cases start ``python -m utils.app`` on a free port with a tiny BaryNet checkpoint and drive the page
in headless Chromium (the system's browser and chromedriver, through Selenium): an uploaded image comes back
pixel for pixel as ``tester_bary.py --input`` writes it for the same checkpoint and precision, and a corrupt
upload gets its reason in the page's status line (no traceback in the server's output). They skip, saying
why, only when Chromium, chromedriver, Gradio or Selenium is missing (``make test`` installs them).
"""
import base64
import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

import tester_bary
from net.presets import build_model, model_config
from utils.app import main as app_main
from utils.app import restore as app_restore
from utils.app.browser import missing_for_browser_test
from utils.app.restore import (
    PageResult,
    Session,
    example_images,
    page_protocol,
    parse_tile,
    residual_map,
    restore_for_page,
)
from utils.data.image_io import read_image, write_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the app runs with one thread too: equal bits
REPO = Path(__file__).resolve().parents[1]
H, W = 52, 75  # not multiples of 8: the restore pads and crops back


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trainer-style run folder holding one tiny BaryNet checkpoint (random weights, so the restoration
    differs from the input) and the ``latest`` pointer; ``--model`` gets the folder, as a user may pass it."""
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny")
    folder = tmp_path_factory.mktemp("run")
    torch.save({"model": model.state_dict(), "model_config": model_config("tiny"), "backbone": "BaryNet",
                "epoch": 1}, folder / "epoch_001.pth")
    (folder / "latest").write_text(json.dumps({"checkpoint": "epoch_001.pth"}))
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A small photo crop, degraded a little, saved as PNG."""
    rng = np.random.default_rng(0)
    img = data.chelsea()[60:60 + H, 120:120 + W].astype(np.float64)
    noisy = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    return write_image(tmp_path_factory.mktemp("photos") / "cat.png", noisy)


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "broken.png"
    path.write_bytes(b"this is not an image at all\n" * 20)
    return path


@pytest.fixture(scope="module")
def tester_output(run_dir, photo, tmp_path_factory):
    """What ``tester_bary.py --input`` writes for the photo (fp32, automatic tiling: the page's defaults)."""
    save = tmp_path_factory.mktemp("tester")
    args = tester_bary.get_args_parser().parse_args(["--model", str(run_dir), "--input", str(photo), "--save",
                                                     str(save), "--precision", "fp32", "--no-progress"])
    tester_bary.main(args)
    return save / "cat.png"


@pytest.fixture(scope="module")
def session(run_dir, tmp_path_factory):
    from utils.checkpoints import load_model
    model, info = load_model(run_dir)
    return Session(model=model.eval(), info=info, device=torch.device("cpu"),
                   work_dir=tmp_path_factory.mktemp("work"))


# --------------------------------------------------------------------------- without a browser

def test_page_choices_map_to_the_tester_flags():
    assert parse_tile("auto") is None and parse_tile("off") == 0 and parse_tile(" 512 ") == 512
    for bad in ("12", "33", "abc", "-8"):
        with pytest.raises(ValueError, match="choose 'auto', 'off' or a tile size"):
            parse_tile(bad)
    protocol = page_protocol("bf16", "256")
    assert (protocol.precision, protocol.tile, protocol.tile_overlap, protocol.tile_batch) == ("bf16", 256, 32, 4)
    with pytest.raises(ValueError, match="precision 'fp64'"):
        page_protocol("fp64", "auto")


def test_restore_for_page_writes_the_tester_png_and_the_maps(session, photo, tester_output):
    result = restore_for_page(session, photo, "fp32", "auto")
    assert result.status.startswith("**Restored** `cat.png`"), result.status
    expected = read_image(tester_output)
    assert result.after.name == "cat.png"
    assert np.array_equal(read_image(result.after), expected)
    assert np.array_equal(read_image(result.before), read_image(photo))
    assert result.residual.shape == (H, W, 3) and result.residual.dtype == np.uint8
    assert not np.allclose(residual_map(read_image(photo), expected), 0)  # random weights change the image
    crop = (H // 8 * 8, W // 8 * 8, 3)  # the embedding maps are of the input cropped to multiples of 8
    assert result.wb.shape == crop and result.wb_residual.shape == crop
    assert "WB / residual embedding" in result.maps
    tiled = restore_for_page(session, photo, "fp32", "48")
    assert "48x48 tiles" in tiled.status
    assert tiled.after.is_file()


def test_the_page_says_what_the_tester_says_of_an_upload(session, tmp_path):
    """The tester names an input whose transparency the RGB PNG does not keep, and a JPEG libjpeg decoded over
    damage; the page restored both and said nothing."""
    import cv2
    from PIL import Image
    rgba = np.dstack([data.chelsea()[:H, :W], np.full((H, W), 200, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(data.chelsea()[:H, :W, ::-1]))
    b = bytearray(buf.tobytes())
    scan = b.find(b"\xff\xda")
    b[scan + 40:scan + 44] = b"\xff\xd0\xff\xd5"  # two restart markers where there are none
    (tmp_path / "grey.jpg").write_bytes(bytes(b))
    clear = restore_for_page(session, tmp_path / "clear.png", "fp32", "auto").status
    assert clear.startswith("**Restored**") and clear.endswith(
        ". **Note**: its transparency is not kept in the restored PNG (the network restores RGB)"), clear
    grey = restore_for_page(session, tmp_path / "grey.jpg", "fp32", "auto").status
    assert grey.startswith("**Restored**") and grey.endswith(
        ". **Note**: the JPEG decoder says 'Corrupt JPEG data: premature end of data segment': the image was read "
        "as it decodes, and damaged parts come out grey or smeared"), grey


def test_large_images_give_scaled_maps(session, photo, monkeypatch):
    monkeypatch.setattr(app_restore, "DISPLAY_SIDE", 40)
    monkeypatch.setattr(app_restore, "MAP_SIDE", 40)
    result = restore_for_page(session, photo, "fp32", "auto")
    assert read_image(result.after).shape == (H, W, 3), "only the maps are scaled, never the restoration"
    assert result.residual.shape == (28, 40, 3) and "shown at 40x28" in result.maps
    assert result.wb.shape == (24, 40, 3) and "scaled down to 40x24" in result.maps


def test_failures_are_a_status_line(session, corrupt, tmp_path):
    session = dataclasses.replace(session, work_dir=tmp_path / "work")  # its own, to see what a failure leaves
    bad = restore_for_page(session, corrupt, "fp32", "auto")
    assert bad == PageResult(status=bad.status) and bad.status.startswith("**Cannot restore** `broken.png`")
    assert "corrupt, empty or not an image" in bad.status and str(corrupt.parent) not in bad.status
    assert "tile size" in restore_for_page(session, corrupt, "fp32", "100").status
    assert restore_for_page(session, None, "fp32", "auto").status.startswith("**Nothing to restore**")
    gif = tmp_path / "anim.gif"  # restored (its first frame) where the tester's --input refuses the kind
    from PIL import Image
    Image.new("RGB", (W, H)).save(gif)
    assert restore_for_page(session, gif, "fp32", "auto").status == (
        "**Cannot restore** `anim.gif`: anim.gif is not an image file of a kind this project reads (.png .jpg .jpeg "
        ".bmp .tif .tiff .webp): convert it, e.g. to PNG")
    assert list(session.work_dir.iterdir()) == [], "a failed request left its request-* folder behind"


def test_out_of_memory_in_the_page_names_the_pages_own_control(session, photo, monkeypatch):
    """The page told its user to pass --tile 512 --tile-overlap 32, flags the page does not have."""
    from utils.eval import protocol

    def oom(*args, **kwargs):  # deep inside, as the network would: the app's layers wrap what comes out
        raise MemoryError("out of memory")
    monkeypatch.setattr(protocol, "restore", oom)
    status = restore_for_page(session, photo, "fp32", "auto").status
    assert status.startswith("**Cannot restore**") and status.endswith("choose a smaller size under Tiling.")


def test_requests_gradio_refuses_print_no_traceback_in_the_terminal(session, capsys):
    """A file type the upload does not take, or a precision not offered: Gradio refuses it (the client gets one
    line), and used to print the refusal's traceback in the app's terminal too (gr.Error prints by default)."""
    gr = pytest.importorskip("gradio")
    from gradio.data_classes import FileData

    from utils.app import page as app_page
    from utils.app.elements import IDS
    blocks = app_page.build_page(session, []).blocks.values()
    by_id = {b.elem_id: b for b in blocks if getattr(b, "elem_id", None)}
    upload, precision = by_id[IDS["upload"]], by_id[IDS["precision"]]
    for component, payload in ((upload, FileData(path="notes.txt")), (precision, "fp64")):
        with pytest.raises(gr.Error) as refused:
            component.preprocess(payload)
        assert refused.value.print_exception is False, component
    assert not (REPO / "utils" / "app" / "page.pyi").exists(), "a Gradio subclass writes a stub into the source"


def test_networks_without_embeddings_say_so(photo, tmp_path):
    model = build_model("Restormer", "tiny").eval()
    session = Session(model=model, info={"model": "x.pth", "backbone": "Restormer"}, device=torch.device("cpu"),
                      work_dir=tmp_path)
    result = restore_for_page(session, photo, "fp32", "off")
    assert result.after.is_file() and result.wb is None and result.wb_residual is None
    assert "Restormer has no WB/residual embeddings" in result.maps


def test_the_work_dir_loses_only_the_apps_own_request_folders(tmp_path):
    """--work-dir used to be pruned of every folder but the 8 newest: --work-dir ~/Pictures (or .) deleted the
    user's folders, .git included, at the first Restore. Only the app's request-* folders go now."""
    from utils.app.restore import KEEP_REQUESTS, request_folder
    # "request-0..." folders of the user's own sorted before the app's and were deleted as its oldest
    mine = [tmp_path / name for name in [".git", "photos", "request-01", "request-0-old", "request-notes",
                                         *(f"album_{i}" for i in range(12))]]
    for folder in mine:
        folder.mkdir()
        (folder / "keep.txt").write_text("mine")
    (tmp_path / "notes.txt").write_text("mine")
    made = [request_folder(tmp_path) for _ in range(KEEP_REQUESTS + 4)]
    assert all((folder / "keep.txt").read_text() == "mine" for folder in mine)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    requests = sorted(p for p in tmp_path.iterdir() if p.name.startswith("request-") and p not in mine)
    assert len(requests) == KEEP_REQUESTS and set(made[-KEEP_REQUESTS:]) == set(requests)


def test_examples_are_the_degraded_test_images(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8)
    for rel in ("derain/Rain100L/input/rain-1.png", "derain/Rain100L/target/rain-1.png", "lowlight/low/a.png",
                "lowlight/high/a.png", "denoise/bsd68/clean.png", "notes/readme.png"):
        write_image(tmp_path / rel, img)
    found = example_images(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), label) for p, label in found] == [
        ("derain/Rain100L/input/rain-1.png", "derain/Rain100L: rain-1.png"), ("lowlight/low/a.png", "lowlight: a.png")]
    assert example_images(tmp_path / "missing") == []


def _app(argv, capsys):
    """``python -m utils.app ARGV`` in this process: (exit status, stderr)."""
    try:
        args = app_main.get_args_parser().parse_args(argv)
        status = app_main.run_main(app_main.main, args)
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def test_without_model_the_app_serves_the_testers_default_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(app_main.UsageError, match=r"no --model given and no checkpoint under checkpoint/"):
        app_main.checkpoint_to_serve(None)
    (tmp_path / "checkpoint" / "run").mkdir(parents=True)
    (tmp_path / "checkpoint" / "run" / "epoch_009.pth").write_bytes(b"x")
    served = app_main.checkpoint_to_serve(None)
    assert served == "checkpoint/run/epoch_009.pth" == tester_bary.default_model()[0].as_posix()
    authors = tmp_path / "checkpoint" / "model_allBaryNet__61_1.0_5D.pt"
    authors.write_bytes(b"x")
    os.utime(authors, (1e9, 1e9))  # older than the trained one, and still the default, as in the tester
    assert app_main.checkpoint_to_serve(None) == "checkpoint/model_allBaryNet__61_1.0_5D.pt"
    assert "(the authors' checkpoint, the reference tester's default)" in capsys.readouterr().out
    assert app_main.checkpoint_to_serve("mine.pth") == "mine.pth"
    authors.unlink()
    (tmp_path / "checkpoint" / "stale.pth").symlink_to(tmp_path / "gone.pth")  # a dead link beside real weights
    assert app_main.checkpoint_to_serve(None) == "checkpoint/run/epoch_009.pth"  # it stopped the search before


def test_the_quick_demos_test_images_are_the_examples_when_the_full_demos_are_not_there(tmp_path, monkeypatch):
    """After `python -m utils.demo --quick` alone the page offered no example, though README says to click one of
    the demo's test images: the quick demo's are offered when the full demo's are not there."""
    monkeypatch.chdir(tmp_path)
    assert app_main.examples_folder(None) is None
    (tmp_path / "data" / "demo-quick" / "test").mkdir(parents=True)
    assert app_main.examples_folder(None) == Path("data/demo-quick/test")
    (tmp_path / "data" / "demo" / "test").mkdir(parents=True)
    assert app_main.examples_folder(None) == Path("data/demo/test")


def test_bad_flags_are_one_error_line(tmp_path, monkeypatch, capsys):
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("the app checks its flags after finding Gradio: make app installs it")
    monkeypatch.chdir(tmp_path)  # no checkpoint/ here
    (tmp_path / "a_file").write_text("mine")
    for argv, words in ((["--port", "http"], "argument --port: expected a port number"),
                        (["--port", "70000"], "between 1 and 65535"),
                        ([], "no --model given and no checkpoint under checkpoint/"),
                        (["--model", "nope.pth"], "--model nope.pth: checkpoint not found"),
                        (["--model", "x.pth", "--examples", "nowhere"], "--examples nowhere: no such folder"),
                        (["--model", "x.pth", "--examples", "a_file"], "--examples a_file: a file, not a folder"),
                        (["--model", "x.pth", "--work-dir", "a_file"],
                         "--work-dir a_file: a file, not a folder, is in the way"),
                        # root passes the permission bits, and /proc refused the folder only at the first Restore
                        (["--model", "x.pth", "--work-dir", "/proc/app-work"], "--work-dir /proc/app-work: ")):
        status, err = _app(argv, capsys)
        assert status in (1, 2) and err.startswith("error: ") and words in err and err.count("\n") == 1, (argv, err)
    # torch's own two-line text came out as two lines; a failed start made --work-dir; plain images under
    # --examples silently gave none
    torch.save({"model": build_model("BaryNet", "tiny").state_dict(), "model_config": model_config("tiny")},
               tmp_path / "tiny.pth")
    write_image(tmp_path / "photos" / "a.png", np.zeros((16, 16, 3), np.uint8))
    for argv, words in ((["--model", "photos/a.png"], "cannot read checkpoint photos/a.png"),
                        (["--model", "nope.pth", "--work-dir", "new/sub"], "--model nope.pth: checkpoint not found"),
                        (["--model", "tiny.pth", "--examples", "photos"],
                         "--examples photos: no degraded images in the benchmark layout")):
        status, err = _app(argv, capsys)
        assert status in (1, 2) and err.startswith("error: ") and words in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "photos", "tiny.pth"], "the probe left a folder"


# --------------------------------------------------------------------------- in the browser

@pytest.fixture(scope="module")
def browser_page(run_dir, tmp_path_factory):
    """``(driver, url, log)``: the app serving the run's checkpoint, and headless Chromium."""
    missing = missing_for_browser_test()
    if missing:
        pytest.skip(f"browser test skipped: {missing}")
    from utils.app import browser
    tmp = tmp_path_factory.mktemp("app")
    log = tmp / "app.log"
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    argv = ["--model", str(run_dir), "--device", "cpu", "--work-dir", str(tmp / "work")]
    with browser.serve(argv, log, cwd=tmp, env=env) as url, browser.headless_chromium() as driver:
        yield driver, url, log


def _decode(png: bytes, tmp_path: Path, name: str) -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(png)
    return read_image(path)


def _fetch_in_page(driver, url: str) -> bytes:
    """What the browser gets for ``url`` (an http or a blob: URL alike), fetched by the page itself."""
    text = driver.execute_async_script(
        "const [url, done] = arguments;"
        "fetch(url).then(r => r.blob()).then(b => { const f = new FileReader();"
        " f.onload = () => done(f.result); f.readAsDataURL(b); }).catch(e => done('error: ' + e));", url)
    assert text.startswith("data:"), text
    return base64.b64decode(text.split(",", 1)[1])


@pytest.mark.slow
def test_gradios_copies_of_uploads_go_in_the_apps_scratch_folder_removed_on_exit(run_dir, tmp_path, monkeypatch,
                                                                                   capsys):
    """Gradio kept its copies of each upload, and of what the page showed, in /tmp/gradio after the app stopped,
    readable by every user: they now go in the app's own scratch folder, removed on exit; a GRADIO_TEMP_DIR the
    user set is kept."""
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("the app needs Gradio: make app installs it")
    from utils.app import page
    seen = []

    def stop(*args, **kwargs):
        seen.append(os.environ.get("GRADIO_TEMP_DIR"))
        raise app_main.UsageError("stopped before serving")
    monkeypatch.setattr(page, "build_page", stop)
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    assert _app(["--model", str(run_dir), "--device", "cpu"], capsys)[0] == 2
    [used] = seen
    assert Path(used).name == "gradio" and Path(used).parent.name.startswith("baryir-app-")
    assert not Path(used).parent.exists() and "GRADIO_TEMP_DIR" not in os.environ
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "mine"))
    _app(["--model", str(run_dir), "--device", "cpu"], capsys)
    assert seen[-1] == str(tmp_path / "mine") and os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "mine")


def test_the_page_shows_what_the_tester_writes(browser_page, photo, tester_output, tmp_path):
    from utils.app import browser
    driver, url, log = browser_page
    browser.open_page(driver, url)
    status = browser.restore_in_page(driver, photo)
    assert status.startswith("Restored cat.png"), status
    expected = read_image(tester_output)
    assert list(browser.file_links(driver, "download")) == ["cat.png"], "the tester's output name"
    downloaded = _decode(browser.fetch(browser.download_link(driver)), tmp_path, "download.png")
    assert downloaded.dtype == expected.dtype and np.array_equal(downloaded, expected)
    shown = [_decode(_fetch_in_page(driver, src), tmp_path, f"shown{i}.png")
             for i, src in enumerate(browser.shown_images(driver, "comparison"))]
    assert len(shown) == 2, "the slider shows the input and the restoration"
    assert any(np.array_equal(s, expected) for s in shown), "the restoration in the slider is the tester's"
    assert any(np.array_equal(s, read_image(photo)) for s in shown), "the input in the slider is the upload"
    for role in ("residual", "wb", "wb_residual"):
        assert browser.shown_images(driver, role), f"no {role} map shown"
    assert "WB / residual embedding" in browser.element(driver, "maps").text


@pytest.mark.slow
def test_a_corrupt_upload_is_a_message_in_the_page(browser_page, corrupt):
    from utils.app import browser
    driver, url, log = browser_page
    browser.open_page(driver, url)
    status = browser.restore_in_page(driver, corrupt)
    assert status.startswith("Cannot restore broken.png"), status
    assert "corrupt, empty or not an image" in status
    assert not browser.shown_images(driver, "comparison")
    assert "Traceback" not in log.read_text(errors="replace")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio is not installed: make app")
def test_stopping_the_server_is_a_clean_exit_not_an_error(run_dir, tmp_path):
    """Ctrl-C or SIGTERM is how this server stops, and it ended as a failure: Gradio's "Keyboard interruption in
    main thread... closing server." and then "error: interrupted" with status 130."""
    from utils.app import browser
    log = tmp_path / "app.log"
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    with browser.serve(["--model", str(run_dir), "--device", "cpu"], log, cwd=tmp_path, env=env) as url:
        pass  # leaving stops the server with SIGTERM
    lines = log.read_text().splitlines()
    assert lines[-1] == f"=> stopped: {url.rstrip('/')} no longer serves the page", lines
    assert not any(line.startswith("error:") or "Keyboard" in line or "Closing server" in line for line in lines)


# --------------------------------------------------------------------------- from mutation spot-checks

def test_an_exif_rotated_upload_is_shown_upright_on_both_sides(session, tmp_path):
    """The restoration is of the upright photo (--input applies EXIF orientation): the input beside it must be
    upright too, or the slider compares two differently turned pictures and the residual cannot be taken."""
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    stored = data.chelsea()[60:60 + 24, 120:120 + 40]
    Image.fromarray(stored).save(tmp_path / "turned.png", exif=exif)
    result = restore_for_page(session, tmp_path / "turned.png", "fp32", "auto")
    assert result.status.startswith("**Restored** `turned.png` (24x40, 8-bit)"), result.status
    assert np.array_equal(read_image(result.before), np.rot90(stored, -1))
    assert read_image(result.after).shape == (40, 24, 3) and result.residual.shape == (40, 24, 3)


def test_a_16_bit_upload_is_said_to_be_16_bit(session, tmp_path):
    write_image(tmp_path / "deep.png", data.chelsea()[:16, :24].astype(np.uint16) * 257)
    result = restore_for_page(session, tmp_path / "deep.png", "fp32", "auto")
    assert "(24x16, 16-bit)" in result.status and read_image(result.after).dtype == np.uint16


def test_residual_map_is_restored_minus_input_averaged_over_the_channels():
    before = np.zeros((1, 2, 3), np.uint8)
    after = np.array([[[255, 0, 0], [0, 0, 51]]], np.uint8)
    np.testing.assert_allclose(residual_map(before, after), [[1 / 3, 0.2 / 3]], rtol=1e-6)
    np.testing.assert_allclose(residual_map(after, before), [[-1 / 3, -0.2 / 3]], rtol=1e-6)
    assert residual_map(before.astype(np.uint16), after.astype(np.uint16) * 257).dtype == np.float32


def test_residual_colours_are_red_for_brighter_blue_for_darker_white_for_unchanged():
    from utils.app.restore import display_limit, signed_colours
    colours = signed_colours(np.array([[0.02, -0.02, 0.0, 0.5]]), 0.02).astype(int)
    (r_up, _, b_up), (r_down, _, b_down), zero, clipped = colours[0]
    assert r_up > 2 * b_up and b_down > 2 * r_down and np.all(zero > 240) and np.array_equal(clipped, colours[0, 0])
    mostly_darker = np.r_[np.full(995, -0.01), np.full(5, 1.0)]  # a few extreme pixels do not set the scale
    assert display_limit(mostly_darker) == pytest.approx(0.01)
    still = np.zeros((3, 3))  # an unchanged image: one 8-bit step, white everywhere
    assert display_limit(still) == 1 / 255 and np.all(signed_colours(still, display_limit(still)) > 240)


def test_display_range_spans_the_middle_98_percent_of_the_values():
    from utils.app.restore import display_range
    assert display_range(np.arange(1001.0)) == pytest.approx((10.0, 990.0))
    low, high = display_range(np.full(5, 0.3))
    assert low == pytest.approx(0.3) and high > low


def test_heat_overlay_is_three_quarters_inferno_over_a_quarter_grey():
    import matplotlib

    from utils.app.restore import heat_overlay
    image = np.zeros((1, 2, 3))
    image[0, 1] = 1.0
    got = heat_overlay(image, np.array([[2.0, -1.0]]), (0.0, 1.0)).astype(int)  # clipped to the ends of the scale
    top, bottom = (np.array(matplotlib.colormaps["inferno"](v)[:3]) for v in (1.0, 0.0))
    np.testing.assert_allclose(got[0, 0], 255 * 0.75 * top, atol=1)
    np.testing.assert_allclose(got[0, 1], 255 * (0.25 + 0.75 * bottom), atol=1)


def test_the_embedding_maps_are_the_norms_of_the_wb_and_residual_latents(session):
    from utils.analysis.embeddings import channel_norm, latents
    from utils.app.restore import embedding_maps
    img = data.chelsea()[:24, :40]
    maps = embedding_maps(session.model, img, torch.device("cpu"))
    b, r = latents(session.model, torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None])
    assert maps.wb.shape == maps.residual.shape == (24, 40) and not maps.scaled
    for got, latent in ((maps.wb, b[0]), (maps.residual, r[0])):
        # the 3 x 5 block norms, bilinearly upsampled by 8 (which keeps their mean)
        assert got.mean() == pytest.approx(channel_norm(latent).mean().item(), rel=1e-3)
    assert abs(maps.wb.mean() - maps.residual.mean()) > 0.1 * maps.wb.mean()


def test_scaled_down_keeps_a_side_of_exactly_the_limit():
    from utils.app.restore import scaled_down
    x = np.zeros((30, 40, 3), np.float32)
    assert scaled_down(x, 40) == (x, False)
    small, scaled = scaled_down(x, 20)
    assert scaled and small.shape == (15, 20, 3)


def test_the_tiling_and_precision_choices_the_page_accepts():
    from utils.app.restore import precisions_for
    assert parse_tile("40") == 40  # the smallest: the 32-pixel overlap and a step of 8
    with pytest.raises(ValueError, match="at least 40"):
        parse_tile("32")
    assert precisions_for(torch.device("cpu")) == ("fp32", "bf16")
    assert precisions_for(torch.device("cuda")) == ("fp32", "bf16", "fp16")


def test_only_out_of_memory_gets_the_tiling_hint(session, corrupt):
    status = restore_for_page(session, corrupt, "fp32", "auto").status
    assert status.startswith("**Cannot restore**") and "Tiling" not in status


def test_each_set_offers_a_different_one_of_its_images(tmp_path):
    for rel in ("derain/A/input/a1.png", "derain/A/input/a2.png", "derain/A/target/a1.png", "derain/A/target/a2.png",
                "derain/B/input/b1.png", "derain/B/input/b2.png", "derain/B/target/b1.png", "derain/B/target/b2.png"):
        write_image(tmp_path / rel, np.zeros((16, 16, 3), np.uint8))
    assert [label for _, label in example_images(tmp_path)] == ["derain/A: a1.png", "derain/B: b2.png"]


def test_one_restoration_runs_at_a_time_whatever_gradios_queue_lets_through(session, photo, tmp_path):
    """Cancelling a request frees its place in Gradio's queue while its thread goes on computing: each
    cancel-and-retry started one more full-size restoration beside the ones still running (memory grew by one
    image's each time). A second request now waits for the running one."""
    import threading
    session = dataclasses.replace(session, work_dir=tmp_path / "work")
    inside, second = [], []

    def hook(module, args):
        inside.append(threading.current_thread().name)
        if len(inside) == 1:  # the first request, in its forward: a second one arrives meanwhile
            second.append(threading.Thread(target=restore_for_page, args=(session, photo, "fp32", "auto"),
                                           name="second"))
            second[0].start()
            second[0].join(timeout=1.0)  # it finishes in this second only if nothing holds it back
            inside.append("second still waiting" if second[0].is_alive() else "second ran alongside")
    handle = session.model.register_forward_pre_hook(hook)
    try:
        assert restore_for_page(session, photo, "fp32", "auto").status.startswith("**Restored**")
        second[0].join()
    finally:
        handle.remove()
    assert inside[1] == "second still waiting", inside
    assert "second" in inside[2:], "the second request never restored"


def test_stopping_the_app_ends_the_restoration_at_work_and_waits_for_it(session, photo, tmp_path):
    """Ctrl-C or SIGTERM while a restoration ran ended the app with "terminate called without an active
    exception" (SIGABRT, status 134): Python tore down while the request's thread was inside PyTorch. The app now
    stops that restoration at the network's next layer and waits for it before it exits."""
    session = dataclasses.replace(session, work_dir=tmp_path / "work")
    layers = []

    def stop_asked_meanwhile(module, args):  # the first layer's work: Ctrl-C arrives now
        layers.append(module)
        session.stopping.set()
    handle = session.model.register_forward_pre_hook(stop_asked_meanwhile)
    try:
        status = restore_for_page(session, photo, "fp32", "auto").status
    finally:
        handle.remove()
    assert len(layers) == 1 and status.startswith("**Cannot restore** `cat.png`: the app was stopped while "
                                                  "restoring it"), status
    assert list(session.work_dir.iterdir()) == [], "the stopped request left its folder"
    session.stop()  # nothing at work: returns at once
    assert not session.busy.locked()
    assert "stopped while restoring" in restore_for_page(session, photo, "fp32", "auto").status
    fresh = dataclasses.replace(session)  # a copy is a session of its own, not one stopped already
    assert not fresh.stopping.is_set() and fresh.busy is not session.busy


def test_an_upload_gradio_has_removed_says_to_drop_it_again(session, tmp_path):
    """Gradio removes its copies of uploads after an hour; pressing Restore again later on the upload the page
    still lists (another tiling, say) said "image not found: photo.png", with no way out."""
    session = dataclasses.replace(session, work_dir=tmp_path / "work")
    status = restore_for_page(session, tmp_path / "cache" / "photo.png", "fp32", "256").status
    assert status == ("**Cannot restore** `photo.png`: the app no longer has its copy of this upload (uploads are "
                      "removed once 60 minutes old): drop the image again, then press Restore")
    assert not session.work_dir.exists()


def test_a_tiled_restoration_reports_its_tiles_to_the_page(session, photo, tmp_path):
    """A large image restored in tiles takes minutes, and the page showed only a clock ("processing | 312.4s"):
    its progress bar now follows the tiles."""
    session = dataclasses.replace(session, work_dir=tmp_path / "work")
    told = []
    result = restore_for_page(session, photo, "fp32", "48",
                              tile_progress=lambda done, total: told.append((done, total)))
    assert result.status.startswith("**Restored**") and told, result.status
    total = told[-1][1]
    assert total > 1 and told[-1] == (total, total) and all(t == total for _, t in told)
    assert restore_for_page(session, photo, "fp32", "off", tile_progress=told.append).after.is_file()
    assert told[-1] == (total, total), "an image restored whole has no tiles to report"
    if importlib.util.find_spec("gradio") is not None:
        from utils.app.page import tiles_shown_by
        shown = []
        tiles_shown_by(lambda *args, **kwargs: shown.append((args, kwargs)))(3, 4)
        assert shown == [(((3, 4),), {"desc": "restoring in tiles", "unit": "tiles"})]


def test_a_cancelled_request_ends_at_the_next_layer_and_frees_the_app(session, photo, tmp_path):
    """A request whose client went away (a closed tab, Stop, gradio_client's cancel) ran to its end, and the
    next request waited for it: its cancel event now ends it at the network's next layer."""
    import threading
    session = dataclasses.replace(session, work_dir=tmp_path / "work")
    layers = []
    with session.cancellable("tab-1") as cancelled, session.cancellable("tab-2") as other:
        def cancelled_meanwhile(module, args):  # the first layer's work: the tab is closed now
            layers.append(module)
            assert session.cancel("tab-1") == 1
        handle = session.model.register_forward_pre_hook(cancelled_meanwhile)
        try:
            status = restore_for_page(session, photo, "fp32", "auto", cancelled=cancelled).status
        finally:
            handle.remove()
        assert cancelled.is_set() and not other.is_set(), "only the closed tab's request is cancelled"
    assert len(layers) == 1 and status.startswith("**Cannot restore** `cat.png`: its request was cancelled"), status
    assert list(session.work_dir.iterdir()) == [], "the cancelled request left its folder"
    assert not session.busy.locked() and session.cancel("tab-1") == 0, "a finished request is no longer listed"
    waiting = threading.Event()  # cancelled while it waits behind another request: it starts none
    waiting.set()
    assert "its request was cancelled" in restore_for_page(session, photo, "fp32", "auto", cancelled=waiting).status
    assert restore_for_page(session, photo, "fp32", "auto").status.startswith("**Restored**")


def test_a_cancel_inside_the_cpus_attention_stops_it_at_the_next_operation(session, photo, tmp_path):
    """On the CPU the channels-last attention runs its convolutions, Gram product and softmax as functions, with no
    layer to look at the cancel event between them: a cancel set inside it waited for the attention to finish (on a
    large untiled image, seconds) and stopped at its project_out. It now stops the work at the next operation: no
    operation runs after the cancel, and the transformer block it came in never finishes."""
    from torch.overrides import TorchFunctionMode

    from net.blocks import Attention, TransformerBlock
    session = dataclasses.replace(session, work_dir=tmp_path / "work")
    blocks, attentions, projections = [], [], []
    handles = [m.register_forward_hook(lambda *args: blocks.append("done"))
               for m in session.model.modules() if isinstance(m, TransformerBlock)]
    for attention in (m for m in session.model.modules() if isinstance(m, Attention)):
        handles.append(attention.register_forward_pre_hook(lambda *args: attentions.append("started")))
        handles.append(attention.project_out.register_forward_pre_hook(lambda *args: projections.append("started")))

    class CancelAtFirstProduct(TorchFunctionMode):  # below the app's checks: sees only the operations they let run
        after_cancel: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", str(func))
            if cancelled.is_set():
                self.after_cancel.append(name)
            elif name in ("__matmul__", "matmul"):  # the attention's Gram product q^T k: inside the attention
                cancelled.set()
                at.update(blocks=len(blocks), attentions=len(attentions), projections=len(projections))
            return func(*args, **(kwargs or {}))

    at = {}
    with session.cancellable("tab-1") as cancelled:
        try:
            with CancelAtFirstProduct() as watched:
                status = restore_for_page(session, photo, "fp32", "off", cancelled=cancelled).status
        finally:
            for handle in handles:
                handle.remove()
    assert status.startswith("**Cannot restore** `cat.png`: its request was cancelled"), status
    assert at == {"blocks": 0, "attentions": 1, "projections": 0}, f"not in the first block's attention: {at}"
    assert watched.after_cancel == [], f"operations ran after the cancel: {watched.after_cancel}"
    assert blocks == [] and projections == [], "the attention (and its block) went on after the cancel"
    assert not session.busy.locked() and list(session.work_dir.iterdir()) == []


def test_the_stop_checks_run_at_each_operation_on_the_cpu_and_at_each_layer_on_a_gpu():
    """On a GPU the restoring thread queues operations ahead of the device, so it looks at each layer only (a look
    at each operation would cost a small image's launch-bound forward Python time and stop nothing sooner)."""
    from utils.app.stop_checks import checked_while, where_it_stops
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 3, 1))
    x = torch.zeros(1, 3, 8, 8)
    looked = {}
    for device in ("cpu", "cuda"):  # the CPU model stands for the GPU's: only the choice of check points is tested
        calls = []
        with checked_while(model, torch.device(device), lambda: calls.append(1)):
            model(x)
            calls.append("layers done")
            (x * 2).sum()  # two operations outside any layer
        looked[device] = calls
    assert looked["cuda"] == [1, 1, 1, "layers done"], "the Sequential and its two layers, once each"
    assert looked["cpu"] == [1, 1, "layers done", 1, 1], "each operation: two convolutions, a product, a sum"
    assert where_it_stops(torch.device("cpu")) == "at its next PyTorch operation"
    assert where_it_stops(torch.device("cuda")) == "at the network's next layer"


def test_the_status_times_the_restoration_apart_from_its_wait_for_the_one_before(session, photo, tmp_path,
                                                                                 monkeypatch):
    """A request that waited for the one before it (a cancelled restoration still ending) counted the wait in its
    "s in all", which read as the time this restoration took: its own time excludes the wait now, and the wait is
    said apart, and the request says once that it waits. A clock stands still but for the 100 s the wait takes (no
    timing of the machine's own)."""
    import threading
    import types

    clock = [0.0]

    class TakenAfterAWait:  # the request before it holds the lock for 100 s
        def __init__(self):
            self.lock = threading.Lock()

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            if not blocking:  # held by the request before
                return False
            clock[0] += 100.0
            return self.lock.acquire(timeout=timeout)

        def release(self) -> None:
            self.lock.release()

        def locked(self):
            return self.lock.locked()
    monkeypatch.setattr(app_restore, "time", types.SimpleNamespace(perf_counter=lambda: clock[0],
                                                                   time_ns=app_restore.time.time_ns))
    session = dataclasses.replace(session, work_dir=tmp_path / "work")
    session.busy = TakenAfterAWait()
    told = []
    status = restore_for_page(session, photo, "fp32", "auto", waiting=lambda: told.append(clock[0])).status
    assert status.startswith("**Restored** `cat.png`") and " s (the network; 0.00 s with reading, writing and the " \
        "maps, after waiting 100.00 s for the request before it to end) on cpu" in status, status
    assert told == [0.0], "not told once, before the wait"
    session.busy = threading.Lock()  # taken at once: no wait to speak of
    status = restore_for_page(session, photo, "fp32", "auto", waiting=lambda: told.append(clock[0])).status
    assert told == [0.0], "told of a wait there was not"
    assert " s (the network; 0.00 s with reading, writing and the maps) on cpu" in status, status


# --------------------------------------------------------------------------- a real server, through gradio_client

@pytest.fixture(scope="module")
def api_server(run_dir, tmp_path_factory):
    """``(url, log, work_dir)``: ``python -m utils.app`` serving the run's checkpoint, for gradio_client."""
    if importlib.util.find_spec("gradio_client") is None:
        pytest.skip("gradio_client is not installed: make app (it comes with Gradio)")
    from utils.app import browser
    tmp = tmp_path_factory.mktemp("api")
    log = tmp / "app.log"
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    argv = ["--model", str(run_dir), "--device", "cpu", "--work-dir", str(tmp / "work")]
    with browser.serve(argv, log, cwd=tmp, env=env) as url:
        yield url, log, tmp / "work"


@pytest.fixture(scope="module")
def many_tiles(tmp_path_factory):
    """An image that takes hundreds of 48-pixel tiles (tens of seconds on one CPU thread) to restore."""
    rng = np.random.default_rng(1)
    return write_image(tmp_path_factory.mktemp("large") / "large.png",
                       rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))


def _deadline_wait(condition, what: str, timeout: float = 120.0):
    """``condition()``'s first truthy value, polled until ``timeout`` s have passed (then a TimeoutError)."""
    import time
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)  # polling interval of the condition, not a wait for an event
    return found


def _cancelled_line(name: str) -> str:
    return f"=> cancelled: {name} was stopped at its next PyTorch operation; the next request runs now"


@pytest.mark.slow
def test_a_request_cancelled_through_gradio_client_stops_at_the_next_layer(api_server, many_tiles, photo):
    """gradio_client's cancel (what the page's Stop sends too) left the restoration running to its end, the next
    request waiting for it: it now ends at the network's next layer, keeps nothing, and the next one runs."""
    from gradio_client import Client, handle_file
    url, log, work = api_server
    client = Client(url, verbose=False)
    try:
        job = client.submit(handle_file(str(many_tiles)), "fp32", "48", api_name="/on_restore")
        progress = _deadline_wait(lambda: [p for p in job.status().progress_data or () if p.index],
                                  "the first tiles being restored")
        assert progress[0].unit == "tiles" and progress[0].index < progress[0].length
        job.cancel()
        status = client.predict(handle_file(str(photo)), "fp32", "auto", api_name="/on_restore")[0]
    finally:
        client.close()
    assert status.startswith("**Restored** `cat.png`"), status
    _deadline_wait(lambda: _cancelled_line("large.png") in log.read_text(), "the server saying it stopped")
    assert not list(work.glob("request-*/large.png")), "the cancelled restoration ran to its end"
    assert "Traceback" not in log.read_text()


_KILLED_CLIENT = """
import sys
import time
from gradio_client import Client, handle_file
job = Client(sys.argv[1], verbose=False).submit(handle_file(sys.argv[2]), "fp32", "48", api_name="/on_restore")
deadline = time.monotonic() + 120
while not [p for p in job.status().progress_data or () if p.index]:
    if time.monotonic() > deadline:  # says nothing: the test fails, it does not hang
        sys.exit(1)
    time.sleep(0.1)  # polling interval
print("tiles under way", flush=True)
sys.stdin.read()  # until it is killed
"""


@pytest.mark.slow
def test_a_gradio_client_killed_mid_restoration_stops_it_at_the_next_layer(api_server, many_tiles, photo):
    """An API client killed while its image is restored (kill -9, a crashed script) cannot cancel: Gradio sees its
    heartbeat connection close and calls the page's unload, which ends the restoration at the network's next layer,
    keeping nothing, and the next request runs."""
    import subprocess
    import sys

    from gradio_client import Client, handle_file
    url, log, work = api_server
    before = log.read_text().count(_cancelled_line("large.png"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    client = subprocess.Popen([sys.executable, "-c", _KILLED_CLIENT, url, str(many_tiles)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "tiles under way", "the client's restoration never started"
    finally:
        client.kill()
        client.wait()
    _deadline_wait(lambda: log.read_text().count(_cancelled_line("large.png")) > before,
                   "the server stopping the killed client's restoration")
    assert not list(work.glob("request-*/large.png")), "the killed client's restoration ran to its end"
    other = Client(url, verbose=False)
    try:
        status = other.predict(handle_file(str(photo)), "fp32", "auto", api_name="/on_restore")[0]
    finally:
        other.close()
    assert status.startswith("**Restored** `cat.png`"), status
    assert "Traceback" not in log.read_text()


def _start_restoring(driver, image: Path, tiling: str) -> None:
    """In the page: ``tiling`` typed into Tiling, ``image`` uploaded, Restore pressed, and its first tiles shown
    done in the progress bar."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from utils.app import browser
    tile = browser.element(driver, "tiling", "input")
    tile.send_keys(Keys.CONTROL, "a")
    tile.send_keys(tiling, Keys.ENTER)
    browser.element(driver, "upload", "input[type=file]").send_keys(str(image))
    browser.wait_until(driver, lambda d: image.name in browser.file_links(d, "upload"), browser.RESTORE_TIMEOUT,
                       f"the upload of {image.name} being listed")
    browser.element(driver, "restore").click()

    def tiles_done(d) -> bool:
        import re
        return bool(re.search(r"\b[1-9]\d*/\d+ tiles", d.find_element(By.TAG_NAME, "body").text))
    browser.wait_until(driver, tiles_done, browser.RESTORE_TIMEOUT, "the first tiles being restored")


@pytest.mark.slow
def test_stop_and_a_closed_tab_end_the_restoration_at_work(browser_page, many_tiles, photo):
    """The page had no way to stop a restoration, and closing its tab left it running to its end, the next
    request (another tab's, say) waiting for it: Stop, and a closed tab, end it at the network's next layer."""
    from utils.app import browser
    from utils.app.page import STOPPED
    driver, url, log = browser_page
    for leave in ("Stop", "closed tab"):
        before = log.read_text().count(_cancelled_line("large.png"))
        browser.open_page(driver, url)
        _start_restoring(driver, many_tiles, "48")
        if leave == "Stop":
            browser.element(driver, "stop").click()
            shown = STOPPED.replace("**", "")
            browser.wait_until(driver, lambda d: browser.status_text(d) == shown, browser.RESTORE_TIMEOUT,
                               "the page saying it stopped")
            assert not browser.shown_images(driver, "comparison")
        else:
            driver.get("about:blank")  # the tab goes: the page's connection to the server closes
        _deadline_wait(lambda: log.read_text().count(_cancelled_line("large.png")) > before,
                       f"the server stopping the restoration after {leave}")
        browser.open_page(driver, url)
        assert browser.restore_in_page(driver, photo).startswith("Restored cat.png"), leave
    assert "Traceback" not in log.read_text(errors="replace")


def test_none_for_a_choice_is_the_pages_default():
    """An API call's None for Tiling was read as the word "none", tiling off (a large image then ran out of memory
    where the page, whose default is auto, tiled it), and None for Precision was refused: both are the page's
    defaults now. The word "none" typed into Tiling is refused, naming the choices, not read as either."""
    assert parse_tile(None) is None and parse_tile("auto") is None and parse_tile("off") == 0
    protocol = page_protocol(None, None)
    assert (protocol.precision, protocol.tile) == ("fp32", None)
    with pytest.raises(ValueError, match="tiling 'none': choose 'auto', 'off' or a tile size"):
        parse_tile("none")


@pytest.mark.slow
def test_none_through_gradio_client_restores_as_the_pages_defaults(api_server, photo, tester_output):
    from gradio_client import Client, handle_file
    url, log, work = api_server
    client = Client(url, verbose=False)
    try:
        status, _, download, *_ = client.predict(handle_file(str(photo)), None, None, api_name="/on_restore")
    finally:
        client.close()
    assert status.startswith("**Restored** `cat.png`") and "fp32, tiling auto (the whole image fitted)" in status, \
        status
    assert np.array_equal(read_image(download), read_image(tester_output)), "not the page's defaults' PNG"


def test_stop_ends_the_restorations_of_its_page_which_answer_stopped_without_gradios_error(session, photo, tmp_path):
    """Stop cancelled the handler through Gradio (``cancels=``), which marked every output "Error", and a follow-up
    then said "Stopped": on a busy machine the follow-up's answer reached the browser before Gradio's cancel, and the
    page kept "Error Stopped: ..." (the browser test of Stop waited 60 s on it, in sessions 31 and 35). Stop now sets
    its page's cancel events, and the restoration answers "Stopped" itself, as any other result. Stop with nothing at
    work changes nothing and is not remembered; a request waiting behind another page's is stopped at once."""
    import asyncio
    import threading
    import types

    from utils.app import page as app_page
    session = dataclasses.replace(session, work_dir=tmp_path / "work")
    fns = [f for f in app_page.build_page(session, []).fns.values() if f.fn is not None]
    assert not any(f.cancels for f in fns), "a Gradio cancel marks the outputs Error"
    handlers = {f.fn.__name__: f.fn for f in fns}
    [restoring] = [f for f in fns if f.fn.__name__ == "on_restore"]
    assert restoring.concurrency_limit is None, "a request Gradio queues is out of Stop's reach: it must wait inside"
    on_restore, on_stop = handlers["on_restore"], handlers["on_stop"]
    tab, other_tab = types.SimpleNamespace(session_hash="tab-1"), types.SimpleNamespace(session_hash="tab-2")
    stopped = (app_page.STOPPED, None, None, None, None, None, "")

    on_stop(tab)  # nothing at work
    assert asyncio.run(on_restore(str(photo), "fp32", "auto", tab))[0].startswith("**Restored**"), \
        "a Stop with nothing at work stopped the next restoration"

    inside, release = threading.Event(), threading.Event()

    def hold(*args) -> None:  # a restoration held in its first layer until released (a hook's value would be its input)
        inside.set()
        release.wait(timeout=60)

    async def stop_inside() -> tuple:
        restoring = asyncio.create_task(on_restore(str(photo), "fp32", "auto", tab))
        await asyncio.to_thread(inside.wait, 60)
        on_stop(tab)
        release.set()
        return await restoring
    before = set(session.work_dir.glob("request-*/*.png"))
    with session.model.register_forward_pre_hook(hold):
        assert asyncio.run(stop_inside()) == stopped
    assert set(session.work_dir.glob("request-*/*.png")) == before, "the stopped restoration ran to its end"

    async def two_pages(whose: types.SimpleNamespace) -> tuple[tuple, tuple]:
        """What ``tab`` and ``other_tab`` are answered when ``tab``'s request waits for ``other_tab``'s and ``whose``
        Stop is pressed meanwhile."""
        at_work = asyncio.create_task(on_restore(str(photo), "fp32", "auto", other_tab))
        await asyncio.to_thread(inside.wait, 60)
        waiting = asyncio.create_task(on_restore(str(photo), "fp32", "auto", tab))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "the second request did not wait for the first"
        on_stop(whose)
        if whose is tab:  # answered while the other page's request still holds the model
            await asyncio.wait_for(asyncio.shield(waiting), timeout=10)
        assert not at_work.done(), "the request at work was stopped by the other page's Stop"
        release.set()
        return await waiting, await at_work
    for whose, answers in ((tab, "stopped, restored"), (other_tab, "restored, stopped")):
        inside.clear()
        release.clear()
        with session.model.register_forward_pre_hook(hold):
            mine, other = asyncio.run(two_pages(whose))
        said = ", ".join("stopped" if a == stopped else "restored" if a[0].startswith("**Restored**") else a[0]
                         for a in (mine, other))
        assert said == answers, f"{whose.session_hash}'s Stop"
    with session.busy:  # every restoration's thread has ended
        pass
