"""utils/data/image_io.py: every kind of file reads by the one documented rule; corrupt files name themselves."""
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from utils.data.image_headers import lost_on_restoring
from utils.data.image_io import ImageReadError, image_size, quantise, read_image, to_float, write_image

RGB = data.astronaut()[100:148, 150:214]  # 48 x 64, not square so rotations show


def test_rgb_png_and_jpeg(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.dtype == np.uint8 and got.shape == (48, 64, 3) and np.array_equal(got, RGB)
    Image.fromarray(RGB).save(tmp_path / "a.jpg", quality=95)
    jpg = read_image(tmp_path / "a.jpg")
    assert jpg.shape == (48, 64, 3) and np.abs(jpg.astype(int) - RGB).mean() < 4


def test_grayscale_is_replicated(tmp_path):
    gray = RGB[..., 1]
    Image.fromarray(gray).save(tmp_path / "g.png")
    got = read_image(tmp_path / "g.png")
    assert got.shape == (48, 64, 3) and all(np.array_equal(got[..., c], gray) for c in range(3))
    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")  # grey + alpha
    assert np.array_equal(read_image(tmp_path / "la.png"), got)


def test_alpha_is_dropped_and_palette_expanded(tmp_path):
    rgba = np.dstack([RGB, np.linspace(0, 255, RGB.shape[1], dtype=np.uint8)[None].repeat(48, 0)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), RGB)
    pal = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    pal.save(tmp_path / "pt.png", transparency=0)  # palette with a transparent entry
    assert np.array_equal(read_image(tmp_path / "pt.png"), np.asarray(pal.convert("RGB")))


@pytest.mark.parametrize("name", ["anim.webp", "anim.png", "pages.tif"])
def test_an_animation_reads_its_first_frame_and_says_the_rest_is_lost(tmp_path, name):
    """An animated WebP/PNG (or a multi-page TIFF) was restored as its first frame with no word that the other
    frames were dropped: lost_on_restoring said nothing of them."""
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], **({} if name.endswith("tif") else
                   {"duration": 100, **({"lossless": True} if name.endswith("webp") else {})}))
    assert np.array_equal(read_image(tmp_path / name), RGB)
    assert lost_on_restoring(tmp_path / name) == ["animation"]
    frames[0].save(tmp_path / ("still" + name[name.index("."):]))
    assert lost_on_restoring(tmp_path / ("still" + name[name.index("."):])) == []


