"""Tests for the embedded demo data (utils/demo/data.py, photos.py, degrade.py) on a tiny build (scale 0.2,
3 photos per split)."""

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.demo import data as dd
from utils.demo import degrade, photos

TINY = dict(scale=0.2, max_photos=3, progress=False)


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"unreadable image {path}"
    return img[:, :, ::-1]


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_tiny")
    manifest = dd.build_demo_data(root, seed=0, **TINY)
    return root, manifest


def test_layout_and_manifest(tiny):
    root, man = tiny
    assert man["status"].startswith("built")
    on_disk = json.loads((root / "manifest.json").read_text())
    assert "status" not in on_disk
    assert on_disk["content_hash"] == man["content_hash"]
    assert on_disk["version"] == dd.VERSION and on_disk["seed"] == 0 and on_disk["scale"] == 0.2
    files = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    assert files == set(man["files"])
    for folder in ["Train/Denoise", "Train/Derain/rainy", "Train/Derain/gt", "Train/Dehaze/synthetic/part1",
                   "Train/Dehaze/original", "test/denoise/demo", "test/derain/demo/input",
                   "test/derain/demo/target", "test/dehaze/input", "test/dehaze/target", "test/jpeg/input",
                   "test/jpeg/target", "test/lowlight/low", "test/lowlight/high", "test/deblur/input",
                   "test/deblur/target"]:
        assert man["counts"].get(folder, 0) > 0, folder
    assert not (root / "test/denoise_75").exists()
    assert man["counts"]["test/denoise/demo"] == 3


def test_rain_pairs(tiny):
    root, _ = tiny
    for split, rainy_dir, gt_dir in [("Train", "Train/Derain/rainy", "Train/Derain/gt"),
                                     ("test", "test/derain/demo/input", "test/derain/demo/target")]:
        rainy = sorted((root / rainy_dir).glob("*.png"))
        assert rainy, split
        gts = {p.name for p in (root / gt_dir).glob("*.png")}
        assert len(gts) == len(rainy)
        for p in rainy:
            m = re.fullmatch(r"rain-(\d+)\.png", p.name)
            assert m, p.name
            gt = root / gt_dir / f"norain-{m.group(1)}.png"
            assert gt.is_file(), gt
            a, b = read_rgb(p), read_rgb(gt)
            assert a.shape == b.shape
            assert not np.array_equal(a, b)
            assert (a.astype(int) - b.astype(int)).mean() > 0  # screen blend only brightens


def test_haze_pairs(tiny):
    root, _ = tiny
    for hazy_dir, clean_dir in [("Train/Dehaze/synthetic/part1", "Train/Dehaze/original"),
                                ("test/dehaze/input", "test/dehaze/target")]:
        hazy = sorted((root / hazy_dir).glob("*.png"))
        assert hazy
        for p in hazy:
            m = re.fullmatch(r"(\d{4})_([0-9.]+)_([0-9.]+)\.png", p.name)
            assert m, p.name
            assert float(m.group(2)) in degrade.HAZE_AIRLIGHT and float(m.group(3)) in degrade.HAZE_BETA
            clean = root / clean_dir / f"{m.group(1)}.png"
            assert clean.is_file(), clean
            a, b = read_rgb(p), read_rgb(clean)
            assert a.shape == b.shape and not np.array_equal(a, b)


@pytest.mark.parametrize("deg_dir,clean_dir", [("test/jpeg/input", "test/jpeg/target"),
                                               ("test/lowlight/low", "test/lowlight/high"),
                                               ("test/deblur/input", "test/deblur/target")])
def test_same_name_pairs(tiny, deg_dir, clean_dir):
    root, _ = tiny
    degraded = sorted((root / deg_dir).glob("*.png"))
    assert {p.name for p in degraded} == {p.name for p in (root / clean_dir).glob("*.png")}
    for p in degraded:
        a, b = read_rgb(p), read_rgb(root / clean_dir / p.name)
        assert a.shape == b.shape and not np.array_equal(a, b)
        if "lowlight" in deg_dir:
            assert a.mean() < 0.5 * b.mean()


