"""Memory estimates before work starts: automatic tiling in the tester, refused training configurations."""
import numpy as np
import pytest
import torch

from net.presets import PRESETS, build_model
from utils import memory
from utils.errors import human_bytes
from utils.eval.inference import restore, restore_tiled
from utils.eval.protocol import Protocol, RestoreOutOfMemory, restore_array
from utils.train import run_checks
from utils.train.distributed import DistInfo
from utils.train.options import ConfigError, get_args_parser

H, W = 200, 168


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("BaryNet", "tiny").eval()


@pytest.fixture(scope="module")
def photo():
    return (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)


def test_the_estimate_grows_with_pixels_batch_and_width(tiny):
    one = memory.restore_need(tiny, "fp32", 256, 256)
    assert memory.restore_need(tiny, "fp32", 512, 512) == pytest.approx(4 * one, rel=1e-6)
    assert memory.restore_need(tiny, "fp32", 256, 256, batch=3) == pytest.approx(3 * one, rel=1e-6)
    assert memory.restore_need(tiny, "fp32", 250, 250) == one  # sides round up to multiples of 8
    paper = build_model("BaryNet", "paper")
    assert memory.restore_need(paper, "fp32", 256, 256) > 2 * one
    # a configuration that is no preset is scaled from the nearest one by its activation measure
    wider = dict(PRESETS["tiny"], dim=24)
    ratio = memory.activation_measure(wider) / memory.activation_measure(PRESETS["tiny"])
    assert memory.restore_need(build_model("BaryNet", "tiny", dim=24), "fp32", 256, 256) == \
        pytest.approx(ratio * one, rel=1e-6)


def test_an_image_that_would_not_fit_is_tiled_and_said_so(tiny, photo):
    budget = memory.restore_need(tiny, "fp32", 128, 128, batch=2) + 1  # two 128-pixel tiles fit, the image not
    assert memory.restore_need(tiny, "fp32", H, W) > budget
    notes = []
    out, _ = restore_array(tiny, photo, Protocol(memory_budget=budget, tile_batch=4), torch.device("cpu"),
                           "big.png", note=notes.append)
    assert len(notes) == 1 and "big.png (200x168)" in notes[0] and "128x128 tiles, 1 a pass" in notes[0]
    x = torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None]
    expected = restore_tiled(tiny, x, 128, 32, tile_batch=1)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out, expected)
    assert "--tile 0" in notes[0]


def test_a_fitting_image_or_tile_0_is_restored_whole(tiny, photo):
    x = torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None]
    whole = restore(tiny, x, pad=True)[0].permute(1, 2, 0).numpy()
    fits = memory.restore_need(tiny, "fp32", H, W)
    for protocol in (Protocol(memory_budget=fits), Protocol(tile=0, memory_budget=1)):
        notes = []
        out, _ = restore_array(tiny, photo, protocol.validate(), torch.device("cpu"), note=notes.append)
        np.testing.assert_array_equal(out, whole)
        assert notes == []


def test_when_not_even_a_tile_fits_one_error_names_the_image(tiny, photo):
    said = r"big.png \(200x168\) needs about [0-9.]+ (GiB|MiB) .* even small tiles"
    with pytest.raises(RestoreOutOfMemory, match=said):
        restore_array(tiny, photo, Protocol(memory_budget=1), torch.device("cpu"), "big.png")


def test_on_the_cpu_tiles_leave_room_for_the_whole_images_buffers(tiny):
    """Automatic tiling compared only the tiles' activations with the free memory; on the CPU the whole image's
    input, blend accumulator, weights and result (about 56 B/px) come out of the same memory."""
    from utils.eval.protocol import automatic_tile
    h = w = 2000
    budget = memory.restore_need(tiny, "fp32", 128, 128) + 1000  # one 128-pixel tile's activations, just
    protocol = Protocol(memory_budget=budget, tile_batch=1)
    assert automatic_tile(tiny, (h, w), protocol, torch.device("cuda"), "x.png")[0] == (128, 1)  # GPU: host apart
    with pytest.raises(RestoreOutOfMemory, match="x.png"):
        automatic_tile(tiny, (h, w), protocol, torch.device("cpu"), "x.png")
    roomy = Protocol(memory_budget=budget + memory.TILED_IMAGE_BYTES_PER_PIXEL * h * w, tile_batch=1)
    assert automatic_tile(tiny, (h, w), roomy, torch.device("cpu"), "x.png")[0] == (128, 1)


