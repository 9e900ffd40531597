"""The mixed-degradation training set on synthetic folders made in tmp_path, and the shipped id lists."""
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _conformance import CONFORMANCE
from _train_data import _write, make_train_tree, smooth_image, unpack_flat

from utils import dataset_utils as du
from utils.dataset_utils import DatasetError

DE_3D = list(du.ALL_IN_ONE_3D)
DE_5D = list(du.ALL_IN_ONE_5D)  # the reference README's order


def dirs_of(tree):
    return {fam: tree[fam] for fam in du.FAMILIES}


@pytest.fixture(scope="module")
def tree3(tmp_path_factory):
    return make_train_tree(tmp_path_factory.mktemp("d3"), id_lists=True)


@pytest.fixture(scope="module")
def tree5(tmp_path_factory):
    return make_train_tree(tmp_path_factory.mktemp("d5"), five_d=True)


def test_ids_domains_and_repeats_3d(tree3):
    ds = du.build_train_dataset(DE_3D, dirs_of(tree3), 32, log=lambda m: None)  # folders scanned
    assert ds.families == ["denoise", "derain", "dehaze"]
    # 3 clean images x 5 per level; 3 rainy x 360; 6 hazy (2 per original) x 1
    assert ds.counts_by_de == {"denoise_15": 15, "denoise_25": 15, "denoise_50": 15, "derain": 1080, "dehaze": 6}
    assert ds.domain_counts == [45, 1080, 6]
    inv = np.array([1 / 45, 1 / 1080, 1 / 6])
    np.testing.assert_allclose(ds.lambdas, inv / inv.sum(), rtol=1e-12)
    assert len(ds) == 1131
    pairs = {(s.de_id, s.domain) for s in ds.samples}
    assert pairs == {(0, 0), (1, 0), (2, 0), (3, 1), (4, 2)}
    assert du.num_sources(DE_3D) == 3


def test_id_lists_are_used_when_present(tree3):
    ds = du.build_train_dataset(DE_3D, dirs_of(tree3), 32, data_file_dir=tree3["data_file_dir"], log=lambda m: None)
    # the hazy list names only the A=0.8 images: 3 instead of 6
    assert ds.counts_by_de["dehaze"] == 3
    hazy = {s.pair.degraded.name for s in ds.samples if s.de_id == 4}
    assert hazy == {"0000_0.8_0.2.png", "0001_0.8_0.2.png", "0002_0.8_0.2.png"}
    rain = {(s.pair.degraded.name, s.pair.clean.name) for s in ds.samples if s.de_id == 3}
    assert rain == {(f"rain-{i}.png", f"norain-{i}.png") for i in (1, 2, 3)}


def test_a_repeated_id_counts_as_the_references_lists_count_it(tmp_path):
    """The reference filters its Denoise folder's listing by noisy/denoise.txt, so a name listed twice is one
    image (here it was two: 4 clean images of 3 files, another lambda and epoch); its rain and haze lists are
    used line by line, so a repeated rainy line is a repeated sample, here as there."""
    from _train_data import add_listed_ids
    tree = make_train_tree(tmp_path, n=3, id_lists=True)
    add_listed_ids(tree, "denoise", ["clean_0.png"])
    add_listed_ids(tree, "derain", ["rainy/rain-1.png"])
    ds = du.build_train_dataset(DE_3D, dirs_of(tree), 32, data_file_dir=tree["data_file_dir"], log=lambda m: None)
    assert ds.counts_by_de["denoise_15"] == 3 * 5 and ds.counts_by_de["derain"] == 4 * 360


def test_ids_domains_and_repeats_5d(tree5):
    ds = du.build_train_dataset(DE_5D, dirs_of(tree5), 32, log=lambda m: None)
    assert ds.families == ["denoise", "derain", "dehaze", "deblur", "lowlight"]
    assert du.domain_of(DE_5D) == {"denoise_25": 0, "derain": 1, "dehaze": 2, "deblur": 3, "lowlight": 4}
    # denoise_25 without the other levels is x15; deblur x35; lowlight x150
    assert ds.counts_by_de == {"denoise_25": 45, "derain": 1080, "dehaze": 6, "deblur": 105, "lowlight": 450}
    assert ds.domain_counts == [45, 1080, 6, 105, 450]
    assert {s.de_id for s in ds.samples} == {1, 3, 4, 5, 6}
    assert sum(ds.lambdas) == pytest.approx(1.0)


def test_domains_robust_to_missing_families():
    assert du.domain_of(["deblur", "denoise_50"]) == {"denoise_50": 0, "deblur": 1}
    assert du.domain_of(["lowlight", "derain"]) == {"derain": 0, "lowlight": 1}
    assert du.repeat_factor("denoise_25", ["denoise_15", "denoise_25"]) == 15
    assert du.repeat_factor("denoise_25", DE_3D) == 5
    with pytest.raises(DatasetError, match="unknown --de-type"):
        du.check_de_types(["derain", "desnow"])


def test_lambda_counts_match_the_reference_vector():
    """[77160, 72000, 72135]: 5144 clean x 5 x 3 levels, 200 rainy x 360, 72135 hazy x 1 (after repetition)."""
    case = torch.load(CONFORMANCE / "golden_3d.pt", weights_only=True)["loss_case"]
    counts = [5144 * sum(du.repeat_factor(d, DE_3D) for d in DE_3D[:3]),
              200 * du.repeat_factor("derain", DE_3D), 72135 * du.repeat_factor("dehaze", DE_3D)]
    assert counts == list(case["domain_counts"])
    np.testing.assert_allclose(du.barycenter_weights(counts), np.asarray(case["lambdas"], dtype=np.float64),
                               rtol=1e-12)