def test_sizes_multiple_of_16(tiny):
    root, man = tiny
    for rel, rec in man["files"].items():
        h, w = read_rgb(root / rel).shape[:2]
        assert [h, w] == rec["size"], rel
        assert h % 16 == 0 and w % 16 == 0, rel


def test_train_test_photos_disjoint(tiny):
    _, man = tiny
    train = {r["source"] for r in man["files"].values() if r["split"] == "train"}
    test = {r["source"] for r in man["files"].values() if r["split"] == "test"}
    assert train and test and not (train & test)
    assert set(man["sources"]["train"]) == train and set(man["sources"]["test"]) == test
    for rel, rec in man["files"].items():
        assert rel.startswith("Train/" if rec["split"] == "train" else "test/"), rel
    # the full photo lists are disjoint too, and the test split has >= 4 photos
    assert not set(photos.TRAIN_PHOTOS) & set(photos.TEST_PHOTOS) and len(photos.TEST_PHOTOS) >= 4


def test_deterministic_and_seed_dependent(tiny, tmp_path):
    root, man = tiny
    same = dd.build_demo_data(tmp_path / "same", seed=0, **TINY)
    assert same["content_hash"] == man["content_hash"]
    assert all_files(tmp_path / "same") == all_files(root)
    other = dd.build_demo_data(tmp_path / "other", seed=1, **TINY)
    assert other["content_hash"] != man["content_hash"]
    rel = "Train/Derain/rainy/rain-1.png"
    assert (tmp_path / "other" / rel).read_bytes() != (root / rel).read_bytes()
    # clean images do not depend on the seed
    rel = "Train/Derain/gt/norain-1.png"
    assert (tmp_path / "other" / rel).read_bytes() == (root / rel).read_bytes()


def test_up_to_date_does_not_rewrite(tmp_path):
    root = tmp_path / "d"
    dd.build_demo_data(root, seed=0, **TINY)
    old = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    for p in old:  # push mtimes into the past so a rewrite would be visible
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    again = dd.build_demo_data(root, seed=0, **TINY)
    assert again["status"] == "up to date"
    assert all(p.stat().st_mtime_ns == 1_000_000_000 for p in old)


def test_missing_file_is_rebuilt(tmp_path):
    root = tmp_path / "d"
    man = dd.build_demo_data(root, seed=0, **TINY)
    victim = root / "test/dehaze/target/0001.png"
    data = victim.read_bytes()
    victim.unlink()
    others = [p for p in root.rglob("*.png") if p != victim]
    for p in others:
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    assert dd.stale_reason(root, dd.requested_params(0, 0.2, 3)) is not None
    again = dd.build_demo_data(root, seed=0, **TINY)
    assert again["status"].startswith("built") and "1 file written" in again["status"]
    assert victim.read_bytes() == data
    assert again["content_hash"] == man["content_hash"]
    assert all(p.stat().st_mtime_ns == 1_000_000_000 for p in others)


def test_parameter_change_is_stale_and_removes_orphans(tmp_path):
    root = tmp_path / "d"
    dd.build_demo_data(root, seed=0, scale=0.2, max_photos=2, progress=False)
    orphan = root / "Train/Denoise/motorcycle_left_1.png"
    small = dd.build_demo_data(root, seed=0, scale=0.2, max_photos=1, progress=False)
    assert "parameters changed" in small["status"]
    assert {p.relative_to(root).as_posix() for p in root.rglob("*.png")} == set(small["files"])
    assert orphan.exists()  # still produced with 1 photo (motorcycle_left has 2 crops)
    assert not (root / "test/denoise/demo/camera.png").exists()


def test_depth_from_disparity_handles_invalid():
    disp = np.full((40, 60), 20.0, np.float32)
    disp[:, 30:] = 5.0          # far half
    disp[10:20, 10:20] = np.inf  # invalid
    disp[0, 0] = 0.0
    d = degrade.depth_from_disparity(disp)
    assert d.shape == disp.shape and np.isfinite(d).all()
    assert d.min() >= 0 and d.max() <= 1
    assert d[:, 45:].mean() > d[:, :15].mean()


