"""--tensorboard: read back with TensorBoard's own reader, the event files hold every scalar at every
logged step (the JSON-lines log's steps and values), the preview images, and a run resumed after a
crash continues the curves without a duplicated step; a failing writer only warns; --dry-run and a
missing package write nothing."""
import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from _train_data import make_train_tree, make_val_tree, train_flags
from tensorboard.backend.event_processing import event_accumulator

from net.presets import build_model
from utils.checkpoints import list_checkpoints
from utils.dataset_utils import build_train_dataset
from utils.train import engine
from utils.train.options import get_args_parser
from utils.train.run_log import Console, read_log
from utils.train.tensorboard_log import (
    TB_DIR,
    TensorBoardLog,
    norm_map,
    open_tensorboard,
    preview_crop,
    preview_images,
    preview_sample,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ITERS = 3  # per epoch
DE_TYPE = ("denoise_15", "derain", "dehaze")
ITER_TAGS = {"loss/map", "loss/l1", "loss/transport", "loss/orthogonality", "loss/contrastive", "loss/potential",
             "loss/potentials", "loss/congruence", "train/lr", "lambda/denoise", "lambda/derain", "lambda/dehaze"}
EPOCH_TAGS = {"epoch/map", "epoch/l1", "epoch/transport", "epoch/orthogonality", "epoch/contrastive",
              "epoch/potential", "epoch/potentials", "epoch/congruence", "val/psnr", "val/ssim"}
IMAGE_TAGS = {"preview/degraded_restored_target", "preview/wb_residual_maps"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_train_tree(tmp_path_factory.mktemp("tb_data"), n=2, size=40)


def args_for(data, out: Path, *extra: str):
    flags = train_flags(data, out, de_type=DE_TYPE) + ["--iters-per-epoch", str(ITERS), "--batchSize", "2",
                                                       "--no-check-images", *extra]
    return get_args_parser().parse_args(flags)


def read_events(folder: Path) -> event_accumulator.EventAccumulator:
    everything = {kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE}
    return event_accumulator.EventAccumulator(str(folder), size_guidance=everything).Reload()


def steps(acc, tag: str, kind: str = "scalars") -> list[int]:
    return [e.step for e in getattr(acc, kind.capitalize())(tag)]


@pytest.fixture(scope="module")
def crashed_and_resumed(data, tmp_path_factory):
    """Two epochs of 3 iterations with validation: the first start dies at global step 5 (a NaN, after its
    epoch-1 checkpoint at step 3 and step 4 logged), the second resumes from step 3 and finishes."""
    out = tmp_path_factory.mktemp("tb_run")
    deg, tar = make_val_tree(out, n=1, size=40)
    val = ["--degset", str(deg), "--tarset", str(tar), "--tensorboard", "--nEpochs", "2"]
    with pytest.raises(engine.NonFiniteLossError):
        engine.main(args_for(data, out, *val, "--debug-nan-at", "5"))
    first = read_events(out / "ckpt" / TB_DIR)
    assert steps(first, "loss/map") == [1, 2, 3, 4]  # step 4 was written before the crash
    assert engine.main(args_for(data, out, *val, "--resume", "auto")) == 0
    return out


def test_every_scalar_at_every_logged_step_once_with_the_logs_values(crashed_and_resumed):
    run = crashed_and_resumed / "ckpt"
    acc = read_events(run / TB_DIR)
    records = read_log(run / "log.jsonl")
    iters = {r["global_step"]: r for r in records if r["kind"] == "iter"}
    epochs = {r["global_step"]: r for r in records if r["kind"] == "epoch"}
    assert sorted(iters) == list(range(1, 2 * ITERS + 1)) and sorted(epochs) == [ITERS, 2 * ITERS]

    tags = acc.Tags()
    assert set(tags["scalars"]) == ITER_TAGS | EPOCH_TAGS
    for tag in ITER_TAGS:  # resumed: the crashed start's step 4 is hidden, not doubled
        assert steps(acc, tag) == sorted(iters), tag
    for tag in EPOCH_TAGS:
        assert steps(acc, tag) == sorted(epochs), tag
    for tag, key, source in (("loss/l1", "l1", iters), ("loss/congruence", "congruence", iters),
                             ("train/lr", "lr", iters), ("epoch/transport", "transport", epochs),
                             ("val/psnr", "val_psnr", epochs), ("val/ssim", "val_ssim", epochs)):
        for e in acc.Scalars(tag):  # the resumed run's values, float32 in the event file
            assert e.value == pytest.approx(source[e.step][key], rel=1e-6, abs=1e-12), (tag, e.step)
    lambdas = dict(zip(("denoise", "derain", "dehaze"), next(r for r in records if r["kind"] == "run")["lambdas"]))
    for fam, lam in lambdas.items():
        values = [e.value for e in acc.Scalars(f"lambda/{fam}")]
        assert values == pytest.approx([lam] * len(iters), rel=1e-6), fam
    assert 0 < acc.Scalars("val/ssim")[-1].value <= 1 and acc.Scalars("val/psnr")[-1].value > 5


def test_previews_once_per_epoch(crashed_and_resumed):
    acc = read_events(crashed_and_resumed / "ckpt" / TB_DIR)
    assert IMAGE_TAGS <= set(acc.Tags()["images"])
    for tag in IMAGE_TAGS:
        assert steps(acc, tag, "images") == [ITERS, 2 * ITERS], tag
    grid = acc.Images("preview/degraded_restored_target")[-1]
    assert (grid.height, grid.width) == (40, 3 * 40 + 2 * 2)  # degraded | restored | target, 2-pixel gaps
    maps = acc.Images("preview/wb_residual_maps")[-1]
    assert (maps.height, maps.width) == (40, 2 * 40 + 2)
    for tag in ("preview/wb_pooled", "preview/residual_pooled"):
        assert steps(acc, tag, "histograms") == [ITERS, 2 * ITERS]


def test_fixed_training_sample_without_validation(data):
    dataset = build_train_dataset(list(DE_TYPE), {k: str(v) for k, v in data.items()}, 32, seed=3,
                                  data_file_dir="", check=False, log=lambda msg: None)
    dataset.set_epoch(7)
    deg, tar, what = preview_sample([], dataset)
    assert dataset.epoch == 7 and "training sample 0" in what
    again = preview_sample([], dataset)[0]
    assert deg.shape == tar.shape == (3, 32, 32) and torch.equal(deg, again)  # fixed, whatever the epoch
    torch.manual_seed(0)
    model = build_model("Restormer", "tiny").train()
    images, hists = preview_images(model, deg, tar, torch.device("cpu"), "fp32", wb=False)
    assert set(images) == {"preview/degraded_restored_target"} and not hists
    assert images["preview/degraded_restored_target"].shape == (3, 32, 3 * 32 + 4) and model.training
    preview_images(model.eval(), deg, tar, torch.device("cpu"), "fp32", wb=False)
    assert not model.training  # left in the mode it was in, whichever


class FailingWriter:
    def __init__(self):
        self.calls = 0

    def add_scalar(self, *args):
        self.calls += 1
        raise OSError(28, "No space left on device")

    def close(self):
        pass


def test_a_failing_writer_warns_once_and_stops_writing(capsys):
    writer = FailingWriter()
    board = TensorBoardLog(Path("tb"), Console(), writer_factory=lambda folder, purge: writer)
    record = {"kind": "iter", "global_step": 1, "lr": 1e-4, "map": 1.0, "l1": 0.1}
    board.write(record)
    board.write(record | {"global_step": 2})
    board.flush()
    board.close()
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "No space left on device" in err and "training goes on" in err
    assert writer.calls == 1 and not board.enabled


def test_dry_run_and_a_missing_package_write_nothing(data, tmp_path, monkeypatch, capsys):
    assert engine.run_cli(args_for(data, tmp_path, "--tensorboard", "--dry-run")) == 0
    assert not (tmp_path / "ckpt").exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    capsys.readouterr()
    assert engine.run_cli(args_for(data, tmp_path, "--tensorboard")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --tensorboard") and "pip install tensorboard" in err[0]
    assert not (tmp_path / "ckpt").exists()


def test_checkpoints_do_not_depend_on_tensorboard(data, crashed_and_resumed, tmp_path):
    """The previews leave training alone: the same run without --tensorboard ends with the same weights."""
    out = crashed_and_resumed
    assert engine.main(args_for(data, tmp_path, "--degset", str(out / "val" / "input"), "--tarset",
                                str(out / "val" / "target"), "--nEpochs", "2")) == 0
    assert not (tmp_path / "ckpt" / TB_DIR).exists()
    a = torch.load(list_checkpoints(out / "ckpt")[-1], weights_only=True)
    b = torch.load(list_checkpoints(tmp_path / "ckpt")[-1], weights_only=True)
    for key in ("model", "potentials"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    assert json.loads((tmp_path / "ckpt" / "latest").read_text())["epochs_done"] == 2


def test_resuming_another_folders_checkpoint_carries_its_curves_over(data, crashed_and_resumed, tmp_path):
    """Resumed into another --output-dir, a run's curves start at step 1, not at the checkpoint's step."""
    source = crashed_and_resumed / "ckpt"
    out = tmp_path / "elsewhere"
    val = ["--degset", str(crashed_and_resumed / "val" / "input"), "--tarset", str(crashed_and_resumed / "val" /
                                                                                     "target")]
    assert engine.main(args_for(data, out, *val, "--tensorboard", "--nEpochs", "2", "--resume",
                                str(source / "epoch_001.pth"))) == 0
    acc = read_events(out / "ckpt" / TB_DIR)
    assert steps(acc, "loss/map") == list(range(1, 2 * ITERS + 1))
    assert steps(acc, "epoch/map") == [ITERS, 2 * ITERS]
    before = {r["global_step"]: r["l1"] for r in read_log(source / "log.jsonl") if r["kind"] == "iter"}
    for e in acc.Scalars("loss/l1")[:ITERS]:  # the source run's first epoch, carried over
        assert e.value == pytest.approx(before[e.step], rel=1e-6)
    assert steps(read_events(source / TB_DIR), "loss/map") == list(range(1, 2 * ITERS + 1))  # left as it was


class RecordingWriter:
    """What a SummaryWriter was asked, in order."""

    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, step):
        self.calls.append(("scalar", tag, step))

    def add_image(self, tag, img, step, dataformats):
        self.calls.append(("image", tag, step))

    def add_histogram(self, tag, values, step):
        self.calls.append(("histogram", tag, step))

    def flush(self):
        self.calls.append(("flush",))

    def close(self):
        self.calls.append(("close",))


def test_an_epochs_scalars_are_flushed_at_once_and_a_closed_board_writes_nothing(capsys):
    """The event file holds each epoch as soon as it is logged (not up to FLUSH_SECS later, or never after a
    kill); after close, a write is silently nothing."""
    writer = RecordingWriter()
    board = TensorBoardLog(Path("tb"), Console(), writer_factory=lambda folder, purge: writer)
    board.write({"kind": "iter", "global_step": 1, "l1": 0.5})
    assert writer.calls == [("scalar", "loss/l1", 1)]
    board.write({"kind": "epoch", "epoch": 1, "global_step": 3, "l1": 0.4, "val_psnr": 25.0})
    assert writer.calls[1:] == [("scalar", "epoch/l1", 3), ("scalar", "val/psnr", 3), ("flush",)]
    board.close()
    board.write({"kind": "iter", "global_step": 4, "l1": 0.3})
    assert writer.calls[-1] == ("close",) and len(writer.calls) == 5 and capsys.readouterr().err == ""


def test_other_ranks_and_runs_without_the_flag_open_no_event_file(tmp_path):
    args = argparse.Namespace(tensorboard=True, backbone="Restormer")
    board = open_tensorboard(args, tmp_path, False, 0, None, [], is_main=False, console=Console(False))
    assert not board.enabled
    args.tensorboard = False
    assert not open_tensorboard(args, tmp_path, False, 0, None, [], is_main=True, console=Console(False)).enabled
    assert list(tmp_path.iterdir()) == []


def test_the_preview_is_the_images_centre_in_multiples_of_8():
    img = torch.arange(20 * 30, dtype=torch.float32).reshape(1, 20, 30)
    assert torch.equal(preview_crop(img, side=12), img[:, 6:14, 11:19])  # 12 -> 8 a side, centred
    assert torch.equal(preview_crop(img), img[:, 2:18, 3:27])  # smaller than the side: 16 x 24
    with pytest.raises(ValueError, match="too small"):
        preview_crop(img[:, :7])


class BrokenModel(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("CUDA out of memory")


def test_a_failing_preview_warns_once_and_the_scalars_go_on(capsys):
    writer = RecordingWriter()
    sample = (torch.rand(3, 8, 8), torch.rand(3, 8, 8), "validation pair a.png")
    board = TensorBoardLog(Path("tb"), Console(), sample=sample, writer_factory=lambda folder, purge: writer)
    for step in (3, 6):
        board.preview(BrokenModel(), step, torch.device("cpu"), "fp32")
    board.write({"kind": "iter", "global_step": 7, "l1": 0.5})
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "the preview of validation pair a.png failed" in err
    assert board.enabled and writer.calls == [("scalar", "loss/l1", 7)]


def test_a_latent_norm_map_spans_the_colour_map_from_its_own_minimum_to_its_maximum():
    import matplotlib

    latent = torch.zeros(2, 2, 2)
    latent[0] = torch.tensor([[3.0, 4.0], [4.0, 5.0]])  # norms 3 to 5, far from 0
    rgb = norm_map(latent, (2, 2))
    viridis = matplotlib.colormaps["viridis"]
    for (i, j), at in (((0, 0), 0.0), ((0, 1), 0.5), ((1, 1), 1.0)):
        assert torch.allclose(rgb[:, i, j], torch.tensor(viridis(at)[:3], dtype=torch.float32)), (i, j)


def test_a_resume_after_starts_without_the_flag_shows_the_logs_values_not_an_abandoned_timelines(tmp_path):
    """A run with --tensorboard to step 8, resumed without it from step 4 (another batch size: other losses) to step
    8, then with it again: TensorBoard showed the abandoned timeline's steps 5 to 8, which log.jsonl no longer has.
    Now it hides them and writes the log's own records of those steps."""
    first = TensorBoardLog(tmp_path / TB_DIR, Console(False))
    for step in range(1, 9):
        first.write({"kind": "iter", "global_step": step, "l1": 1.0})
    first.close()
    starts = [(0, True, 1.0), (4, False, 2.0)]
    log = [r for start, board, l1 in starts for r in
           [{"kind": "run", "global_step": start, "tensorboard": board}]
           + [{"kind": "iter", "global_step": s, "l1": l1} for s in range(start + 1, start + 5)]]
    log.append({"kind": "run", "global_step": 8, "tensorboard": True})  # this start's
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    args = argparse.Namespace(tensorboard=True, backbone="Restormer")
    board = open_tensorboard(args, tmp_path, True, 8, None, [], is_main=True, console=Console(False))
    board.write({"kind": "iter", "global_step": 9, "l1": 3.0})
    board.close()
    l1 = read_events(tmp_path / TB_DIR).Scalars("loss/l1")
    assert [(e.step, e.value) for e in l1] == [(s, 1.0) for s in range(1, 5)] + [(s, 2.0) for s in range(5, 9)] + [
        (9, 3.0)]


def test_records_written_again_from_the_log_carry_the_lambdas_of_the_start_that_trained_them():
    from utils.train.tensorboard_log import records_to_replay
    log = [{"kind": "run", "global_step": 0, "lambdas": [0.5, 0.5]}, {"kind": "iter", "global_step": 1},
           {"kind": "run", "global_step": 1, "lambdas": [0.25, 0.75]}, {"kind": "iter", "global_step": 2},
           {"kind": "epoch", "global_step": 2}, {"kind": "iter", "global_step": 3}]
    replayed = records_to_replay(log, 0, 2, ("derain", "dehaze"))
    later = {"derain": 0.25, "dehaze": 0.75}
    assert [(r["global_step"], lambdas) for r, lambdas in replayed] == [
        (1, {"derain": 0.5, "dehaze": 0.5}), (2, later), (2, later)]
    assert [lambdas for _, lambdas in records_to_replay(log, 0, 2, ())] == [{}, {}, {}]


def test_an_epoch_record_written_on_resume_comes_with_its_preview(data, tmp_path):
    """A run stopped between an epoch's checkpoint and its record (during validation) had written neither the
    epoch's scalars nor its preview; the resumed run wrote the scalars from the checkpoint, but no preview."""
    deg, tar = make_val_tree(tmp_path, n=1, size=40)
    val = ["--degset", str(deg), "--tarset", str(tar), "--tensorboard", "--nEpochs", "1"]
    assert engine.main(args_for(data, tmp_path, *val)) == 0
    run = tmp_path / "ckpt"
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["kind"] == "epoch"
    (run / "log.jsonl").write_text("".join(lines[:-1]))  # as a kill during validation leaves the log
    for events in (run / TB_DIR).iterdir():  # and TensorBoard: nothing of the epoch's end
        events.unlink()
    assert engine.main(args_for(data, tmp_path, *val, "--resume", "auto")) == 0
    acc = read_events(run / TB_DIR)
    assert steps(acc, "val/psnr") == [ITERS] and steps(acc, "preview/degraded_restored_target", "images") == [ITERS]


def _starts_log(starts, tail=b""):
    """A log of starts, each ``(global_step, tensorboard)`` (None: a record without the key) with three iteration
    records and an epoch's after it, ending in ``tail``."""
    import json
    lines = []
    for i, (step, board) in enumerate(starts):
        run = {"kind": "run", "global_step": step, "lambdas": [0.1 * i, 1 - 0.1 * i]}
        if board is not None:
            run["tensorboard"] = board
        lines.append(json.dumps(run))
        ends = starts[i + 1][0] if i + 1 < len(starts) else step + 3
        for s in range(step + 1, ends + 1):
            lines.append(json.dumps({"kind": "iter", "global_step": s, "l1": s / 10}))
        lines.append(json.dumps({"kind": "epoch", "global_step": ends, "l1": 0.5}))
    return "\n".join(lines).encode() + b"\n" + tail


BOARDED_LOGS = {  # starts with and without --tensorboard, and what a log's lines can hold besides records
    "every start with it": _starts_log([(0, True), (4, True), (9, True)]),
    "the last without it": _starts_log([(0, True), (4, True), (9, False), (12, True)]),
    "two without it": _starts_log([(0, True), (4, False), (9, False), (12, True)]),
    "none with it before": _starts_log([(0, False), (4, False), (12, True)]),
    "one start": _starts_log([(0, True)]),
    "records before the key": _starts_log([(0, None), (4, False), (9, None), (12, False), (15, True)]),
    "torn and blank lines, stray bytes": _starts_log([(0, True), (4, False)], b'{"kind": "iter", "glo\n\n\xff\xfe\n')
    + _starts_log([(7, True)]),
    "a run kind spelled with an escape": _starts_log([(0, False)])
    + b'{"kind": "r\\u0075n", "global_step": 3, "lambdas": [0.3, 0.7]}\n' + _starts_log([(4, False), (8, True)]),
    "carriage returns": _starts_log([(0, True)]) + b'{"kind": "run", "global_step": 3}\r{"kind": "iter", '
    b'"global_step": 4}\r\n' + _starts_log([(4, False), (8, True)]),
    "a start's global step not a number": _starts_log([(0, True), (4, False)])
    + b'{"kind": "run", "global_step": "7", "tensorboard": true}\n' + _starts_log([(7, True)]),
}


@pytest.mark.parametrize("data", BOARDED_LOGS.values(), ids=list(BOARDED_LOGS))
def test_a_resume_reads_the_log_from_its_last_start_with_tensorboard_and_writes_what_the_whole_log_gave(
        tmp_path, monkeypatch, data):
    """A resume with --tensorboard read the whole log into records (some 15 s at the paper's 300 MB) to find what
    the event files miss; it reads the records of the starts without it since the last one with it now (none after a
    start with it, the usual resume), and finds the same steps to write again, with the same lambdas. Small blocks
    here, so that the read from the end crosses them."""
    from utils.train import run_log
    from utils.train.tensorboard_log import boarded_until, records_to_replay, replay_start
    real = run_log.lines_from_end
    monkeypatch.setattr("utils.train.tensorboard_log.lines_from_end", lambda path, block=0: real(path, 17))
    path = tmp_path / "log.jsonl"
    path.write_bytes(data)
    start = replay_start(path)
    whole, part = read_log(path), (read_log(path, start) if start is not None else [])
    step = [r for r in whole if r.get("kind") == "run"][-1]["global_step"]
    for at in {step, step + 1, 0}:
        until = boarded_until(whole, at)
        assert boarded_until(part, at) == until
        assert (records_to_replay(part, until, at, ("derain", "dehaze"))
                == records_to_replay(whole, until, at, ("derain", "dehaze")))
    starts = [r for r in whole if r.get("kind") == "run" and isinstance(r.get("global_step"), int)]
    assert (start is None) == (len(starts) < 2 or bool(starts[-2].get("tensorboard", True)))  # the usual: none read