def test_missing_pairs_are_one_error(tmp_path):
    tree = make_train_tree(tmp_path, five_d=True)
    os.remove(tree["derain"] / "gt" / "norain-2.png")
    os.remove(tree["dehaze"] / "original" / "0001.png")
    os.remove(tree["deblur"] / "blur" / "img_0.png")
    with pytest.raises(DatasetError) as err:
        du.collect_samples(DE_5D, dirs_of(tree), log=lambda m: None)
    msg = str(err.value)
    assert msg.startswith("4 training files are missing")  # one rainy, two hazy variants, one blur
    assert "norain-2.png (for rainy/rain-2.png)" in msg
    assert "0001.png (for synthetic/part1/0001_0.8_0.2.png)" in msg and "0001_0.9_0.2.png)" in msg
    assert f"--deblur-dir={tree['deblur']}: {tree['deblur'] / 'blur' / 'img_0.png'} (for sharp/img_0.png)" in msg
    logged = []
    found = du.collect_samples(DE_5D, dirs_of(tree), skip_bad=True, log=logged.append)
    assert any(m.startswith("warning: skipping 4 sample") for m in logged)
    assert len(found["derain"]) == 2 and len(found["dehaze"]) == 4 and len(found["deblur"]) == 2


def test_long_missing_list_is_cut_at_20(tmp_path):
    tree = make_train_tree(tmp_path, n=1)
    img = smooth_image(np.random.default_rng(0), 32)
    for i in range(2, 27):
        _write(tree["derain"] / "rainy" / f"rain-{i}.png", img)
    with pytest.raises(DatasetError, match=r"25 training files are missing.*\.\.\. and 15 more"):
        du.collect_samples(["derain"], dirs_of(tree), log=lambda m: None)


def test_missing_and_empty_folders(tmp_path):
    tree = make_train_tree(tmp_path, n=1)
    dirs = dirs_of(tree)
    with pytest.raises(DatasetError, match=r"--deblur-dir points at .*Deblur, which does not exist"):
        du.collect_samples(["deblur"], dirs, log=lambda m: None)
    (tree["deblur"] / "blur").mkdir(parents=True)
    (tree["deblur"] / "sharp").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no usable deblur training images under --deblur-dir"):
        du.collect_samples(["deblur"], dirs, log=lambda m: None)
    with pytest.raises(DatasetError, match=r"--lowlight-dir points at"):
        du.collect_samples(["lowlight"], dirs, log=lambda m: None)


def test_bad_images_are_named(tmp_path):
    tree = make_train_tree(tmp_path, n=2, five_d=True)
    dirs = dirs_of(tree)
    (tree["denoise"] / "clean_0.png").write_bytes(b"not a png")
    rng = np.random.default_rng(3)
    _write(tree["lowlight"] / "low" / "0.png", smooth_image(rng, 48))  # target is 64x64
    _write(tree["deblur"] / "blur" / "small.png", smooth_image(rng, 40))
    _write(tree["deblur"] / "sharp" / "small.png", smooth_image(rng, 40))  # 32x32 after the crop to 16
    found = du.collect_samples(["denoise_15", "deblur", "lowlight"], dirs, log=lambda m: None)
    with pytest.raises(DatasetError) as err:
        du.check_images(found, patch_size=48)
    msg = str(err.value)
    assert msg.startswith("3 training images cannot be used")
    assert "clean_0.png" in msg and "small.png is 40x40 (32x32 after" in msg and "0.png is 48x48 but its target" in msg
    # each file's problem once, then one fix (it read "... Replace or remove it. Replace or remove them, ...")
    assert msg.count("Replace or remove") == 1 and msg.endswith(
        "Replace or remove them, lower --patch-size, or pass --skip-bad-files.")
    with pytest.raises(DatasetError) as err:  # no image too small: no --patch-size in the fix
        du.check_images(found, patch_size=32)
    assert str(err.value).endswith(". Replace or remove them, or pass --skip-bad-files."), str(err.value)
    logged = []
    kept = du.check_images(found, patch_size=48, skip_bad=True, log=logged.append)
    assert len(logged) == 1 and logged[0].startswith("warning: skipping 3 training image")
    assert len(kept["denoise"]) == 1 and len(kept["deblur"]) == 2 and len(kept["lowlight"]) == 1
    ds = du.MixedDegradationDataset(found, ["denoise_15"], 48)  # the unchecked list reads the bad file...
    bad = next(i for i, s in enumerate(ds.samples) if s.pair.clean.name == "clean_0.png")
    with pytest.raises(OSError, match="clean_0.png"):
        ds[bad]


def test_shared_targets_are_read_once(tmp_path, monkeypatch):
    """Hazy images share their clean target (OTS: 72,135 hazy, about 2,000 clean): one check per file."""
    tree = make_train_tree(tmp_path, n=3)  # 6 hazy images over 3 clean targets
    found = du.collect_samples(DE_3D, dirs_of(tree), log=lambda m: None)
    reads = []
    from utils.data import integrity
    real = integrity.check_file
    monkeypatch.setattr(integrity, "check_file", lambda path: reads.append(Path(path)) or real(path))
    kept = du.check_images(found, patch_size=32)
    assert len(kept["dehaze"]) == 6
    assert len(reads) == len(set(reads)) == 3 + 2 * 3 + 6 + 3  # clean; rain pairs; hazy + their 3 targets


def test_augment_modes():
    img = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    outs = [du.augment(img, m) for m in range(8)]
    assert np.array_equal(outs[1], np.flipud(img))
    assert np.array_equal(outs[2], np.rot90(img))
    assert np.array_equal(outs[7], np.flipud(np.rot90(img, 3)))
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8  # all distinct