def test_line_kernel_normalised():
    for angle in (-30.0, 0.0, 45.0, 90.0):
        k = degrade.line_kernel(11.0, angle)
        assert k.shape[0] % 2 == 1 and k.shape[0] == k.shape[1]
        assert abs(float(k.sum()) - 1.0) < 1e-5 and (k >= 0).all()
    vertical = degrade.line_kernel(9.0, 0.0)
    assert vertical[:, vertical.shape[1] // 2].sum() > 0.99


def test_bad_arguments_name_the_fix(tmp_path, capsys):
    with pytest.raises(ValueError, match="--seed must be a non-negative integer"):
        dd.build_demo_data(tmp_path, seed=-1, **TINY)
    # python -m utils.demo.data: bad values and a file in the way were tracebacks, not one error line
    (tmp_path / "afile").write_text("mine")
    root = ["--root", str(tmp_path / "d")]
    for argv, said in (([*root, "--scale", "0"], "--scale must lie in [0.05, 4]"),
                       ([*root, "--max-photos", "0"], "--max-photos must be an integer >= 1"),
                       (["--root", str(tmp_path / "afile")], "a file, not a folder")):
        assert dd.main(argv) == 1
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and said in line, line
    with pytest.raises(SystemExit) as stop:
        dd.main([*root, "--seed", "x"])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and line.startswith("error: argument --seed: invalid int value"), line
    assert not (tmp_path / "d").exists()
    assert (tmp_path / "afile").read_text() == "mine"
    with pytest.raises(ValueError, match="scale"):
        dd.build_demo_data(tmp_path, seed=0, scale=0.0, progress=False)
    with pytest.raises(RuntimeError, match="reinstall"):
        photos.load_photo("no_such_photo")


def test_a_changed_file_is_rebuilt(tmp_path):
    """A target overwritten by its input was 'up to date' (only presence was checked), and the demo then
    printed 62.6 dB as the degraded image's score."""
    root = tmp_path / "d"
    dd.build_demo_data(root, seed=0, **TINY)
    target = next((root / "test/dehaze/target").iterdir())
    data = target.read_bytes()
    target.write_bytes(next((root / "test/dehaze/input").iterdir()).read_bytes())
    assert "1 file changed since the build" in dd.stale_reason(root, dd.requested_params(0, 0.2, 3))
    again = dd.build_demo_data(root, seed=0, **TINY)
    assert "1 file written" in again["status"] and target.read_bytes() == data


def test_a_folder_that_is_not_the_demos_is_never_built_into(tmp_path):
    """--root on a real data folder wrote the demo's rain-1.png over the user's and trained on the user's other
    files; a user's manifest.json listing their files got them deleted."""
    user = tmp_path / "data"
    (user / "Train" / "Derain" / "rainy").mkdir(parents=True)
    (user / "Train" / "Derain" / "rainy" / "rain-1.png").write_text("USERDATA")
    (user / "manifest.json").write_text(json.dumps({"files": ["Train/Derain/rainy/rain-1.png"]}))
    before = all_files(user)
    with pytest.raises(dd.DemoDataError, match="holds files that are not the demo's"):
        dd.build_demo_data(user, seed=0, **TINY)
    assert all_files(user) == before
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(dd.DemoDataError, match="a file, not a folder"):
        dd.build_demo_data(tmp_path / "afile", seed=0, **TINY)
    # an interrupted build of the demo's own is recognised by its mark and finished
    mine = tmp_path / "demo"
    mine.mkdir()
    (mine / dd.BUILDING_MARK).touch()
    (mine / "half.png").write_bytes(b"")
    assert dd.build_demo_data(mine, seed=0, **TINY)["status"].startswith("built")
    assert not (mine / dd.BUILDING_MARK).exists()


def test_a_build_of_another_version_is_rebuilt_not_refused(tmp_path):
    root = tmp_path / "d"
    dd.build_demo_data(root, seed=0, **TINY)
    man = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(man | {"version": dd.VERSION - 1}))
    assert "version" in dd.stale_reason(root, dd.requested_params(0, 0.2, 3))
    assert dd.build_demo_data(root, seed=0, **TINY)["status"].startswith("built")