def _args(*argv):
    return get_args_parser().parse_args(list(argv))


RESIDENT = 300 * 2**20  # this process's size as check_memory sees it: fixed, so that a test's margins are exact


def _check(args, free, monkeypatch, ranks=1, lines=None):
    monkeypatch.setattr(run_checks, "available_bytes", lambda device: free)
    monkeypatch.setattr(run_checks, "resident_bytes", lambda: RESIDENT)  # the real one moves between two reads
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    run_checks.check_memory(args, 3, DistInfo(), _Recorder([] if lines is None else lines))


class _Recorder:
    def __init__(self, lines):
        self.lines = lines

    def __call__(self, text):
        self.lines.append(text)

    def warn(self, text):
        self.lines.append("warning: " + text)


def test_a_training_run_that_cannot_fit_is_refused_with_the_estimate_and_the_fix(monkeypatch):
    # the run: three paper-size CPU ranks at patch 144, batch 8 each
    args = _args("--preset", "paper", "--patch_size", "144", "--batchSize", "8")
    need = run_checks.memory_need(args, 3, DistInfo())
    with pytest.raises(ConfigError) as err:
        _check(args, 8 * 2**30, monkeypatch, ranks=3)
    text = str(err.value)
    assert f"needs about {human_bytes(need.per_process)} per process x 3 processes" in text
    assert "8.0 GiB are free on this machine" in text
    assert "--preset tiny" in text and "--patch-size" in text and "--nproc_per_node" in text
    assert "--no-memory-check" in text
    assert need.parts["activations"] > need.parts["weights, gradients, optimizer"] > 0


def test_the_refusal_names_a_batch_that_fits(monkeypatch):
    """It named batch 2 instead of 3 when this process grew by a byte between the test's and check_memory's
    reads of its size (the margin is 1 byte): the size is fixed now."""
    args = _args("--preset", "tiny", "--patch_size", "128", "--batchSize", "8")
    one = run_checks.memory_need(args, 3, DistInfo(), batch=1)
    three = run_checks.memory_need(args, 3, DistInfo(), batch=3)
    free = three.total - RESIDENT + 1  # batch 3 fits, batch 4 would not
    with pytest.raises(ConfigError, match=r"--batch-size 3\b"):
        _check(args, free, monkeypatch)
    assert one.total < three.total


def test_a_huge_batch_is_refused_at_once_naming_a_batch_that_fits(monkeypatch):
    """--batchSize 1099511627776 hung at start-up: the advice searched for a fitting batch one value at a time
    down from the given one (days at 2**40). The SIGALRM only guards the suite against that hang."""
    import signal

    def hung(signum, frame):
        raise TimeoutError("check_memory still searching after 20 s")
    args = _args("--preset", "tiny", "--patch_size", "128", "--batchSize", str(2**40))
    three = run_checks.memory_need(args, 3, DistInfo(), batch=3)
    per_sample = three.parts["activations"] / 3
    free = three.total - RESIDENT + per_sample / 2  # batch 3 fits, batch 4 would not (a margin float64 keeps at 2**40)
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(ConfigError, match=r"--batch-size 3\b"):
            _check(args, free, monkeypatch)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("batch", [2, 7, 1000, 2**40, 10**22])