def test_crop_and_augmentation_keep_pairs_aligned(tree5, monkeypatch):
    modes = []
    real = du.augment
    monkeypatch.setattr(du, "augment", lambda img, m: (modes.append(m), real(img, m))[1])
    ds = du.build_train_dataset(["lowlight"], dirs_of(tree5), 32, seed=7, log=lambda m: None)
    for i in range(0, len(ds), 37):
        deg, clean, de, dom = ds[i]
        assert deg.shape == clean.shape == (3, 32, 32) and de == 6 and dom == 0
        low = torch.round(deg * 255).long()
        high = torch.round(clean * 255).long()
        assert torch.equal(low, high // 4)  # low = high // 4 pixel by pixel: same window, same mode
    assert modes and 0 not in modes and set(modes) <= set(range(1, 8))
    assert len(set(modes)) > 3
    # the clean patch is the window and mode drawn from the sample's stream
    s, rng = ds.samples[5], ds.rng(5)
    img = du.centre_crop(du.read_image(s.pair.clean))
    top, left, mode = int(rng.integers(0, img.shape[0] - 31)), int(rng.integers(0, img.shape[1] - 31)), \
        int(rng.integers(1, 8))
    expect = real(img[top:top + 32, left:left + 32], mode)
    assert torch.equal(ds[5][1], torch.from_numpy(expect.transpose(2, 0, 1).copy()).float() / 255)
    # rain: the streaks (255) are the only difference, wherever the crop and rotation put them
    rain = du.build_train_dataset(["derain"], dirs_of(tree5), 32, seed=1, log=lambda m: None)
    for i in range(0, len(rain), 101):
        deg, clean, de, dom = rain[i]
        assert de == 3 and ((deg == clean) | (deg == 1.0)).all() and (deg != clean).any()


def test_noise_is_truncated_and_reproducible(tree3):
    ds = du.build_train_dataset(["denoise_50"], dirs_of(tree3), 32, seed=3, log=lambda m: None)
    ds.set_epoch(2)
    deg, clean, de, dom = ds[4]
    assert de == 2 and dom == 0
    # rebuild the same sample from its random stream: crop, mode, then sigma=50 noise, truncated
    s = ds.samples[4]
    img = du.centre_crop(du.read_image(s.pair.clean))
    rng = ds.rng(4)
    top, left, mode = int(rng.integers(0, img.shape[0] - 31)), int(rng.integers(0, img.shape[1] - 31)), \
        int(rng.integers(1, 8))
    patch = du.augment(img[top:top + 32, left:left + 32], mode)
    noisy = np.clip(patch.astype(np.float64) + 50 * rng.standard_normal(patch.shape), 0, 255).astype(np.uint8)
    assert torch.equal(clean, torch.from_numpy(patch.transpose(2, 0, 1).copy()).float() / 255)
    assert torch.equal(deg, torch.from_numpy(noisy.transpose(2, 0, 1).copy()).float() / 255)
    again = ds[4]
    assert torch.equal(again[0], deg)
    ds.set_epoch(3)
    assert not torch.equal(ds[4][0], deg)


def test_truncation_rounds_down():
    rng = np.random.default_rng(0)
    clean = np.full((4, 4, 3), 100, np.uint8)
    noisy = du.add_noise(clean, 15, rng)
    expect = np.clip(100 + 15 * np.random.default_rng(0).standard_normal((4, 4, 3)), 0, 255)
    assert np.array_equal(noisy, np.floor(expect).astype(np.uint8))


def test_16_bit_training_images_keep_their_high_byte_as_pil_reads_them(tmp_path):
    """The reference reads with PIL convert('RGB'), which keeps a 16-bit RGB PNG's high byte; rounding
    (x + 128) // 257 gave 1 level more on about a quarter of the values."""
    from PIL import Image

    from utils.data.image_io import read_image, write_image
    img = (np.arange(3 * 40 * 40, dtype=np.uint32) * 7 % 65536).astype(np.uint16).reshape(40, 40, 3)
    write_image(tmp_path / "x16.png", img)
    pil = np.asarray(Image.open(tmp_path / "x16.png").convert("RGB"))
    assert np.array_equal(du._to_uint8(read_image(tmp_path / "x16.png")), pil)


def test_centre_crop_to_16():
    img = np.zeros((70, 53, 3), np.uint8)
    img[3:67, 2:50] = 1
    out = du.centre_crop(img)
    assert out.shape == (64, 48, 3) and out.min() == 1


def test_sampler_order_is_a_function_of_seed_and_epoch(tree3):
    ds = du.build_train_dataset(DE_3D, dirs_of(tree3), 32, log=lambda m: None)
    a = du.ResumableSampler(ds, seed=5)
    a.set_epoch(3)
    order = list(a)
    b = du.ResumableSampler(ds, seed=5)
    b.set_epoch(3)
    b.set_start(9)
    assert list(b) == order[9:] and len(b) == len(order) - 9
    a.set_epoch(4)
    assert list(a) != order
    shards = [du.ResumableSampler(ds, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for s in shards:
        s.set_epoch(3)
    s0, s1 = list(shards[0]), list(shards[1])
    assert len(s0) == len(s1) == (len(ds) + 1) // 2
    assert set(s0) | set(s1) == set(range(len(ds)))
    assert du.iterations_per_epoch(len(s0), 4) == -(-len(s0) // 4)
    assert du.iterations_per_epoch(len(s0), 4, cap=3) == 3


def test_repeat_overrides_the_paper_factors(tmp_path):
    from utils.dataset_utils import DatasetError, parse_repeats, repeat_factor
    de = ["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze"]
    assert parse_repeats(["derain=8", "dehaze=5"]) == {"derain": 8, "dehaze": 5}
    assert repeat_factor("derain", de, {"derain": 8}) == 8
    assert repeat_factor("derain", de) == 360
    assert repeat_factor("denoise_25", de, {"derain": 8}) == 5
    for bad in (["derain"], ["derain=0"], ["rain=3"], ["derain=x"]):
        with pytest.raises(DatasetError, match="--repeat"):
            parse_repeats(bad)


# --------------------------------------------------------------------------- the reference's id lists

DATA_DIR = Path(__file__).resolve().parents[1] / "data_dir"
# (file, ids, first id, last id, sha256 of the file): the released BaryIR repository's lists, byte for byte
SHIPPED_LISTS = [
    ("noisy/denoise.txt", 5144, "03000.bmp", "a314016.jpg",
     "703269006085cb246f8aed055593b8566a8c403f13843dbee68fc02d0804d890"),
    ("rainy/rainTrain.txt", 200, "rainy/rain-100.png", "rainy/rain-9.png",
     "8ca003fb5e4ea51d3041a29f833fcbb237e3f3aebfc6fc3ccaada141004e3b10"),
    ("hazy/hazy_outside.txt", 72135, "synthetic/part1/0025_0.8_0.04.jpg", "synthetic/part4/8961_1_0.2.jpg",
     "e01b84818789499db89662d7f212e95ba334ebbee9c5c38539f09e9ddf503ca1"),
]


@pytest.mark.parametrize("name, n, first, last, digest", SHIPPED_LISTS, ids=[s[0] for s in SHIPPED_LISTS])
def test_shipped_id_lists_are_the_reference_files(name, n, first, last, digest):
    path = DATA_DIR / name
    assert du.ID_LISTS[{"noisy": "denoise", "rainy": "derain", "hazy": "dehaze"}[name.split("/")[0]]] == name
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest, f"{path} differs from the reference's file"
    ids = du.read_id_list(path)
    assert len(ids) == len(set(ids)) == n and ids[0] == first and ids[-1] == last
    assert len(data.decode("ascii").splitlines()) == n  # one id a line, no blank lines
    assert (DATA_DIR / "LICENSE.reference").read_text().startswith("MIT License\n\nCopyright (c) 2026 Xiaole Tang")


def test_authors_3d_epoch_from_the_shipped_lists():
    """The authors' 3D run: 4,744 of the 5,144 noisy ids on disk (the WED part), all rain and haze ids:
    4744 x 3 x 5 + 200 x 360 + 72135 = 215,295 samples per epoch (no images needed: a set stands for the disk)."""
    lists = {fam: du.read_id_list(DATA_DIR / du.ID_LISTS[fam]) for fam in ("denoise", "derain", "dehaze")}
    wed = {i for i in lists["denoise"] if re.fullmatch(r"\d{5}\.bmp", i)}
    present, absent = du.split_listed_ids(lists["denoise"], wed)
    assert len(present) == 4744 and len(absent) == 400 and present == [i for i in lists["denoise"] if i in wed]
    images = {"denoise": len(present)}
    for fam in ("derain", "dehaze"):
        kept, gone = du.split_listed_ids(lists[fam], set(lists[fam]))
        images[fam] = len(kept)
        assert not gone
    by_de, by_domain = du.epoch_counts(DE_3D, images)
    assert by_de == {"denoise_15": 23720, "denoise_25": 23720, "denoise_50": 23720, "derain": 72000, "dehaze": 72135}
    assert sum(by_de.values()) == 4744 * 3 * 5 + 200 * 360 + 72135 == 215295
    assert by_domain == [71160, 72000, 72135]
    inv = np.array([1 / 71160, 1 / 72000, 1 / 72135])
    np.testing.assert_allclose(du.barycenter_weights(by_domain), inv / inv.sum(), rtol=1e-12)
    # all 5,144 present gives the reference's conformance vector
    assert du.epoch_counts(DE_3D, {"denoise": 5144, "derain": 200, "dehaze": 72135})[1] == [77160, 72000, 72135]


def test_missing_listed_ids_are_left_out_with_one_warning(tmp_path):
    from _train_data import add_listed_ids
    tree = make_train_tree(tmp_path, n=3, id_lists=True)
    add_listed_ids(tree, "denoise", ["gone_a.png", "gone_b.png"])
    add_listed_ids(tree, "dehaze", [f"synthetic/part2/{i:04d}_1_0.1.jpg" for i in range(7)])
    logged = []
    ds = du.build_train_dataset(DE_3D, dirs_of(tree), 32, data_file_dir=tree["data_file_dir"], log=logged.append)
    warns = [m for m in logged if m.startswith("warning:")]
    assert len(warns) == 1
    w = warns[0]
    assert f"2 of the 5 ids in {tree['data_file_dir'] / 'noisy' / 'denoise.txt'} are not under " \
           f"--denoise-dir={tree['denoise']} (gone_a.png, gone_b.png)" in w
    assert "7 of the 10 ids in" in w and "hazy_outside.txt" in w and "0004_1_0.1.jpg, ... (2 more)" in w
    assert "0005_1_0.1.jpg" not in w and "rainTrain" not in w and "--strict-ids" in w
    assert any("denoise: 3 of the 5 ids listed in" in m for m in logged)
    # counts and lambdas from the ids present: 3 clean x 5 x 3, 3 rainy x 360, 3 hazy x 1
    assert ds.images_by_de == {"denoise_15": 3, "denoise_25": 3, "denoise_50": 3, "derain": 3, "dehaze": 3}
    assert ds.domain_counts == [45, 1080, 3] and len(ds) == 1128
    inv = np.array([1 / 45, 1 / 1080, 1 / 3])
    np.testing.assert_allclose(ds.lambdas, inv / inv.sum(), rtol=1e-12)
    assert {s.pair.clean.name for s in ds.samples if s.de_id == 0} == {"clean_0.png", "clean_1.png", "clean_2.png"}
    # and one batch loads
    deg, clean, de, dom = ds[len(ds) - 1]
    assert deg.shape == clean.shape == (3, 32, 32) and (de, dom) == (4, 2)


def test_strict_ids_names_the_missing_ids(tmp_path):
    from _train_data import add_listed_ids
    tree = make_train_tree(tmp_path, n=2, id_lists=True)
    listed = add_listed_ids(tree, "derain", [f"rainy/rain-{i}.png" for i in range(50, 58)])
    with pytest.raises(DatasetError) as err:
        du.collect_samples(DE_3D, dirs_of(tree), tree["data_file_dir"], log=lambda m: None, strict_ids=True)
    msg = str(err.value)
    assert f"8 of the 10 ids in {listed} are not under --derain-dir={tree['derain']}" in msg
    assert "rainy/rain-50.png, rainy/rain-51.png, rainy/rain-52.png, rainy/rain-53.png, rainy/rain-54.png, " \
           "... (3 more)" in msg
    assert "Put the files there" in msg and "--data-file-dir" in msg and "drop --strict-ids" in msg
    with pytest.raises(DatasetError, match="strict-ids"):
        du.build_train_dataset(DE_3D, dirs_of(tree), 32, data_file_dir=tree["data_file_dir"],
                               log=lambda m: None, strict_ids=True)
    found = du.collect_samples(DE_3D, dirs_of(tree), tree["data_file_dir"], log=lambda m: None)
    assert len(found["derain"]) == 2


def test_listed_ids_none_on_disk_is_a_wrong_folder_error(tmp_path):
    tree = make_train_tree(tmp_path, n=2, id_lists=True)
    dirs = dirs_of(tree)
    dirs["dehaze"] = tree["derain"]  # a folder that exists but is not the hazy one
    with pytest.raises(DatasetError) as err:
        du.collect_samples(["dehaze"], dirs, tree["data_file_dir"], log=lambda m: None)
    msg = str(err.value)
    assert f"none of the 2 ids listed in {tree['data_file_dir'] / 'hazy' / 'hazy_outside.txt'} exist under " \
           f"--dehaze-dir={tree['derain']}" in msg and "wrong folder" in msg


def test_clean_images_unpacked_into_subfolders_are_named_with_the_fix(tmp_path):
    """WED and BSD400 unpacked as Denoise/WED/ and Denoise/BSD400/ (as they download) gave "no usable denoise
    training images" or "none of the ids exist", blaming the folder: the error now says where the images are
    and that only those directly in --denoise-dir are read (as the reference reads them)."""
    tree = make_train_tree(tmp_path, n=3, id_lists=True)
    root = tree["denoise"]
    (root / "WED").mkdir()
    (root / "BSD400").mkdir()
    for i, f in enumerate(sorted(root.glob("clean_*.png"))):
        f.rename(root / ("WED" if i < 2 else "BSD400") / f.name)
    hint = (f"{root} has 3 images in its subfolders (BSD400/ 1, WED/ 2), and only those directly in it are read: "
            f"move them up into {root} (renaming any that repeat)")
    for id_lists in (None, tree["data_file_dir"]):
        with pytest.raises(DatasetError) as err:
            du.collect_samples(["denoise_25"], dirs_of(tree), id_lists, log=lambda m: None)
        assert hint in str(err.value)
    # a list of paths into subfolders (rainy/rain-N.png) missing on disk gets the wrong-folder fix, not this one
    dirs = dirs_of(tree)
    dirs["derain"] = tree["dehaze"]
    with pytest.raises(DatasetError) as err:
        du.collect_samples(["derain"], dirs, tree["data_file_dir"], log=lambda m: None)
    assert "wrong folder" in str(err.value) and "subfolders" not in str(err.value)


def test_rain_pairs_unpacked_flat_are_named_with_the_layout_they_need(tmp_path):
    """Rain100L's training pairs unpacked side by side in --derain-dir (rain-N.png beside norain-N.png) were told
    "pass --derain-dir with the folder the ids are relative to, or --data-file-dir ''", and that fix led to
    "rainy does not exist": both now say the images are loose and where they go."""
    tree = make_train_tree(tmp_path, n=2, id_lists=True)
    root = unpack_flat(tree["derain"])
    hint = (f"{root} holds 4 images directly (norain-1.png, norain-2.png, ...), and --derain-dir reads them from "
            f"{root / 'rainy'}/ and {root / 'gt'}/: move the degraded images and their targets there "
            f"(rainy/rain-N.png and gt/norain-N.png)")
    for id_lists in (tree["data_file_dir"], None):
        with pytest.raises(DatasetError) as err:
            du.collect_samples(["derain"], dirs_of(tree), id_lists, log=lambda m: None)
        assert hint in str(err.value)


def test_listed_rainy_image_without_gt_is_a_pairing_error(tmp_path):
    tree = make_train_tree(tmp_path, n=2, id_lists=True)
    os.remove(tree["derain"] / "gt" / "norain-2.png")
    with pytest.raises(DatasetError, match=r"1 training file is missing[\s\S]*norain-2.png "
                                           r"\(for rainy/rain-2.png\)"):
        du.collect_samples(["derain"], dirs_of(tree), tree["data_file_dir"], log=lambda m: None)
    logged = []
    found = du.collect_samples(["derain"], dirs_of(tree), tree["data_file_dir"], skip_bad=True, log=logged.append)
    assert any(m.startswith("warning: skipping 1 sample") for m in logged)
    assert [p.degraded.name for p in found["derain"]] == ["rain-1.png"]


def test_empty_data_file_dir_scans_the_folders(tmp_path):
    tree = make_train_tree(tmp_path, n=2, id_lists=True)
    logged = []
    found = du.collect_samples(["dehaze"], dirs_of(tree), "", log=logged.append)
    assert len(found["dehaze"]) == 4  # both A values, not the list's 2
    assert any("dehaze: 4 images found by scanning" in m for m in logged)


def test_a_list_folder_without_one_familys_list_warns_that_family_is_scanned(tmp_path):
    """--data-file-dir with the noise and rain lists but not the haze list trained dehaze on every hazy image a scan
    finds (a full OTS download: about 314 k, not the list's 72,135; another lambda and epoch), said only in an
    information line among the data notes; the reference reads the three lists and stops without one."""
    tree = make_train_tree(tmp_path, n=2, id_lists=True)
    hazy_list = tree["data_file_dir"] / "hazy" / "hazy_outside.txt"
    hazy_list.unlink()
    warnings = []
    found = du.collect_samples(["denoise_15", "derain", "dehaze"], dirs_of(tree), tree["data_file_dir"],
                               log=lambda m: None, warn=warnings.append)
    assert len(found["dehaze"]) == 4  # the scan: both A values, where the list named 2
    assert len(warnings) == 1
    assert f"--data-file-dir {tree['data_file_dir']} has no hazy/hazy_outside.txt" in warnings[0]
    assert f"dehaze trains on the 4 images a scan of {tree['dehaze']} finds" in warnings[0]
    assert "--data-file-dir ''" in warnings[0]
    warnings.clear()  # the lists all there, or no list folder at all (a scan asked for): no warning
    du.collect_samples(["denoise_15", "derain"], dirs_of(tree), tree["data_file_dir"], log=lambda m: None,
                       warn=warnings.append)
    du.collect_samples(["dehaze"], dirs_of(tree), "", log=lambda m: None, warn=warnings.append)
    assert warnings == []


def test_deblur_is_driven_by_sharp(tmp_path):
    tree = make_train_tree(tmp_path, n=2, five_d=True)
    img = smooth_image(np.random.default_rng(5), 64)
    _write(tree["deblur"] / "blur" / "only_blur.png", img)  # no sharp counterpart: not a sample
    logged = []
    found = du.collect_samples(["deblur"], dirs_of(tree), log=logged.append)
    assert [(p.degraded.parent.name, p.degraded.name, p.clean.parent.name, p.clean.name) for p in found["deblur"]] \
        == [("blur", f"img_{i}.png", "sharp", f"img_{i}.png") for i in range(2)]
    assert any("deblur: 2 sharp images found by scanning" in m for m in logged)
    _write(tree["deblur"] / "sharp" / "only_sharp.png", img)  # a sharp image needs its blur image
    with pytest.raises(DatasetError) as err:
        du.collect_samples(["deblur"], dirs_of(tree), log=lambda m: None)
    assert f"{tree['deblur'] / 'blur' / 'only_sharp.png'} (for sharp/only_sharp.png)" in str(err.value)
    logged = []
    found = du.collect_samples(["deblur"], dirs_of(tree), skip_bad=True, log=logged.append)
    assert any(m.startswith("warning: skipping 1 sample") for m in logged)
    assert len(found["deblur"]) == 2
    os.rename(tree["deblur"] / "blur", tree["deblur"] / "blurred")
    with pytest.raises(DatasetError, match=r"--deblur-dir points at .*, but .*blur does not exist"):
        du.collect_samples(["deblur"], dirs_of(tree), log=lambda m: None)


def test_report_is_an_aligned_table(tree5):
    ds = du.build_train_dataset(["denoise_25", "derain", "deblur"], dirs_of(tree5), 32, log=lambda m: None)
    lines = ds.report()
    assert [ln.split()[0] for ln in lines] == ["type", "denoise_25", "derain", "deblur", "total"]
    assert lines[1].split() == ["denoise_25", "3", "x15", "45", "0", "denoise", f"{ds.lambdas[0]:.4f}"]
    assert lines[2].split() == ["derain", "3", "x360", "1080", "1", "derain", f"{ds.lambdas[1]:.4f}"]
    assert lines[-1].split() == ["total", str(len(ds)), "K=3"] and len(ds) == 45 + 1080 + 105
    ends = {ln.index(ln.split()[3]) + len(ln.split()[3]) for ln in lines[:-1]}
    assert len(ends) == 1  # the samples column is right-aligned
    assert ds.summary().startswith(f"{len(ds)} samples per epoch")
    # the noise levels share one domain: its lambda once (it was printed on each, the column summing past 1)
    noisy = du.build_train_dataset(["denoise_15", "denoise_25", "denoise_50", "derain"], dirs_of(tree5), 32,
                                   log=lambda m: None)
    three = noisy.report()
    assert [ln.split()[4:] for ln in three[1:4]] == [["0", "denoise", f"{noisy.lambdas[0]:.4f}"], ["0", "denoise"],
                                                     ["0", "denoise"]]
    # an L1-only backbone uses neither domains nor lambda: the columns are left out
    plain = noisy.report(domains=False)
    assert plain[0].split() == ["type", "images", "repeat", "samples"] and plain[-1].split() == ["total",
                                                                                                   str(len(noisy))]


def test_scanning_goes_into_linked_subfolders_once(tmp_path):
    """A scan (rglob) did not enter symbolic links to folders: an OTS download split over disks
    (synthetic/part2 -> /bigdisk/...) trained on part1 alone, and the data doctor called it well-formed."""
    tree = make_train_tree(tmp_path / "t", n=2, id_lists=True)
    synthetic = tree["dehaze"] / "synthetic"
    before = len(du.collect_samples(["dehaze"], dirs_of(tree), "", log=lambda m: None)["dehaze"])
    elsewhere = tmp_path / "bigdisk" / "part9"
    for f in sorted(synthetic.rglob("*.png")):  # the same images again, under a linked folder
        target = elsewhere / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    (synthetic / "part9").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(synthetic, target_is_directory=True)  # a cycle is walked once
    found = du.collect_samples(["dehaze"], dirs_of(tree), "", log=lambda m: None)["dehaze"]
    assert len(found) == 2 * before and sum("part9" in str(p.degraded) for p in found) == before


def test_an_id_list_in_another_encoding_is_one_error_and_a_bom_is_read(tmp_path):
    """A UTF-16 list (PowerShell's >) ended in a UnicodeDecodeError traceback; a UTF-8 byte-order mark made the
    first id 'absent'."""
    path = tmp_path / "denoise.txt"
    path.write_text("a.png\nb.png\n", encoding="utf-16")
    with pytest.raises(DatasetError, match=r"denoise.txt is not UTF-8 text.*save it as UTF-8"):
        du.read_id_list(path)
    path.write_bytes(b"\xef\xbb\xbfa.png\nb.png\n")
    assert du.read_id_list(path) == ["a.png", "b.png"]


def test_an_image_over_the_pixel_limit_is_found_at_start_not_in_a_worker(tmp_path):
    """The start-up check read sizes without the pixel limit, so an over-limit image stopped training when a
    loader worker first read it (or was skipped with a warning each time)."""
    from utils.data.image_io import image_size, pixel_limit
    tree = make_train_tree(tmp_path / "t", n=2)
    found = du.collect_samples(["derain"], dirs_of(tree), "", log=lambda m: None)
    h, w = image_size(found["derain"][0].clean)
    with pixel_limit(h * w - 1):
        with pytest.raises(DatasetError, match=rf"more than the limit of {h * w - 1:,} pixels an image may have; "
                                               rf"downscale it"):
            du.check_images(found, 32)
    assert du.check_images(found, 32) == found  # under the default limit, nothing is left out


def test_an_empty_id_list_says_it_is_empty(tmp_path):
    """An empty list was reported as 'none of the 0 ids listed ... exist', blaming the folder."""
    tree = make_train_tree(tmp_path, n=2, id_lists=True)
    (tree["data_file_dir"] / "rainy" / "rainTrain.txt").write_text("")
    with pytest.raises(DatasetError, match=r"rainTrain.txt for --derain-dir lists no ids \(an empty file\)"):
        du.collect_samples(["derain"], dirs_of(tree), tree["data_file_dir"], log=lambda m: None)


def test_a_bad_file_met_in_training_is_named_once_and_replaced_by_a_new_crop(tmp_path, capsys):
    """--skip-bad-files printed a warning each time a bad file was drawn (360 times an epoch for a rainy image),
    and its replacement, the next sample with that sample's own random stream, was the same crop twice."""
    tree = make_train_tree(tmp_path, n=3)
    found = du.collect_samples(["denoise_25"], dirs_of(tree), log=lambda m: None)
    bad = found["denoise"][1].clean
    bad.write_bytes(bad.read_bytes()[:80])
    ds = du.MixedDegradationDataset(found, ["denoise_25"], 32, skip_bad=True)
    assert len(ds) == 45 and [ds.samples[i].pair.clean for i in (1, 2)] == [bad, found["denoise"][2].clean]
    got = [ds[i] for i in range(len(ds))]
    said = [line for line in capsys.readouterr().err.splitlines() if "skipping a bad training sample" in line]
    assert len(said) == 1 and str(bad) in said[0]
    assert not torch.equal(got[1][1], got[2][1])  # sample 1 (bad) -> sample 2's image, another crop
    assert torch.equal(got[2][1], ds._load(2)[1])  # good samples are unchanged


def test_an_image_gone_mid_epoch_is_named_with_both_ways_on(tmp_path):
    """"image not found: .../norain-1.png Or leave such files out": no full stop, and no word of putting it back."""
    from utils.data.image_io import ImageReadError
    ds = du.build_train_dataset(DE_3D, dirs_of(make_train_tree(tmp_path)), 32, log=lambda m: None)
    gone = ds.samples[0].pair.clean
    gone.unlink()
    with pytest.raises(ImageReadError) as err:
        ds[0]
    assert str(err.value) == (f"image not found: {gone}: put it back, or leave such files out: --skip-bad-files "
                              f"(with --resume auto to go on from the newest checkpoint)")
    gone.write_bytes(b"not an image")  # any other problem keeps its own fix, then the way on
    with pytest.raises(ImageReadError, match=r"Replace or remove it\. Or leave such files out: --skip-bad-files"):
        ds[0]


def test_an_epoch_too_large_to_list_is_refused_naming_repeat():
    """--repeat derain=100000000 built an epoch list of 3e8 samples until memory ran out, and the error then advised
    a smaller --batchSize or --patch_size and the tester's --tile."""
    du.check_epoch_fits(215_295, None, free=2**30)  # the paper's epoch in 1 GiB
    with pytest.raises(du.DatasetError, match=r"^an epoch of 300,000,051 samples is listed in memory, about 13.4 GiB, "
                                              r"more than half of the 16.0 GiB free on this machine: lower --repeat "
                                              r"derain=100000000 \(the paper's 3D epoch is 215,295 samples\)$"):
        du.check_epoch_fits(300_000_051, {"derain": 100_000_000}, free=16 * 2**30, copies=1)


def test_an_epoch_list_is_counted_once_per_rank_on_the_machine(monkeypatch):
    """Each of torchrun's ranks lists the epoch: 8 ranks each allowed half of the free memory ran out of it."""
    du.check_epoch_fits(50_000_000, None, free=16 * 2**30, copies=1)  # 2.2 GiB: fits one process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(du.DatasetError, match=r"^an epoch of 50,000,000 samples is listed in memory by each of the 8 "
                                              r"ranks on this machine, about 17.9 GiB in all, more than half of the "
                                              r"16.0 GiB free on this machine: train fewer images"):
        du.check_epoch_fits(50_000_000, None, free=16 * 2**30)


@pytest.mark.parametrize("de_type,sigma", [("denoise_15", 15), ("denoise_25", 25), ("denoise_50", 50)])
def test_each_noise_level_trains_on_its_own_sigma(tree3, de_type, sigma):
    """denoise_N samples carry noise of sigma N (0-255 scale), the N of the name: swapping two levels' sigmas
    kept every other test green."""
    ds = du.build_train_dataset([de_type], dirs_of(tree3), 32, seed=11, log=lambda m: None)
    deg, clean, de, dom = ds[1]
    assert de == du.DE_IDS[de_type] and dom == 0
    h, w = du.centre_crop(du.read_image(ds.samples[1].pair.clean)).shape[:2]
    rng = ds.rng(1)
    rng.integers(0, h - 31), rng.integers(0, w - 31), rng.integers(1, 8)  # the crop and the mode come first
    patch = (clean.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    noisy = np.clip(patch.astype(np.float64) + sigma * rng.standard_normal(patch.shape), 0, 255).astype(np.uint8)
    assert torch.equal(deg, torch.from_numpy(noisy.transpose(2, 0, 1).copy()).float() / 255)


def test_the_trainers_loader_shares_each_epoch_out_over_the_ranks_at_the_per_process_batch(tree3):
    """build_loader, as each torchrun rank calls it: every rank draws --batchSize samples per iteration, and
    the ranks' shares of an epoch are one permutation split (disjoint, covering it), whatever the rank. A
    seed that differed per rank made the shares overlap (samples trained twice, others never) and passed
    the DDP end-to-end test: DDP keeps the ranks' weights equal whatever data each sees."""
    from types import SimpleNamespace

    from utils.train.distributed import DistInfo
    from utils.train.start import build_loader
    ds = du.build_train_dataset(DE_3D, dirs_of(tree3), 32, log=lambda m: None)
    shares = []
    for rank in (0, 1):
        args = SimpleNamespace(batchSize=3, threads=0)
        sampler, loader = build_loader(args, ds, 5, DistInfo(rank=rank, world_size=2))
        assert loader.sampler is sampler and loader.batch_size == 3
        sampler.set_epoch(2)
        shares.append(list(sampler))
    assert len(shares[0]) == len(shares[1]) == (len(ds) + 1) // 2
    assert set(shares[0]) | set(shares[1]) == set(range(len(ds)))
    assert len(set(shares[0]) & set(shares[1])) == 2 * len(shares[0]) - len(ds)  # only the padding repeats


def test_repeat_overrides_reach_the_epoch_list_and_the_lambdas(tree3):
    """--repeat NAME=N changes how often NAME's images are listed per epoch and, with the same counts, the lambdas:
    a list that ignored it while the lambdas used it (or the reverse) trained another mix than the report said."""
    ds = du.build_train_dataset(DE_3D, dirs_of(tree3), 32, log=lambda m: None,
                                repeats={"derain": 2, "denoise_25": 4})
    listed = {de: sum(s.de_id == i for s in ds.samples) for de, i in du.DE_IDS.items() if de in DE_3D}
    # 3 clean images x 5, x 4, x 5; 3 rainy x 2; 6 hazy x 1
    assert listed == ds.counts_by_de == {"denoise_15": 15, "denoise_25": 12, "denoise_50": 15, "derain": 6,
                                         "dehaze": 6}
    assert ds.domain_counts == [42, 6, 6] and len(ds) == 54
    inv = np.array([1 / 42, 1 / 6, 1 / 6])
    np.testing.assert_allclose(ds.lambdas, inv / inv.sum(), rtol=1e-12)


def test_the_epoch_list_is_in_de_id_order_whatever_the_de_type_order(tree5):
    """Sample i is the same whatever order --de_type names the types in (de-id order, as the reference lists
    them): the sampler shuffles indices, so a list in flag order trained other samples at each step."""
    a = du.build_train_dataset(DE_5D, dirs_of(tree5), 32, log=lambda m: None)
    b = du.build_train_dataset(DE_5D[::-1], dirs_of(tree5), 32, log=lambda m: None)
    assert a.samples == b.samples
    # denoise_25 x15, derain x360, dehaze x1 (6 hazy), deblur x35, lowlight x150, each block its images in turn
    assert [s.de_id for s in a.samples] == [1] * 45 + [3] * 1080 + [4] * 6 + [5] * 105 + [6] * 450
    assert [s.pair.degraded.name for s in a.samples[45:48]] == ["rain-1.png", "rain-2.png", "rain-3.png"]


def test_id_list_lines_are_stripped_blank_lines_skipped_and_list_order_kept(tmp_path):
    """The reference strips each id (id_.strip()): an id with spaces or a CR around it, or a blank line, was an id
    'not on disk'; and the samples follow the list's order, not the sorted names."""
    tree = make_train_tree(tmp_path, n=3, id_lists=True)
    (tree["data_file_dir"] / "noisy" / "denoise.txt").write_bytes(
        b" clean_2.png\r\n\r\nclean_0.png \t\n\n\tclean_1.png\n\n")
    assert du.read_id_list(tree["data_file_dir"] / "noisy" / "denoise.txt") == \
        ["clean_2.png", "clean_0.png", "clean_1.png"]
    logged = []
    found = du.collect_samples(["denoise_15"], dirs_of(tree), tree["data_file_dir"], log=logged.append,
                               strict_ids=True)
    assert [p.clean.name for p in found["denoise"]] == ["clean_2.png", "clean_0.png", "clean_1.png"]
    assert not [m for m in logged if m.startswith("warning:")]


def test_a_pair_not_a_multiple_of_16_is_centre_cropped_alike_before_the_shared_window(tmp_path):
    """Degraded and clean are both centre-cropped to multiples of 16 (70x53 -> rows 3..66, columns 2..49) before
    the one window is cut from them."""
    rng = np.random.default_rng(4)
    high = np.ascontiguousarray(smooth_image(rng, 80)[:70, :53])
    _write(tmp_path / "lowlight" / "high" / "a.png", high)
    _write(tmp_path / "lowlight" / "low" / "a.png", high // 4)
    ds = du.build_train_dataset(["lowlight"], {"lowlight": tmp_path / "lowlight"}, 32, seed=2, log=lambda m: None)
    for i in (0, 7, 99):
        deg, clean, de, dom = ds[i]
        r = ds.rng(i)
        top, left, mode = int(r.integers(0, 64 - 31)), int(r.integers(0, 48 - 31)), int(r.integers(1, 8))
        assert (de, dom) == (6, 0)
        window = high[3 + top:3 + top + 32, 2 + left:2 + left + 32]
        expect = np.rot90(window, mode // 2)
        expect = np.flipud(expect) if mode % 2 else expect
        assert torch.equal(clean, torch.from_numpy(expect.transpose(2, 0, 1).copy()).float() / 255)
        assert torch.equal(deg, torch.from_numpy((expect // 4).transpose(2, 0, 1).copy()).float() / 255)


@pytest.mark.parametrize("shape", [(32, 64), (64, 32)])
def test_an_image_with_one_side_under_the_patch_is_refused_at_start(tmp_path, shape):
    """An image is too small when either side (after the crop to 16) is under --patch-size: one long side let it
    through the start-up check, and a loader worker stopped the run on it mid-epoch."""
    img = np.zeros((*shape, 3), np.uint8)
    _write(tmp_path / "lowlight" / "high" / "a.png", img)
    _write(tmp_path / "lowlight" / "low" / "a.png", img)
    _write(tmp_path / "lowlight" / "high" / "b.png", np.zeros((48, 48, 3), np.uint8))
    _write(tmp_path / "lowlight" / "low" / "b.png", np.zeros((48, 48, 3), np.uint8))
    found = du.collect_samples(["lowlight"], {"lowlight": tmp_path / "lowlight"}, log=lambda m: None)
    with pytest.raises(DatasetError, match=rf"low.a\.png is {shape[0]}x{shape[1]} .*smaller than --patch-size 48"):
        du.check_images(found, 48)
    kept = du.check_images(found, 48, skip_bad=True, log=lambda m: None)
    assert [p.clean.name for p in kept["lowlight"]] == ["b.png"]


def test_collate_keeps_each_samples_degradation_id_and_domain_apart():
    """The batch's de ids (the contrastive term's classes) and domains (which potential f_k) stay in their places."""
    a, b = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)
    deg, clean, de, dom = du.collate([(a, b, 3, 1), (b, a, 4, 2)])
    assert torch.equal(deg, torch.stack([a, b])) and torch.equal(clean, torch.stack([b, a]))
    assert de.tolist() == [3, 4] and dom.tolist() == [1, 2] and de.dtype == dom.dtype == torch.long


def test_the_seed_reaches_the_sampler_order_and_each_samples_crop(tree3):
    """--seed changes both the epoch's order and each sample's window, flip and noise; the same seed repeats them.
    A seed dropped on the way left every run, whatever its --seed, on one order or one set of crops."""
    orders, samples = {}, {}
    for seed in (0, 1):
        ds = du.build_train_dataset(["denoise_50"], dirs_of(tree3), 32, seed=seed, log=lambda m: None)
        ds.set_epoch(1)
        sampler = du.ResumableSampler(ds, seed=seed)
        sampler.set_epoch(1)
        orders[seed], samples[seed] = list(sampler), ds[3][0]
        again = du.ResumableSampler(ds, seed=seed)
        again.set_epoch(1)
        assert list(again) == orders[seed] and torch.equal(ds[3][0], samples[seed])
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1]) == list(range(15))
    assert not torch.equal(samples[0], samples[1])
    g = torch.Generator()
    g.manual_seed(1 + 1)  # DistributedSampler's rule: randperm seeded with seed + epoch
    assert orders[1] == torch.randperm(15, generator=g).tolist()