def test_an_interrupted_build_leaves_no_stray_files_for_the_next_one(tmp_path, monkeypatch):
    """A build stopped midway, then one of fewer photos: the first one's extra images (and the temporary of the
    write it was stopped in) stayed in the training folders, which the trainer scans, listed in no manifest."""
    root = tmp_path / "demo"
    real, calls = dd.write_if_changed, []

    def stop_on_the_40th(path, data, force=False):
        calls.append(path)
        if len(calls) == 40:
            path.with_name(f".{path.name}.999.tmp").write_bytes(data[:10])  # as a write cut short
            raise KeyboardInterrupt
        return real(path, data, force)
    monkeypatch.setattr(dd, "write_if_changed", stop_on_the_40th)
    with pytest.raises(KeyboardInterrupt):
        dd.build_demo_data(root, seed=0, **(TINY | {"max_photos": 4}))
    monkeypatch.undo()
    man = dd.build_demo_data(root, seed=0, **(TINY | {"max_photos": 1}))
    on_disk = set(all_files(root)) - {"manifest.json"}
    assert on_disk == set(man["files"]), sorted(on_disk ^ set(man["files"]))[:5]


def test_an_image_the_demo_did_not_write_is_refused_not_called_up_to_date(tmp_path):
    """An image of the user's dropped into the demo's folders was "up to date": the trainer and the tester, which
    read every image of those folders, then trained and scored on it. It is named now, and left where it is."""
    root = tmp_path / "d"
    dd.build_demo_data(root, seed=0, **TINY)
    mine = root / "Train" / "Derain" / "rainy" / "my-rain.png"
    mine.write_bytes(next((root / "Train" / "Derain" / "rainy").iterdir()).read_bytes())
    (root / "Train" / "notes.txt").write_text("not an image: neither reader looks at it")
    before = all_files(root)
    with pytest.raises(dd.DemoDataError, match=r"1 image its manifest does not list \(Train/Derain/rainy/my-rain"):
        dd.build_demo_data(root, seed=0, **TINY)
    assert all_files(root) == before  # nothing written, nothing deleted
    with pytest.raises(dd.DemoDataError, match="its manifest does not list"):  # a rebuild, which would keep it, too
        dd.build_demo_data(root, seed=0, force=True, **TINY)
    assert all_files(root) == before
    mine.unlink()
    assert dd.build_demo_data(root, seed=0, **TINY)["status"] == "up to date"


def test_every_random_degradation_follows_the_seed(tiny, tmp_path):
    """--seed draws every synthetic degradation anew (rain, haze, low light, blur, train and test alike), the
    clean images staying the same."""
    root, _ = tiny
    dd.build_demo_data(tmp_path / "other", seed=1, **TINY)

    def folder(base, rel):
        return {p.name: p.read_bytes() for p in sorted((base / rel).glob("*.png"))}
    for rel in ("Train/Derain/rainy", "Train/Dehaze/synthetic/part1", "test/derain/demo/input", "test/dehaze/input",
                "test/lowlight/low", "test/deblur/input"):
        assert folder(root, rel) != folder(tmp_path / "other", rel), rel
    for rel in ("Train/Denoise", "Train/Dehaze/original", "test/lowlight/high", "test/deblur/target"):
        assert folder(root, rel) == folder(tmp_path / "other", rel), rel


def test_haze_follows_the_atmospheric_scattering_model():
    """I = J t + A (1 - t), t = exp(-beta d), with d from DEPTH_NEAR (depth 0) to DEPTH_FAR (depth 1): far
    pixels are hazier."""
    img = np.full((4, 2, 3), 51, np.uint8)
    depth = np.array([[0.0, 1.0]] * 4, np.float32)
    hazy = degrade.add_haze(img, depth, 0.9, 0.1)
    for col, d in ((0, degrade.DEPTH_NEAR), (1, degrade.DEPTH_FAR)):
        t = np.exp(-0.1 * d)
        assert np.abs(hazy[:, col].astype(float) - 255 * (0.2 * t + 0.9 * (1 - t))).max() <= 0.5 + 1e-6, col
    assert hazy[0, 1, 0] > hazy[0, 0, 0]