def test_the_batch_that_fits_is_the_one_a_search_finds(batch):
    """Also for absurd batches: subtracting from a need of 1e25 bytes lost the fixed part (10**18 advised 576 where
    554 fit, 10**22 advised nothing)."""
    rng = np.random.default_rng(batch % 2**32)
    for _ in range(200):
        per_sample, fixed = float(rng.uniform(1, 1e8)), float(rng.uniform(0, 1e9))
        free = fixed + float(rng.uniform(-1e8, 5000 * per_sample))
        top = min(batch - 1, 6000)
        fits = [b for b in range(top, 0, -1) if fixed + b * per_sample <= free]
        assert run_checks.largest_batch_that_fits(batch, fixed, per_sample, free) == (fits[0] if fits else None)
    assert run_checks.largest_batch_that_fits(10**18, 6e8, 3.5e7, 2e10) == 554
    assert run_checks.largest_batch_that_fits(batch, 10.0, 0.0, 1.0) is None


def test_a_patch_too_large_to_size_its_potentials_is_one_error_line():
    """--patch_size 1000000 ended in a traceback: "Storage size calculation overflowed" building the potentials."""
    with pytest.raises(ConfigError, match=r"^--patch-size 1000000: the potentials' first linear layer .* 128$"):
        run_checks.memory_need(_args("--preset", "tiny", "--patch_size", "1000000"), 3, DistInfo())


def test_a_run_that_fits_starts_and_prints_its_estimate(monkeypatch):
    lines = []
    _check(_args("--preset", "tiny", "--patch_size", "32", "--batchSize", "2"), 64 * 2**30, monkeypatch, lines=lines)
    assert len(lines) == 1 and lines[0].startswith("=> memory: about ") and "64.0 GiB free on this machine" in lines[0]


def test_no_memory_check_warns_and_goes_on(monkeypatch):
    lines = []
    _check(_args("--preset", "paper", "--no-memory-check"), 2**30, monkeypatch, lines=lines)
    assert lines[-1].startswith("warning: BaryNet paper (fp32, RMSprop) at --batch-size 4 --patch-size 128 needs")


@pytest.mark.parametrize("version", [1, 2])
def test_a_cgroup_limit_does_not_count_reclaimable_file_cache_as_used(tmp_path, version):
    """memory.current (and v1's usage) include the page cache of files read, a checkpoint or a data set, which
    the kernel drops before refusing memory; counting it made automatic tiling (and the trainer's memory check)
    think a container was full."""
    gib_ = 2 ** 30
    stat = f"anon {gib_}\ninactive_file {3 * gib_}\nactive_file 0\n" if version == 2 else \
        f"total_rss {gib_}\ntotal_inactive_file {3 * gib_}\n"
    files = {2: {"memory.max": f"{8 * gib_}\n", "memory.current": f"{4 * gib_}\n", "memory.stat": stat},
             1: {"memory/memory.limit_in_bytes": f"{8 * gib_}\n", "memory/memory.usage_in_bytes": f"{4 * gib_}\n",
                 "memory/memory.stat": stat}}[version]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert memory._cgroup_limit(tmp_path) == 7 * gib_  # 8 GiB limit, 1 GiB really used
    (tmp_path / files_stat(version)).unlink()
    assert memory._cgroup_limit(tmp_path) == 4 * gib_  # no memory.stat: usage as it is
    assert memory._cgroup_limit(tmp_path / "none") is None


def files_stat(version: int) -> str:
    return "memory.stat" if version == 2 else "memory/memory.stat"


def test_automatic_tiling_never_chooses_a_tile_its_overlap_leaves_no_step_in():
    """A 128-pixel tile with --tile-overlap 128 failed partway through a run; such tiles are passed over."""
    from net.presets import build_model
    from utils.memory import TILE_SIDES, choose_tile, restore_need
    model = build_model("BaryNet", "tiny")
    budget = restore_need(model, "fp32", 128, 128, 1)  # only the smallest tile fits
    assert choose_tile(model, "fp32", 4000, 4000, budget, 1) == (128, 1)
    assert choose_tile(model, "fp32", 4000, 4000, budget, 1, overlap=128) is None
    roomy = restore_need(model, "fp32", max(TILE_SIDES), max(TILE_SIDES), 1)
    assert choose_tile(model, "fp32", 4000, 4000, roomy, 1, overlap=500)[0] == max(TILE_SIDES)
