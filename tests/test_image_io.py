"""utils/image_io.py: every kind of file reads by the one documented rule; corrupt files name themselves."""
import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from utils.image_io import ImageReadError, image_size, quantise, read_image, to_float, write_image

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
def test_exif_orientation_is_applied(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"  # lossless, so the comparison is exact
    Image.fromarray(RGB).save(path, exif=exif)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = read_image(path)
    assert np.array_equal(got, expected)
    assert image_size(path) == got.shape[:2]
    if orientation >= 5:
        assert got.shape[:2] == (64, 48)


def test_exif_rotated_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(RGB).save(tmp_path / "r.jpg", quality=95, exif=exif)
    got = read_image(tmp_path / "r.jpg")
    assert got.shape == (64, 48, 3) and image_size(tmp_path / "r.jpg") == (64, 48)
    assert np.abs(got.astype(int) - np.rot90(RGB, -1)).mean() < 4


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


def test_write_image_rejects_wrong_arrays(tmp_path):
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