def test_jpeg_degradation_is_at_its_quality():
    """The JPEG inputs are encoded at JPEG_QUALITY (10): far lossier than a high quality would be."""
    img = cv2.resize(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8), (96, 96))

    def error(out):
        return np.abs(out.astype(float) - img).mean()
    assert degrade.JPEG_QUALITY == 10
    assert np.array_equal(degrade.jpeg_degrade(img), degrade.jpeg_degrade(img, 10))
    assert error(degrade.jpeg_degrade(img, 10)) > 2 * error(degrade.jpeg_degrade(img, 90))


def test_low_light_darkens_dark_tones_most_with_mild_noise():
    """Low light is gain * I^gamma with gamma > 1: dark tones keep a smaller share of their brightness than light
    ones, and the noise added stays mild (within the recorded read and shot noise)."""
    img = np.concatenate([np.full((64, 64, 3), 64, np.uint8), np.full((64, 64, 3), 255, np.uint8)], axis=1)
    for seed in range(5):
        low = degrade.darken(img, np.random.default_rng(seed)).astype(float)
        dark, light = low[:, :64].mean() / 64, low[:, 64:].mean() / 255
        assert dark < light <= degrade.LOWLIGHT_GAIN[1] + 0.01, seed
        noise = max(low[:, :64].std(), low[:, 64:].std()) / 255
        assert noise <= degrade.LOWLIGHT_NOISE[1] * (1 + np.sqrt(degrade.LOWLIGHT_GAIN[1])) + 1 / 255, seed


def test_rain_streaks_leave_most_of_the_image_untouched():
    """Rain is sparse streaks, not a veil: most pixels get no rain at all."""
    for seed in range(5):
        for scale in (0.2, 1.0):
            rain = degrade.rain_layer(96, 96, np.random.default_rng(seed), scale)
            assert np.median(rain) < 0.05 and (rain > 0.1).mean() < 0.5, (seed, scale)


def test_haze_settings_of_one_image_are_distinct():
    """Each hazy version of a crop has its own (A, beta): two alike would be one file written twice."""
    for seed in range(20):
        pairs = degrade.haze_pairs(np.random.default_rng(seed), dd.HAZE_VARIANTS_TRAIN)
        assert len(set(pairs)) == dd.HAZE_VARIANTS_TRAIN, seed
    grid = degrade.haze_pairs(np.random.default_rng(0), 100)
    assert len(set(grid)) == len(grid) == len(degrade.HAZE_AIRLIGHT) * len(degrade.HAZE_BETA)


def test_the_denoising_test_images_are_the_clean_targets(tiny):
    """The denoising set holds each test photo clean (the tester adds the noise): the same image as the other
    tasks' targets."""
    root, man = tiny
    for name in man["sources"]["test"]:
        clean = (root / "test/denoise/demo" / f"{name}.png").read_bytes()
        assert clean == (root / "test/jpeg/target" / f"{name}.png").read_bytes(), name
        assert clean == (root / "test/deblur/target" / f"{name}.png").read_bytes(), name


def test_a_write_cut_short_while_building_names_the_image_and_leaves_no_part_of_it(tmp_path):
    """A build that met the end of its room (here the process's file size limit, ``ulimit -f``, which a full disk
    meets the same way: a write that stops part-way) said "file too large: a file exceeds ...", naming no file,
    and left the part-written temporary in the training folders, taking the space it had."""
    import resource
    import subprocess
    import sys

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    root = tmp_path / "demo"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "utils.demo.data", "--root", str(root), "--scale", "0.3",
                           "--max-photos", "1"], cwd=repo, capture_output=True, text=True, timeout=120,
                          preexec_fn=small_files, env={**os.environ, "PYTHONPATH": str(repo)})
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("demo data:")]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert re.match(r"error: file too large: writing \S+\.png to " + re.escape(str(root)), lines[0]), lines[0]
    assert not [p for p in root.rglob(".*.tmp")], sorted(root.rglob(".*.tmp"))