def test_16_bit_files_stay_16_bit(tmp_path):
    rgb16 = RGB.astype(np.uint16) * 257 + 3
    write_image(tmp_path / "c16.png", rgb16)
    got = read_image(tmp_path / "c16.png")
    assert got.dtype == np.uint16 and np.array_equal(got, rgb16)
    cv2.imwrite(str(tmp_path / "g16.png"), rgb16[..., 0])
    g = read_image(tmp_path / "g16.png")
    assert g.dtype == np.uint16 and np.array_equal(g[..., 2], rgb16[..., 0])
    # to_float / quantise round-trip exactly at 16 bits
    assert np.array_equal(quantise(to_float(rgb16), 16), rgb16)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_ignored_by_default_and_applied_on_request(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"  # lossless, so the comparison is exact
    Image.fromarray(RGB).save(path, exif=exif)
    # Default: as the reference reads it, PIL convert('RGB'), which does not rotate.
    with Image.open(path) as im:
        assert np.array_equal(read_image(path), np.asarray(im.convert("RGB")))
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(read_image(path), RGB) and image_size(path) == (48, 64)
    # exif=True: upright, as a viewer shows it.
    got = read_image(path, exif=True)
    assert np.array_equal(got, upright)
    assert image_size(path, exif=True) == got.shape[:2]
    if orientation >= 5:
        assert got.shape[:2] == (64, 48)


def test_exif_rotated_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "r.jpg"
    Image.fromarray(RGB).save(path, quality=95, exif=exif)
    stored = read_image(path)
    assert stored.shape == (48, 64, 3) and image_size(path) == (48, 64)
    with Image.open(path) as im:
        assert np.array_equal(stored, np.asarray(im.convert("RGB")))  # the reference's reading
    assert np.abs(stored.astype(int) - RGB).mean() < 4
    upright = read_image(path, exif=True)
    assert upright.shape == (64, 48, 3) and image_size(path, exif=True) == (64, 48)
    assert np.array_equal(upright, np.rot90(stored, -1))


def _exact_ties(peak: int) -> np.ndarray:
    """float32 values x with x * peak == k + 0.5 exactly in float32, for many k (even and odd)."""
    ks = np.arange(0, peak, max(1, peak // 509), dtype=np.float64)
    x = ((ks + 0.5) / peak).astype(np.float32)
    x = x[x * np.float32(peak) == (ks + 0.5)]
    assert len(x) > 100
    return x


def test_quantise_rounds_half_up_as_torchvision_save_image(tmp_path):
    torch = pytest.importorskip("torch")
    ties = _exact_ties(255)
    img = np.concatenate([ties, np.float32([-0.2, 0.0, 1.0, 1.3, 0.25, 0.75])])
    img = np.resize(img, (3, 4, (img.size + 11) // 12)).transpose(1, 2, 0)  # (H, W, 3), values cycled
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    expected = t.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # save_image's
    assert not np.array_equal(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), expected)  # ties do differ
    got = quantise(img, 8)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    torchvision = pytest.importorskip("torchvision")
    torchvision.utils.save_image(t, tmp_path / "tv.png")
    assert np.array_equal(read_image(tmp_path / "tv.png"), got)
    # 16 bits: the same rule with 65535.
    ties16 = _exact_ties(65535)
    expected16 = np.floor(torch.from_numpy(ties16).mul(65535).add_(0.5).numpy()).astype(np.uint16)
    assert not np.array_equal(np.round(ties16 * np.float32(65535)).astype(np.uint16), expected16)
    assert np.array_equal(quantise(ties16, 16), expected16)
    assert quantise(np.float32([np.nan, -1, 2]), 8).tolist() == [0, 0, 255]


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_corrupt_file_names_itself(tmp_path, kind):
    Image.fromarray(RGB).save(tmp_path / "ok.png")
    raw = (tmp_path / "ok.png").read_bytes()
    bad = tmp_path / f"bad_{kind}.png"
    bad.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"not an image" * 10, "empty": b""}[kind])
    with pytest.raises(ImageReadError, match=f"bad_{kind}.png"):
        read_image(bad)
    if kind != "truncated":  # a truncated file has a valid header: its size is known
        with pytest.raises(ImageReadError, match=f"bad_{kind}.png"):
            image_size(bad)
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_a_truncated_file_is_one_error_without_opencvs_own_warning(tmp_path, capfd):
    """OpenCV logged '[ WARN:0@0.5] global grfmt_png.cpp:793 ... PNG input buffer is incomplete' on stderr
    beside the tester's one error line."""
    write_image(tmp_path / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    raw = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(raw[: len(raw) // 2])
    capfd.readouterr()
    with pytest.raises(ImageReadError, match="corrupt"):
        read_image(tmp_path / "t.png")
    assert "WARN" not in capfd.readouterr().err


def test_write_image_rejects_wrong_arrays(tmp_path):
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))


# --------------------------------------------------------------------------- images too large to read

def _png(path, width, height, rows=None, colour_type=0):
    """Write a PNG by hand: 8-bit grey (``colour_type`` 0) ``width`` x ``height``, all zero, compressed
    row block by row block (``rows``: how many rows of data to write; fewer than ``height`` = truncated)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    comp = zlib.compressobj(1)
    block = b"\x00" * (width + 1) * 500  # filter byte 0 + a zero row, 500 rows at a time
    rows = height if rows is None else rows
    idat = b"".join(comp.compress(block) for _ in range(rows // 500)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path):
    """A header above OpenCV's 2^30 pixels used to raise a raw cv2.error; above the default limit
    (100 Mpx, no flag needed: the trainer's dataset reads through here too) it is an ImageReadError."""
    from utils.data import image_io

    huge = _png(tmp_path / "huge.png", 40000, 40000, rows=0)  # 1.6 Gpx claimed, a few bytes of data
    with pytest.raises(ImageReadError, match=r"huge\.png is 40000x40000 = 1600\.0 Mpx.*--max-pixels"):
        read_image(huge)
    assert image_size(huge) == (40000, 40000)  # the header alone, nothing decoded
    phone = _png(tmp_path / "phone.png", 12000, 9000, rows=0)  # 108 Mpx: over the default limit
    with pytest.raises(ImageReadError, match="phone.png is 12000x9000"):
        read_image(phone)
    with image_io.pixel_limit(200_000_000):  # raised: decoding is tried, and the truncated data named
        with pytest.raises(ImageReadError, match="cannot decode image .*phone.png"):
            read_image(phone)
    assert image_io.max_pixels() == image_io.MAX_PIXELS
    # JPEG headers are read the same way (start-of-frame segment after the EXIF one).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(RGB).save(tmp_path / "r.jpg", quality=90, exif=exif)
    # a small limit was "0.0 Mpx, more than the limit of 0.0 Mpx ... more than 0.0 GiB of memory"
    with pytest.raises(ImageReadError, match=r"r\.jpg is 64x48 = 3,072 pixels, more than the limit of 3,071 pixels: "
                                             r"restoring it would need more than 36.0 KiB"):
        read_image(tmp_path / "r.jpg", max_pixels=64 * 48 - 1)
    assert read_image(tmp_path / "r.jpg", max_pixels=64 * 48).shape == (48, 64, 3)


_BOUNDED = """
import resource, sys
with open("/proc/self/status") as fh:
    base = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize"))
limit = base + (1 << 30)  # 1 GiB over what the imports took: the old reading needed several
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from utils.data.image_io import ImageReadError, read_image
try:
    read_image(sys.argv[1])
except ImageReadError as exc:
    print("refused:", exc)
"""


def test_huge_png_is_refused_within_bounded_memory(tmp_path):
    """A 1.7 MB PNG of 20000x20000 used to take gigabytes to read; it is refused from its header. Run in a
    child process whose address space is capped, so a regression fails instead of exhausting the machine."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    big = _png(tmp_path / "big.png", 20000, 20000)
    assert big.stat().st_size < 4 << 20
    repo = Path(__file__).resolve().parents[1]
    script = "import cv2, numpy, PIL.Image, utils.errors\n" + _BOUNDED  # the imports before measuring
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(big)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "refused:" in done.stdout and "20000x20000" in done.stdout, done.stderr[-2000:]


def test_a_large_file_with_a_huge_header_is_refused_without_reading_it(tmp_path):
    """The whole file used to be read (and copied) before its header was checked: a 3 GB file claiming
    100000x100000 took 6.9 GB of memory to refuse. A sparse file, in a child whose address space is capped."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    big = _png(tmp_path / "sparse.png", 100000, 100000, rows=0)
    with open(big, "r+b") as fh:
        fh.truncate(3 << 30)  # 3 GiB of holes after the header: no disk used
    repo = Path(__file__).resolve().parents[1]
    script = "import cv2, numpy, PIL.Image, utils.errors\n" + _BOUNDED
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(big)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "refused:" in done.stdout and "100000x100000" in done.stdout, \
        done.stderr[-2000:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_tiff_is_turned_by_its_orientation_tag_once(tmp_path, orientation):
    """OpenCV's TIFF decoder (like PIL, which the reference reads with) applies the orientation tag itself;
    read_image(exif=True), the app's and --input's reading, turned such a TIFF a second time."""
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, 0], stored[0, 1], stored[1, 0] = 255, 100, 50  # asymmetric: every turn and flip shows
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.tif", exif=exif.tobytes())
    pil = np.asarray(Image.open(tmp_path / "o.tif").convert("RGB"))
    for exif_flag in (False, True):
        assert np.array_equal(read_image(tmp_path / "o.tif", exif=exif_flag), pil)
        assert image_size(tmp_path / "o.tif", exif=exif_flag) == pil.shape[:2]


def test_a_file_without_a_known_header_is_refused_before_decoding(tmp_path, monkeypatch):
    """OpenCV decodes Radiance HDR whatever the file's extension, and a header the size check could not read
    skipped the pixel limit: a small RLE upload decoded to gigabytes of float32 before being refused."""
    cv2.imwrite(str(tmp_path / "x.hdr"), np.random.default_rng(0).random((64, 80, 3), dtype=np.float32))
    (tmp_path / "x.png").write_bytes((tmp_path / "x.hdr").read_bytes())
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(a) or None)
    with pytest.raises(ImageReadError, match=r"x\.png: the file is corrupt, empty or not an image"):
        read_image(tmp_path / "x.png", max_pixels=10)
    assert decoded == []


def test_overlapping_quiet_reads_restore_opencvs_log_level_after_the_last():
    """Two threads' silencing, ended out of order, left OpenCV silent for good (each restored what it saw)."""
    from utils.data.image_io import quiet_opencv
    log = cv2.utils.logging
    before = log.getLogLevel()
    first, second = quiet_opencv(), quiet_opencv()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert log.getLogLevel() == log.LOG_LEVEL_SILENT  # the second read is still going
    second.__exit__(None, None, None)
    assert log.getLogLevel() == before


def test_a_jpeg_with_stray_bytes_before_a_marker_reads_as_pil_reads_it(tmp_path):
    """Two zero bytes after the APP0 segment: Pillow and OpenCV decode the file (libjpeg passes over
    "extraneous bytes before marker"), the header reader called it corrupt and training stopped on it."""
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    data = buf.tobytes()
    app0_end = 4 + int.from_bytes(data[4:6], "big")  # SOI (2) + the APP0 marker (2) + its length
    odd = tmp_path / "odd.jpg"
    odd.write_bytes(data[:app0_end] + b"\x00\x00" + data[app0_end:])
    assert image_size(odd) == (64, 80)
    with Image.open(odd) as im:
        assert np.array_equal(read_image(odd), np.asarray(im.convert("RGB")))
    (tmp_path / "junk.jpg").write_bytes(data[:app0_end] + bytes(70000))
    with pytest.raises(ImageReadError):
        image_size(tmp_path / "junk.jpg")


def test_a_float_tiff_opencv_writes_is_read_not_called_corrupt(tmp_path):
    """A 3-channel float32 TIFF (as OpenCV writes it): Pillow cannot open it, so the header reader called it
    "corrupt, empty or not an image", although OpenCV decodes it and the reader maps floats to 16 bits."""
    rgb = np.linspace(0, 1, 40 * 56 * 3, dtype=np.float32).reshape(40, 56, 3)
    assert cv2.imwrite(str(tmp_path / "f.tif"), rgb[:, :, ::-1].copy())
    assert image_size(tmp_path / "f.tif") == (40, 56)
    got = read_image(tmp_path / "f.tif")
    assert got.dtype == np.uint16 and got.shape == (40, 56, 3)
    assert np.abs(got / 65535.0 - rgb).max() < 1e-4


def _damaged_files(tmp_path):
    """A PNG with a damaged pixel data chunk (libpng: error, no image), and a JPEG whose scan data hits a marker
    early (libjpeg: "Corrupt JPEG data: premature end of data segment", a warning: it decodes, partly grey)."""
    png = tmp_path / "crc.png"
    Image.fromarray(RGB).save(png)
    b = bytearray(png.read_bytes())
    b[b.find(b"IDAT") + 20] ^= 0xFF
    png.write_bytes(bytes(b))
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    b = bytearray(buf.tobytes())
    scan = b.find(b"\xff\xda")
    b[scan + 40:scan + 44] = b"\xff\xd0\xff\xd5"  # two restart markers where there are none
    jpg = tmp_path / "grey.jpg"
    jpg.write_bytes(bytes(b))
    return png, jpg


def test_decoders_words_name_their_file_and_stay_out_of_other_lines(tmp_path, capfd):
    """libpng printed "libpng error: IDAT: ..." on the C stderr beside (in loader workers: inside) the error
    line, which said only "corrupt, empty or not an image"; libjpeg's "Corrupt JPEG data" named no file. The
    PNG is refused with libpng's words; the JPEG, which Pillow (the reference) reads in silence, is read as
    Pillow reads it, with one warning naming the file, once per process."""
    png, jpg = _damaged_files(tmp_path)
    with pytest.raises(ImageReadError, match=r"crc\.png: the file is damaged \(libpng error: IDAT: "):
        read_image(png)
    assert capfd.readouterr().err == ""
    with Image.open(jpg) as im:
        assert np.array_equal(read_image(jpg), np.asarray(im.convert("RGB")))
    read_image(jpg)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {jpg}: the JPEG decoder says 'Corrupt JPEG data: "
                                                    f"premature end of data segment'; the image is read as it "
                                                    f"decodes, as the reference's Pillow reads it"), err


def test_decoder_warnings_that_harm_nothing_are_dropped_and_other_stderr_text_is_kept(tmp_path, capfd, monkeypatch):
    """Another thread's text written while a file decodes reaches stderr; a libpng warning, which leaves the
    pixels as they are, does not; a decoder's words glued to another thread's unfinished line are found."""
    from utils.data import image_io
    from utils.data.decoder_messages import DecoderSaid, sort_text
    said = DecoderSaid()
    other = sort_text("libpng warning: iCCP: known incorrect sRGB profile\n"
                      "\r 40%|####Corrupt JPEG data: 2 extraneous bytes before marker 0xd9\n"
                      "a progress bar\rof another thread\n"
                      "libpng error: Read Error\n", said)
    assert said.errors == ["libpng error: Read Error"]
    assert said.warnings == ["Corrupt JPEG data: 2 extraneous bytes before marker 0xd9"]
    assert other == "\r 40%|####a progress bar\rof another thread\n"
    truncated = DecoderSaid()
    assert sort_text("Premature end of JPEG file\n", truncated) == "" and truncated.errors  # Pillow refuses one too
    Image.fromarray(RGB).save(tmp_path / "a.png")
    decode = cv2.imdecode

    def chatty(*args):  # another thread's stderr text, and a harmless libpng warning, while the file decodes
        os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\nanother thread's line\n")
        return decode(*args)
    monkeypatch.setattr(image_io.cv2, "imdecode", chatty)
    assert np.array_equal(read_image(tmp_path / "a.png"), RGB)
    assert capfd.readouterr().err == "another thread's line\n"


def test_a_stderr_nobody_reads_and_a_fork_mid_decode_do_not_break_reading(tmp_path):
    """Passing another thread's text on to a closed pipe raised BrokenPipeError out of reading a sound image;
    a process forked while another thread decoded inherited the decoders' turn as taken and hung, and its
    stderr stayed on the parent's scratch file, where what it wrote was lost."""
    import subprocess
    import sys
    Image.fromarray(RGB).save(tmp_path / "a.png")
    script = f"""
import os, signal, threading, cv2, numpy as np
from utils.data import image_io
from utils.data.decoder_messages import decoder_messages
decode = cv2.imdecode
started, forked = threading.Event(), threading.Event()
def slow(*args):
    os.write(2, b"another thread's line\\n")
    started.set()
    forked.wait(10)
    return decode(*args)
image_io.cv2.imdecode = slow
reader = threading.Thread(target=image_io.read_image, args=({str(tmp_path / "a.png")!r},))
reader.start()
started.wait(10)
go_on, told = os.pipe()
pid = os.fork()
if pid == 0:
    signal.alarm(30)  # a child that hangs ends by itself, not as an orphan outliving the test
    image_io.cv2.imdecode = decode
    read_ok = image_io.read_image({str(tmp_path / "a.png")!r}).shape == (48, 64, 3)
    os.read(go_on, 1)  # the parent's decode has ended: what the child writes now is its own
    os.write(2, b"the child's own line\\n")
    os._exit(0 if read_ok else 3)
forked.set()
reader.join()
os.write(told, b"x")
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == "child 0", done.stderr
    assert "another thread's line" in done.stderr and "the child's own line" in done.stderr, done.stderr
    closed = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time, cv2
from utils.data import image_io
decode = cv2.imdecode
def chatty(*args):
    os.write(2, b"x" * 10)
    return decode(*args)
time.sleep(0.5)
image_io.cv2.imdecode = chatty
print(image_io.read_image({str(tmp_path / "a.png")!r}).shape, flush=True)
"""], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    closed.stderr.close()  # the reader of its stderr is gone before it writes there
    out = closed.communicate(timeout=60)[0]
    assert closed.returncode == 0 and out.strip() == "(48, 64, 3)"


# --------------------------------------------------------------------------- TIFFs with alpha, float TIFFs

def _tiff(path, arr, extra=None, photometric=None):
    """Write an uncompressed one-strip little-endian TIFF of ``arr`` (H, W[, C]) by hand, with ExtraSamples
    (tag 338) ``extra`` when given: Pillow writes neither 16-bit RGBA nor associated alpha."""
    import struct
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    tags = {256: (4, [w]), 257: (4, [h]), 258: (3, [arr.dtype.itemsize * 8] * c), 259: (3, [1]),
            262: (3, [photometric or (1 if c <= 2 else 2)]), 273: (4, [0]), 277: (3, [c]), 278: (4, [h]),
            279: (4, [len(data)]), 284: (3, [1])}
    if extra is not None:
        tags[338] = (3, list(extra))
    ifd_end = 8 + 2 + 12 * len(tags) + 4
    entries, blobs = b"", b""
    for tag, (kind, values) in sorted(tags.items()):
        raw = struct.pack("<" + ("H" if kind == 3 else "I") * len(values), *values)
        if len(raw) > 4:  # stored after the directory, the entry holding its offset
            raw, blobs = struct.pack("<I", ifd_end + len(blobs)), blobs + raw
        entries += struct.pack("<HHI", tag, kind, len(values)) + raw.ljust(4, b"\0")
    head = b"II*\0" + struct.pack("<IH", 8, len(tags)) + entries + b"\0" * 4 + blobs
    at = 8 + 2 + 12 * sorted(tags).index(273) + 8  # StripOffsets' value: the pixel data after everything else
    head = head[:at] + struct.pack("<I", len(head)) + head[at + 4:]
    path.write_bytes(head + data)
    return path


def _rgba(dtype=np.uint8):
    """8x8 RGBA: colour (200, 100, 50) at alpha 128 (half), a pixel of alpha 0 with its own colour, an opaque
    pixel, and some noise, so that a colour multiplied by the alpha or black for transparent shows."""
    peak = np.iinfo(dtype).max
    rgba = np.zeros((8, 8, 4), np.float64)
    rgba[..., :3] = np.array([200, 100, 50]) / 255
    rgba[..., :3] += np.random.default_rng(0).uniform(-0.1, 0.1, (8, 8, 3))
    rgba[..., 3] = 128 / 255
    rgba[0, 0] = [0.04, 0.08, 0.12, 0]  # fully transparent, its colour stored all the same
    rgba[0, 1, 3] = 1
    return np.round(rgba * peak).astype(dtype)


@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_adobe_deflate"])
def test_an_rgba_tiff_with_unassociated_alpha_reads_its_colour_as_stored(tmp_path, compression):
    """What Pillow and GIMP write (ExtraSamples=2): OpenCV's decoder multiplied the colour by the alpha, so
    (200, 100, 50) at alpha 128 read as (100, 50, 25) and a transparent pixel as black; Pillow, the reference's
    reader, gives the colour as stored."""
    rgba = _rgba()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.tif", compression=compression)
    got = read_image(tmp_path / "a.tif")
    assert got.dtype == np.uint8 and np.array_equal(got, rgba[..., :3])
    assert got.flags.writeable and got.flags.c_contiguous  # as every array read_image returns
    with Image.open(tmp_path / "a.tif") as im:
        assert np.array_equal(got, np.asarray(im.convert("RGB")))
    extra = _tiff(tmp_path / "five.tif", np.dstack([rgba, rgba[..., :1]]), extra=[2, 0])  # alpha + unspecified
    assert np.array_equal(read_image(extra), rgba[..., :3])  # OpenCV called it corrupt


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_rgba_tiff_is_turned_by_its_orientation_tag_as_any_tiff(tmp_path, orientation):
    """An RGBA TIFF, now decoded by Pillow, is turned by its orientation tag exactly as OpenCV turns the same
    TIFF without alpha, with exif=False and exif=True alike (see test_a_tiff_is_turned_by_its_orientation_tag_once)."""
    rgba = np.dstack([RGB[:6, :10], np.full((6, 10), 128, np.uint8)])
    rgba[0, 0, 3] = 0
    for name, img in (("rgba.tif", Image.fromarray(rgba, "RGBA")), ("rgb.tif", Image.fromarray(rgba[..., :3]))):
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(tmp_path / name, exif=exif.tobytes())
    for exif_flag in (False, True):
        got = read_image(tmp_path / "rgba.tif", exif=exif_flag)
        assert np.array_equal(got, read_image(tmp_path / "rgb.tif", exif=exif_flag))
        assert got.shape[:2] == image_size(tmp_path / "rgba.tif", exif=exif_flag) == ((10, 6) if orientation >= 5
                                                                                         else (6, 10))


def test_an_rgba_tiff_is_read_by_the_module_rules_first_page_limit_errors(tmp_path):
    """The Pillow path keeps the other rules: the first page of several (said lost), the pixel limit before
    decoding, a damaged file an ImageReadError naming it."""
    rgba = _rgba()
    pages = [Image.fromarray(rgba, "RGBA"), Image.fromarray(255 - rgba, "RGBA")]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    assert np.array_equal(read_image(tmp_path / "pages.tif"), rgba[..., :3])
    assert lost_on_restoring(tmp_path / "pages.tif") == ["transparency", "animation"]
    with pytest.raises(ImageReadError, match=r"pages\.tif is 8x8 = 64 pixels, more than the limit of 63"):
        read_image(tmp_path / "pages.tif", max_pixels=63)
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    Image.fromarray(big, "RGBA").save(tmp_path / "cut.tif")
    raw = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match=r"cannot decode image .*cut\.tif: .*truncated"):
        read_image(tmp_path / "cut.tif")


def test_16_bit_rgba_tiffs_stay_16_bit_with_their_colour(tmp_path):
    """16-bit RGBA TIFFs are decoded by OpenCV, which keeps unassociated colour as stored; associated
    (premultiplied) colour is divided by the alpha, as for 8 bits (it was read as stored, darker)."""
    rgba = _rgba(np.uint16)
    got = read_image(_tiff(tmp_path / "u.tif", rgba, extra=[2]))
    assert got.dtype == np.uint16 and np.array_equal(got, rgba[..., :3])
    premultiplied = rgba.copy()
    premultiplied[..., :3] = (rgba[..., :3].astype(np.uint64) * rgba[..., 3:] // 65535).astype(np.uint16)
    got = read_image(_tiff(tmp_path / "a.tif", premultiplied, extra=[1]))
    a = premultiplied[..., 3:].astype(np.uint64)
    expected = np.where(a > 0, np.minimum(premultiplied[..., :3] * a.dtype.type(65535) // np.maximum(a, 1), 65535), 0)
    assert got.dtype == np.uint16 and np.array_equal(got, expected)
    assert np.abs(got[1:].astype(int) - rgba[1:, :, :3]).max() <= 2  # the colour back (one stored step is two)
    assert np.array_equal(got[0, 0], [0, 0, 0])  # alpha 0: no colour stored


def test_an_8_bit_rgb_tiff_with_associated_alpha_reads_its_colour_divided_by_the_alpha(tmp_path):
    """Associated alpha (ExtraSamples=1): the stored colour is premultiplied. It is divided out, as the
    reference's Pillow does (OpenCV read it as stored: darker where semi-transparent)."""
    rgba = _rgba()
    premultiplied = rgba.copy()
    premultiplied[..., :3] = (rgba[..., :3].astype(np.uint32) * rgba[..., 3:] // 255).astype(np.uint8)
    path = _tiff(tmp_path / "a.tif", premultiplied, extra=[1])
    got = read_image(path)
    with Image.open(path) as im:
        assert np.array_equal(got, np.asarray(im.convert("RGB")))
    a = premultiplied[..., 3:].astype(np.uint32)
    expected = np.where(a > 0, np.minimum(premultiplied[..., :3] * a.dtype.type(255) // np.maximum(a, 1), 255), 0)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert np.abs(got[1:].astype(int) - rgba[1:, :, :3]).max() <= 2  # 128 of 255: one stored step is two


def test_grey_tiffs_with_alpha_read_as_documented(tmp_path):
    """Grey + alpha TIFFs: OpenCV drops the alpha (no multiplying); 8-bit reads exactly, associated alpha as
    stored (no alpha to divide by), and 16-bit at 8 bits, the one exception to "16-bit gives uint16" (the
    module rule says so: neither OpenCV nor Pillow decodes it at 16)."""
    grey = _rgba()[..., [0, 3]]
    for extra in (1, 2):
        got = read_image(_tiff(tmp_path / f"la{extra}.tif", grey, extra=[extra]))
        assert got.dtype == np.uint8 and all(np.array_equal(got[..., c], grey[..., 0]) for c in range(3))
    grey16 = _rgba(np.uint16)[..., [0, 3]]
    got = read_image(_tiff(tmp_path / "la16.tif", grey16, extra=[2]))
    assert got.dtype == np.uint8 and np.array_equal(got[..., 0], (grey16[..., 0] >> 8).astype(np.uint8))


def test_a_float_tiff_on_another_scale_is_refused_not_clamped(tmp_path):
    """Float samples are read on the scale 0 to 1: values of 0-255 were clamped to white, NaN read as black,
    without a word. Overshoot within FLOAT_SLACK is clamped."""
    ramp = np.linspace(0, 1, 6 * 8, dtype=np.float32).reshape(6, 8)
    Image.fromarray(ramp * 255, "F").save(tmp_path / "f255.tif")
    with pytest.raises(ImageReadError, match=r"f255\.tif: it holds floating-point samples from 0 to 255, .*scale 0 "
                                             r"to 1"):
        read_image(tmp_path / "f255.tif")
    nan = ramp.copy()
    nan[2, 3] = np.nan
    Image.fromarray(nan, "F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match=r"nan\.tif: .*not numbers \(NaN\)"):
        read_image(tmp_path / "nan.tif")
    Image.fromarray(ramp * 1.005 - 0.002, "F").save(tmp_path / "near.tif")
    got = read_image(tmp_path / "near.tif")
    assert got.dtype == np.uint16 and got.min() == 0 and got.max() == 65535
    assert np.array_equal(got[..., 0], quantise(ramp * 1.005 - 0.002, 16))


def test_a_float_tiff_resampled_bicubically_is_read_clamped(tmp_path):
    """Bicubic and Lanczos resampling overshoot [0, 1] by 0.1-0.3 at sharp edges: such a float TIFF (a 0-1 image,
    resized) read before the scale check, clamped; the check's slack of 0.01 refused it as 'another scale'."""
    step = np.zeros((16, 16, 3), np.float32)
    step[:, 8:] = 1
    for interpolation in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4):
        resized = cv2.resize(step, (24, 24), interpolation=interpolation)
        assert resized.min() < -0.05 and resized.max() > 1.05  # the overshoot is there
        cv2.imwrite(str(tmp_path / "resized.tif"), resized)
        got = read_image(tmp_path / "resized.tif")
        assert got.dtype == np.uint16 and np.array_equal(got, quantise(resized[..., ::-1], 16))
    Image.fromarray(np.full((4, 4), 2.0, np.float32), "F").save(tmp_path / "twice.tif")  # past the slack: refused
    with pytest.raises(ImageReadError, match=r"twice\.tif: it holds floating-point samples from 2 to 2"):
        read_image(tmp_path / "twice.tif")


def test_a_bigtiff_is_read_as_a_tiff(tmp_path):
    """A BigTIFF ('II+'): not told as a TIFF, so exif=True turned it a second time after OpenCV's decoder had
    applied its orientation tag, and its 8-bit RGBA colour came out multiplied by the alpha."""
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, 0], stored[0, 1], stored[1, 0] = 255, 100, 50
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "o.tif", exif=exif.tobytes(), big_tiff=True)
    if not (tmp_path / "o.tif").read_bytes().startswith(b"II+\0"):
        pytest.skip("this Pillow writes no BigTIFF")
    pil = np.asarray(Image.open(tmp_path / "o.tif").convert("RGB"))
    assert pil.shape == (6, 4, 3)
    for exif_flag in (False, True):
        assert np.array_equal(read_image(tmp_path / "o.tif", exif=exif_flag), pil)
        assert image_size(tmp_path / "o.tif", exif=exif_flag) == (6, 4)
    rgba = _rgba()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.tif", big_tiff=True)
    assert np.array_equal(read_image(tmp_path / "a.tif"), rgba[..., :3])


# --------------------------------------------------------------------------- from mutation spot-checks

def test_write_image_replaces_a_link_at_the_destination_and_leaves_its_target_alone(tmp_path):
    """The file is written beside the destination and renamed over it: a symbolic link there (an input linked into
    the output folder) is replaced, its target (the user's image) is not overwritten, and no temporary is left."""
    original = tmp_path / "photos" / "cat.png"
    write_image(original, RGB)
    before = original.read_bytes()
    link = tmp_path / "out" / "cat.png"
    link.parent.mkdir()
    link.symlink_to(original)
    write_image(link, 255 - RGB)
    assert original.read_bytes() == before
    assert not link.is_symlink() and np.array_equal(read_image(link), 255 - RGB)
    assert sorted(p.name for p in link.parent.iterdir()) == ["cat.png"]


def test_write_image_encodes_by_the_files_extension(tmp_path):
    """A .jpg or .tif name gets a JPEG or TIFF, not PNG bytes under another extension."""
    write_image(tmp_path / "a.jpg", RGB)
    write_image(tmp_path / "a.tif", RGB)
    assert (tmp_path / "a.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert (tmp_path / "a.tif").read_bytes()[:4] in (b"II*\0", b"MM\0*")
    assert np.array_equal(read_image(tmp_path / "a.tif"), RGB)


def test_write_image_refuses_four_channels(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 4), np.uint8))
    assert not (tmp_path / "x.png").exists()


def test_the_pixel_limit_of_a_block_ends_with_it_even_when_the_block_raises(tmp_path):
    from utils.data import image_io
    Image.fromarray(RGB).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match="more than the limit of 10 pixels"):
        with image_io.pixel_limit(10):
            read_image(tmp_path / "a.png")
    assert image_io.max_pixels() == image_io.MAX_PIXELS and read_image(tmp_path / "a.png").shape == (48, 64, 3)


def test_a_16_bit_associated_alpha_pixel_of_alpha_0_is_black_whatever_colour_it_stores(tmp_path):
    """No colour is stored for a pixel of alpha 0: a non-zero stored value there is not divided out into white."""
    rgba = _rgba(np.uint16)
    rgba[0, 0] = [3000, 20000, 65535, 0]
    got = read_image(_tiff(tmp_path / "a.tif", rgba, extra=[1]))
    assert got.dtype == np.uint16 and np.array_equal(got[0, 0], [0, 0, 0])


def test_quantise_of_float16_is_that_of_the_same_values_in_float32():
    """float16 cannot hold 65535: the values are scaled in float32."""
    x = np.linspace(0, 1, 97, dtype=np.float16)
    for bits in (8, 16):
        assert np.array_equal(quantise(x, bits), quantise(x.astype(np.float32), bits))
    assert quantise(x, 16).max() == 65535


def test_a_palette_image_with_a_transparent_colour_says_its_transparency_is_lost(tmp_path):
    pal = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "opaque.png")
    pal.save(tmp_path / "clear.png", transparency=0)
    assert lost_on_restoring(tmp_path / "opaque.png") == []
    assert lost_on_restoring(tmp_path / "clear.png") == ["transparency"]


def test_a_file_that_cannot_be_opened_is_an_image_read_error_naming_it(tmp_path, monkeypatch):
    """An OSError while reading the bytes (no permission, an I/O error) is a bad file that names itself, which
    --skip-bad-files can leave out, not a crash."""
    import errno

    from utils.data import image_io
    Image.fromarray(RGB).save(tmp_path / "locked.png")

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    monkeypatch.setattr(image_io, "open", refuse, raising=False)
    for read in (read_image, image_size):
        with pytest.raises(ImageReadError, match=r"cannot read image .*locked\.png: Permission denied"):
            read(tmp_path / "locked.png")


def test_the_nested_images_hint_counts_each_subfolder_and_is_empty_when_there_is_nothing_to_say(tmp_path):
    """The hint names at most three subfolders with their image counts (hidden ones and non-images left out),
    counts images at any depth below each, and says nothing for a folder without images below it."""
    from utils.data.image_files import nested_images_hint
    assert nested_images_hint(tmp_path) == "" and nested_images_hint(tmp_path / "absent") == ""
    img = np.zeros((4, 4, 3), np.uint8)
    for sub, n in (("a", 1), ("b/deep", 2), ("c", 1), ("d", 3)):
        (tmp_path / sub).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / sub / f"{i}.png"), img)
    (tmp_path / ".hidden").mkdir()
    cv2.imwrite(str(tmp_path / ".hidden" / "x.png"), img)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("no image")
    assert nested_images_hint(tmp_path, "clean images") == (
        f"{tmp_path} has 7 clean images in its subfolders (a/ 1, b/ 2, c/ 1, ...), and only those directly in it "
        f"are read: move them up into {tmp_path} (renaming any that repeat).")


def test_a_bmp_over_pillows_bomb_size_is_held_to_the_projects_limit_not_pillows(tmp_path):
    """A BMP, TIFF or WebP over about 179 Mpx was refused as "a decompression bomb" whatever --max-pixels said,
    where a PNG of the same size was read: the header's size now meets this project's limit alone, and Pillow's
    own limit is left as it was found."""
    from utils.data.image_io import image_size, read_image
    path = tmp_path / "wide.bmp"
    cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    raw = bytearray(path.read_bytes())
    raw[18:26] = (15000).to_bytes(4, "little") * 2  # BITMAPINFOHEADER width and height: 225 Mpx
    path.write_bytes(bytes(raw))
    before = Image.MAX_IMAGE_PIXELS
    assert image_size(path) == (15000, 15000)
    with pytest.raises(ImageReadError, match=r"is 15000x15000 = 225.0 Mpx, more than the limit of 100.0 Mpx"):
        read_image(path)
    with pytest.raises(ImageReadError) as err:  # past the limit it is decoded, and its missing pixels are said
        read_image(path, max_pixels=300_000_000)
    assert "decompression bomb" not in str(err.value) and "more than the limit" not in str(err.value)
    assert Image.MAX_IMAGE_PIXELS == before
