"""The trainer fails promptly and keeps what the user has: loader-worker errors end the run (no hang),
with one ``error:`` line naming the file, and the last good checkpoint untouched."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _processes import HANG, REPO, TORCHRUN, free_port, run_script
from _train_data import _write, damage_middle, make_train_tree, make_val_tree, smooth_image, train_flags

from utils.errors import UserError
from utils.eval.outputs import OutputFolderError
from utils.output_lock import OutputFolderBusy
from utils.train import engine
from utils.train.options import get_args_parser

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def corrupt_rainy(data: dict[str, Path]) -> list[Path]:
    """Overwrite every rainy image's pixel data, keeping its header and its ending: the start-up check (which
    reads headers and endings) passes and decoding fails inside a loader worker."""
    files = sorted((data["derain"] / "rainy").glob("*.png"))
    for f in files:
        b = f.read_bytes()
        f.write_bytes(b[:60] + bytes(len(b) - 72) + b[-12:])
    return files


@pytest.fixture
def data(tmp_path):
    return make_train_tree(tmp_path / "data")


def test_a_failing_loader_worker_ends_the_run_and_keeps_the_last_checkpoint(data, tmp_path):
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "3"]
    assert engine.main(get_args_parser().parse_args([*flags, "--nEpochs", "1"])) == 0
    ckpt = tmp_path / "ckpt" / "epoch_001.pth"
    kept, latest = ckpt.read_bytes(), (tmp_path / "ckpt" / "latest").read_bytes()

    bad = corrupt_rainy(data)
    second = run_script([sys.executable, "trainer_bary.py", *flags, "--nEpochs", "2", "--resume", "auto",
                         "--workers", "2"])
    assert second.returncode == 1
    # libpng's own "libpng error: ..." lines, written from the loader workers in two writes, landed around and
    # inside the trainer's error line (a clean clone failed on that): they are now the line's detail
    errors = [line for line in second.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and errors[0].startswith("error: cannot decode image") and \
        any(str(f) in errors[0] for f in bad) and "(libpng error: " in errors[0], second.stderr
    assert errors[0].endswith("Or leave such files out: --skip-bad-files (with --resume auto to go on from the "
                              "newest checkpoint)")
    assert "Traceback" not in second.stderr and "DataLoader worker" not in second.stderr
    assert ckpt.read_bytes() == kept and (tmp_path / "ckpt" / "latest").read_bytes() == latest
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pth")) == ["epoch_001.pth"]


def test_a_truncated_training_image_is_refused_at_the_start_not_mid_epoch(data, tmp_path, capsys):
    """A file cut short keeps a valid header: the start-up check, which read headers only, passed it, and the
    run ended mid-epoch when a loader worker met it, losing the iterations since the last checkpoint. With
    --skip-bad-files the file is left out with the trainer's framed warning on stderr (it was a plain line among
    the start-up notes on stdout)."""
    cut = sorted((data["derain"] / "rainy").glob("*.png"))[1]
    cut.write_bytes(cut.read_bytes()[:-40])
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "2", "--nEpochs", "1"]
    with pytest.raises(UserError, match=rf"{cut}.* is cut short.*--skip-bad-files"):
        engine.main(get_args_parser().parse_args(flags))
    assert not (tmp_path / "ckpt").exists()
    capsys.readouterr()
    assert engine.main(get_args_parser().parse_args([*flags, "--skip-bad-files"])) == 0
    said = capsys.readouterr()
    assert "!! WARNING: skipping 1 training image (--skip-bad-files)" in said.err
    assert f"{cut} is cut short" in said.err and "skipping" not in said.out


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not available")
def test_a_failing_loader_worker_ends_a_ddp_run(data, tmp_path):
    corrupt_rainy(data)
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "3", "--nEpochs", "1", "--workers", "2"]
    done = run_script([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                       "trainer_bary_ddp.py", *flags])
    assert done.returncode != 0
    assert re.search(r"^error: cannot decode image [^\n]*rainy", done.stderr, flags=re.M), done.stderr
    assert not re.search(r"^libpng", done.stderr, flags=re.M), done.stderr
    assert not list((tmp_path / "ckpt").glob("*.pth"))


def test_a_second_trainer_in_a_busy_output_folder_is_refused_until_the_holder_dies(data, tmp_path):
    """Also with --dry-run, which said the run "would train" into the folder the real run was then refused."""
    flags = train_flags(data, tmp_path) + ["--nEpochs", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first = subprocess.Popen([sys.executable, "trainer_bary.py", *flags, "--iters-per-epoch", "100000"], cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "ckpt" / "log.jsonl"
    try:
        deadline = time.monotonic() + HANG
        while not (log.is_file() and '"kind": "iter"' in log.read_text()) and time.monotonic() < deadline:
            assert first.poll() is None, "the first trainer ended early"
            time.sleep(0.05)
        before = log.read_bytes()
        with pytest.raises(OutputFolderBusy) as refused:
            engine.main(get_args_parser().parse_args([*flags, "--iters-per-epoch", "1"]))
        assert f"--output-dir {tmp_path / 'ckpt'} is in use by another trainer (PID {first.pid} " in str(refused.value)
        with pytest.raises(OutputFolderBusy, match=f"PID {first.pid} "):  # --dry-run said the run "would train"
            engine.main(get_args_parser().parse_args([*flags, "--iters-per-epoch", "1", "--dry-run"]))
        assert log.read_bytes().startswith(before)  # the first run's log is still its own
        assert not list((tmp_path / "ckpt").glob("log.before-*"))
    finally:
        first.kill()  # as kill -9: the lock file stays behind, the lock itself goes with the process
        first.wait()
    assert engine.main(get_args_parser().parse_args([*flags, "--iters-per-epoch", "1"])) == 0
    assert (tmp_path / "ckpt" / "epoch_001.pth").is_file()


def test_trainer_failures_are_one_error_line_and_debug_shows_the_traceback(data, tmp_path, capsys, monkeypatch):
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "1", "--nEpochs", "1"]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    not_a_folder = [*flags, "--output-dir", str(blocker / "ckpt")]
    assert engine.run_cli(get_args_parser().parse_args(not_a_folder)) == 2  # a flag to change: exit status 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "a file, not a folder, is in the way" in err and str(blocker) in err
    assert "Traceback" not in err
    with pytest.raises(OutputFolderError):
        engine.run_cli(get_args_parser().parse_args([*not_a_folder, "--debug"]))

    import shutil

    from utils import files
    monkeypatch.setattr(files.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(2**40, 2**40, 4096))
    monkeypatch.setattr(engine, "check_checkpoint_room", lambda *a: None)  # the space was taken after the start
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "error: disk full: writing epoch_001.pth to " in err, err
    assert "needs" in err and "bytes" in err and "Traceback" not in err
    assert not list((tmp_path / "ckpt").glob("*.pth")) and not list((tmp_path / "ckpt").glob(".*.tmp"))


def test_a_save_refused_by_its_folder_names_the_checkpoint_and_the_way_on(data, tmp_path, capsys, monkeypatch):
    """A run folder made immutable (chattr +i) under a running training: the error named the hidden temporary
    (".epoch_002.pth.<pid>.<random>.tmp") and gave no way on. Now it names the checkpoint, says the earlier ones
    are as they were, and how to continue."""
    import tempfile

    from utils import files
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "1", "--nEpochs", "2"]
    mkstemp = tempfile.mkstemp

    def refusing(prefix="", suffix="", dir=None, **kw):
        if prefix.startswith(".epoch_002.pth."):
            raise PermissionError(1, "Operation not permitted", os.path.join(dir, f"{prefix}abcd1234{suffix}"))
        return mkstemp(prefix=prefix, suffix=suffix, dir=dir, **kw)
    monkeypatch.setattr(files.tempfile, "mkstemp", refusing)
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    ckpt = tmp_path / "ckpt"
    assert err == [f"error: permission denied: {ckpt / 'epoch_002.pth'} — choose a folder you can write to, or fix "
                   f"its permissions. The checkpoint of epoch 2, iteration 1 was not saved; the checkpoints already "
                   f"in {ckpt} and its latest are as they were: fix that, then continue with --resume auto (the "
                   f"iterations since the last checkpoint are trained again)"], err
    assert sorted(p.name for p in ckpt.glob("*.pth")) == ["epoch_001.pth"]


def test_a_validation_failure_keeps_the_epochs_checkpoint(data, tmp_path, monkeypatch):
    """Validation ran before the epoch's checkpoint was written, so a bad validation pair (found only when read,
    after a whole epoch) or an out-of-memory there lost the epoch's training. A pair of two sizes is now refused
    before training; a failure in validation itself (here a stand-in one) still keeps the epoch's checkpoint."""
    from utils.data.image_io import write_image
    deg, tar = tmp_path / "val" / "input", tmp_path / "val" / "target"
    write_image(deg / "a.png", np.zeros((40, 40, 3), np.uint8))
    write_image(tar / "a.png", np.zeros((48, 40, 3), np.uint8))  # paired by name, sizes disagree
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "1", "--nEpochs", "1", "--degset", str(deg),
                                           "--tarset", str(tar)]
    with pytest.raises(UserError, match=r"cannot be used .*a.png is 40x40 but its target .*a.png is 48x40"):
        engine.main(get_args_parser().parse_args(flags))
    assert not (tmp_path / "ckpt").exists()
    write_image(tar / "a.png", np.zeros((40, 40, 3), np.uint8))

    def failing(*args, **kwargs):
        raise UserError("validation failed")
    monkeypatch.setattr(engine, "evaluate", failing)
    with pytest.raises(UserError, match="validation failed"):
        engine.main(get_args_parser().parse_args(flags))
    assert (tmp_path / "ckpt" / "epoch_001.pth").is_file()


def test_a_figs_dir_that_cannot_be_a_folder_is_refused_before_training(data, tmp_path):
    """--figs-dir naming a file ended the run with a FileExistsError traceback after its first epoch."""
    (tmp_path / "a_file").write_text("mine")
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "1", "--nEpochs", "1"]
    flags[flags.index("--figs-dir") + 1] = str(tmp_path / "a_file")
    with pytest.raises(UserError, match="--figs-dir .*a_file: a file, not a folder, is in the way"):
        engine.main(get_args_parser().parse_args(flags))
    assert not (tmp_path / "ckpt").exists() and (tmp_path / "a_file").read_text() == "mine"


def test_a_lock_file_removed_by_its_releasing_holder_is_never_held_twice(tmp_path, monkeypatch):
    """A run that made the folder removes it (and its .lock) when it wrote nothing; a second run that had
    opened that .lock before got its lock on the removed file, and a third then locked the new one too."""
    from utils import output_lock
    folder = tmp_path / "run"
    first = output_lock.OutputLock(folder).acquire()
    stale = os.open(folder / output_lock.LOCK_NAME, os.O_RDWR)  # the second run opened it in the meantime
    first.release()
    assert not folder.exists()
    real_open, handed = os.open, []

    def open_stale_first(path, flags, mode=0o777, **kw):
        if str(path).endswith(output_lock.LOCK_NAME) and not handed:
            handed.append(path)
            return stale
        return real_open(path, flags, mode, **kw)
    monkeypatch.setattr(output_lock.os, "open", open_stale_first)
    second = output_lock.OutputLock(folder).acquire()
    monkeypatch.undo()
    assert handed and (folder / output_lock.LOCK_NAME).is_file()
    with pytest.raises(OutputFolderBusy):
        output_lock.OutputLock(folder).acquire()  # the third run: the second holds the file that is there
    second.release()
    folder.mkdir(exist_ok=True)
    lock = output_lock.OutputLock(tmp_path / "gone").acquire()
    import shutil
    shutil.rmtree(tmp_path / "gone")  # the folder removed during the run: release still unlocks, raises nothing
    lock.release()


def test_a_non_finite_validation_output_skips_the_score_and_training_goes_on(data, tmp_path, monkeypatch, capsys):
    """The tester's new refusal of NaN/inf outputs, met in the trainer's validation, would have ended a run that
    trains fine (a half-precision overflow on a full-size image); it skips that epoch's score instead."""
    from utils.data.image_io import write_image
    from utils.eval import protocol
    deg, tar = tmp_path / "val" / "input", tmp_path / "val" / "target"
    write_image(deg / "a.png", np.full((40, 40, 3), 90, np.uint8))
    write_image(tar / "a.png", np.full((40, 40, 3), 100, np.uint8))
    real = protocol.restore
    monkeypatch.setattr(protocol, "restore", lambda *a, **k: real(*a, **k) * float("nan"))
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "1", "--nEpochs", "2", "--degset", str(deg),
                                           "--tarset", str(tar)]
    assert engine.main(get_args_parser().parse_args(flags)) == 0
    assert capsys.readouterr().err.count("validation skipped this epoch") == 2
    assert (tmp_path / "ckpt" / "epoch_002.pth").is_file()


def test_a_broken_link_as_an_output_folder_says_so(tmp_path):
    """A link to an unmounted disk was called 'a file, not a folder, is in the way', inviting its deletion."""
    from utils.eval.outputs import check_writable_folder
    (tmp_path / "results").symlink_to(tmp_path / "unmounted" / "disk")
    with pytest.raises(OutputFolderError, match=r"the link .*results points to .*disk, which does not exist"):
        check_writable_folder(tmp_path / "results" / "run", "--save")


def test_a_finished_run_leaves_no_lock_file(tmp_path):
    """Every --save and --output-dir kept a hidden .lock after its run, the user's own folders included."""
    from utils.output_lock import LOCK_NAME, OutputLock
    (tmp_path / "mine").mkdir()
    with OutputLock(tmp_path / "mine", "--save", "tester"):
        (tmp_path / "mine" / "restored.png").write_bytes(b"png")
        assert (tmp_path / "mine" / LOCK_NAME).is_file()
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["restored.png"]
    with OutputLock(tmp_path / "new"):
        pass  # a run that wrote nothing in a folder it made: no folder left
    assert not (tmp_path / "new").exists()
    lock = OutputLock(tmp_path / "mine").acquire()
    (tmp_path / "mine" / LOCK_NAME).unlink()  # removed by hand, and another run locked a new file there
    other = OutputLock(tmp_path / "mine").acquire()
    lock.release()
    assert (tmp_path / "mine" / LOCK_NAME).is_file()  # the other holder's file is not ours to remove
    other.release()
    assert not (tmp_path / "mine" / LOCK_NAME).exists()


def test_a_busy_folder_names_what_holds_it(tmp_path):
    """A trainer refused an --output-dir that a tester's --save held said it was "in use by another trainer"."""
    from utils.output_lock import LOCK_NAME, OutputLock
    with OutputLock(tmp_path / "o", "--save", "tester"):
        with pytest.raises(OutputFolderBusy, match=r"--output-dir .*/o is in use by a tester \(PID \d+ on "):
            OutputLock(tmp_path / "o").acquire()
        with pytest.raises(OutputFolderBusy, match=r"--save .*/o is in use by another tester \(PID \d+ on "):
            OutputLock(tmp_path / "o", "--save", "tester").acquire()
    with OutputLock(tmp_path / "old"):
        (tmp_path / "old" / LOCK_NAME).write_text("PID 7 on elsewhere\n")  # as a lock written before roles
        with pytest.raises(OutputFolderBusy, match=r"is in use by another run \(PID 7 on elsewhere\)"):
            OutputLock(tmp_path / "old").acquire()


def test_the_lock_file_is_removed_while_still_held(tmp_path, monkeypatch):
    """A releasing run removes its .lock before it unlocks: a run that opens that file meanwhile is refused, never
    given a lock on a file about to vanish (beside which a third run would lock a new one: two writers)."""
    from utils.output_lock import LOCK_NAME, OutputLock
    real_unlink, during = Path.unlink, []

    def unlink(path, *args, **kwargs):
        if path.name == LOCK_NAME:
            try:
                during.append(OutputLock(tmp_path / "o").acquire())
            except OutputFolderBusy as exc:
                during.append(exc)
        real_unlink(path, *args, **kwargs)
    lock = OutputLock(tmp_path / "o").acquire()
    monkeypatch.setattr(Path, "unlink", unlink)
    lock.release()
    monkeypatch.undo()
    for held in during:
        if isinstance(held, OutputLock):
            held.release()
    assert len(during) == 1 and isinstance(during[0], OutputFolderBusy)
    OutputLock(tmp_path / "o").acquire().release()


def test_a_users_empty_folder_stays_when_a_run_in_it_ends(tmp_path):
    """A run removes only a folder it made itself: an empty --output-dir the user made before it stays."""
    from utils.output_lock import OutputLock
    (tmp_path / "mine").mkdir()
    with OutputLock(tmp_path / "mine"):
        pass
    assert (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []


def test_unpaired_validation_images_name_the_trainers_own_fixes(data, tmp_path):
    """The trainer's validation pairing error ended "pass --skip-unpaired", a flag only the tester has."""
    val = tmp_path / "val"
    for folder, name in (("in", "rain-1.png"), ("in", "rain-2.png"), ("gt", "norain-1.png")):
        (val / folder).mkdir(parents=True, exist_ok=True)
        (val / folder / name).write_bytes(sorted((data["derain"] / "gt").glob("*.png"))[0].read_bytes())
    flags = train_flags(data, tmp_path) + ["--degset", str(val / "in"), "--tarset", str(val / "gt"), "--dry-run"]
    with pytest.raises(UserError) as err:
        engine.main(get_args_parser().parse_args(flags))
    assert "rain-2.png" in str(err.value) and "--skip-unpaired" not in str(err.value)
    assert "--degset '' --tarset ''" in str(err.value)


def test_a_damaged_validation_image_is_refused_before_training_with_fixes_that_work(data, tmp_path, capsys):
    """A complete validation PNG with bytes flipped in its middle passed the start-up check: the first
    validation met it after a whole epoch, and every --resume stopped there again. Now every validation image is
    decoded at the start; the one error line names the file and its pair, and each fix it gives works."""
    deg, tar = make_val_tree(tmp_path, n=3)
    bad = damage_middle(tar / "norain-2.png")
    flags = train_flags(data, tmp_path) + ["--dry-run"]
    val = ["--degset", str(deg), "--tarset", str(tar)]
    assert engine.run_cli(get_args_parser().parse_args(flags + val)) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: 1 validation image cannot be used") and f"cannot decode image {bad}" in line, line
    assert f"(its pair: {deg / 'rain-2.png'})" in line and "libpng error: bad adaptive filter value" in line
    assert line.endswith("Replace it, remove it and its pair, pass --skip-bad-files to validate without the pair, "
                         "or pass --degset '' --tarset '' to train without validation"), line
    val_off = ["--degset", "", "--tarset", ""]
    assert engine.run_cli(get_args_parser().parse_args(flags + val_off)) == 0  # without validation
    out = capsys.readouterr().out
    assert "dry run" in out and "validation:" not in out
    bad.unlink()
    (deg / "rain-2.png").unlink()  # and its pair
    assert engine.run_cli(get_args_parser().parse_args(flags + val)) == 0
    assert "=> validation: 2 pairs from" in capsys.readouterr().out
    # a validation folder that is not there is named by its flag (it was "degraded folder does not exist: ...")
    assert engine.run_cli(get_args_parser().parse_args(flags + ["--degset", str(tmp_path / "nope"), "--tarset",
                                                                str(tar)])) == 1
    assert capsys.readouterr().err.strip() == (f"error: --degset {tmp_path / 'nope'}: no such folder (the degraded "
                                               f"images' folder); check the path")


def test_a_validation_pair_too_small_to_score_is_refused_before_training(data, tmp_path, capsys):
    """A 7x7 validation pair passed the start-up check, and the first validation stopped the run on it after a
    whole epoch ("0x0 after the crop to multiples of 8 is too small to evaluate"), as every --resume then would.
    Now it is refused at the start, named with its pair and the fixes; 8x8, the least the scoring takes, trains."""
    deg, tar = make_val_tree(tmp_path, n=2)
    for f in (deg / "rain-2.png", tar / "norain-2.png"):
        _write(f, smooth_image(np.random.default_rng(0), 7))
    flags = train_flags(data, tmp_path) + ["--degset", str(deg), "--tarset", str(tar), "--dry-run"]
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: 1 validation image cannot be used") and \
        f"{deg / 'rain-2.png'} is 7x7 (height x width), too small to score: validation needs at least 8x8" in line, line
    assert f"(its pair: {tar / 'norain-2.png'})" in line and "--skip-bad-files" in line, line
    for f in (deg / "rain-2.png", tar / "norain-2.png"):
        _write(f, smooth_image(np.random.default_rng(0), 8))
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 0
    assert "=> validation: 2 pairs from" in capsys.readouterr().out


def test_skip_bad_files_leaves_unpaired_and_damaged_validation_pairs_out(data, tmp_path, capsys):
    """The trainer's unpaired-validation error pointed at --skip-bad-files (README), which left out bad training
    files only: the validation set still stopped the run. Now it leaves out unpaired degraded images and pairs
    that do not decode as well, with one warning naming them, and the epoch validates on the rest."""
    deg, tar = make_val_tree(tmp_path, n=3)
    bad = damage_middle(tar / "norain-2.png")
    (deg / "rain-9.png").write_bytes((deg / "rain-1.png").read_bytes())  # no norain-9.png
    flags = train_flags(data, tmp_path) + ["--degset", str(deg), "--tarset", str(tar), "--iters-per-epoch", "1",
                                           "--nEpochs", "1"]
    assert engine.run_cli(get_args_parser().parse_args(flags + ["--dry-run"])) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "rain-9.png" in line and "has no target of the same name" in line and "--skip-bad-files" in line, line
    assert engine.run_cli(get_args_parser().parse_args(flags + ["--skip-bad-files"])) == 0
    said = capsys.readouterr()
    [warning] = [w for w in said.err.splitlines() if "WARNING" in w]
    assert f"validating without 2 of the 4 degraded images of {deg} (--skip-bad-files):" in warning, warning
    assert "rain-9.png has no target of the same name" in warning and f"cannot decode image {bad}" in warning
    assert warning.endswith("; validating with 2 pairs"), warning
    assert "=> validation: 2 pairs from" in said.out and "validation PSNR" in said.out
    (deg / "rain-9.png").unlink()
    for f in (deg / "rain-1.png", deg / "rain-3.png"):
        damage_middle(f)
    assert engine.run_cli(get_args_parser().parse_args(flags + ["--skip-bad-files", "--dry-run"])) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: no validation pair of {deg} / {tar} can be used (--skip-bad-files left all 3 "
                           f"out)") and line.endswith("--degset '' --tarset '' to train without validation"), line


def test_every_rank_stops_alike_on_rank_0s_decoding_of_the_validation_images(tmp_path, monkeypatch):
    """Rank 0 decodes the validation images and every rank stops with its error, said once by rank 0: ranks that
    judged the files on their own could differ, and a rank stopping alone would stop without a word."""
    from utils.data.pairing import match_pairs
    from utils.train import validation_set
    from utils.train.distributed import DistInfo
    deg, tar = make_val_tree(tmp_path, n=2)
    damage_middle(deg / "rain-1.png")
    pairs, _ = match_pairs(deg, tar)
    sent = []
    monkeypatch.setattr(validation_set, "broadcast_text", lambda text, info: sent.append(text) or text)
    with pytest.raises(UserError) as rank0:
        validation_set.check_validation_images(pairs, DistInfo(rank=0, world_size=2))
    monkeypatch.setattr(validation_set, "broadcast_text", lambda text, info: sent[0])
    monkeypatch.setattr(validation_set, "decode_files", lambda *a, **k: pytest.fail("only rank 0 decodes"))
    with pytest.raises(UserError) as rank1:
        validation_set.check_validation_images(pairs, DistInfo(rank=1, world_size=2))
    assert str(rank1.value) == str(rank0.value) and f"{deg / 'rain-1.png'}" in str(rank0.value)
    assert engine.met_by_every_rank(rank0.value) and engine.met_by_every_rank(rank1.value)
    monkeypatch.setattr(validation_set, "broadcast_text", lambda text, info: "{}")  # rank 0 found nothing wrong
    validation_set.check_validation_images(pairs, DistInfo(rank=1, world_size=2))


def test_a_validation_folder_without_its_partner_is_refused(data, tmp_path, capsys):
    """--degset DIR --tarset "" (an unset variable) switched validation off without a word; with --tarset left
    out the same command was refused."""
    flags = train_flags(data, tmp_path) + ["--dry-run"]
    for pair in (["--degset", str(tmp_path), "--tarset", ""], ["--degset", "", "--tarset", str(tmp_path)]):
        assert engine.run_cli(get_args_parser().parse_args(flags + pair)) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: --degset") and "pass both folders" in line, line
    assert engine.run_cli(get_args_parser().parse_args(flags + ["--degset", ""])) == 0  # off, as the README says
    assert "dry run" in capsys.readouterr().out


def test_one_folder_as_degset_and_tarset_is_refused_before_anything_is_built(data, tmp_path, capsys):
    """--degset and --tarset naming one folder (the same path, x and x/, or a link to it) were accepted: each
    validation image was scored against itself, and every epoch logged 100 dB. The tester refuses it alike."""
    deg, _ = make_val_tree(tmp_path)
    (tmp_path / "link").symlink_to(deg, target_is_directory=True)
    flags = train_flags(data, tmp_path) + ["--dry-run"]
    for tar in (str(deg), f"{deg}/", str(tmp_path / "link")):
        assert engine.run_cli(get_args_parser().parse_args(flags + ["--degset", str(deg), "--tarset", tar])) == 2
        out, err = capsys.readouterr()
        assert err.strip() == (f"error: --degset {deg} and --tarset {tar} are the same folder: every image would be "
                               f"scored against itself (PSNR 100 dB, SSIM 1): pass the degraded images' folder as "
                               f"--degset and their targets' as --tarset")
        assert "=>" not in out, out  # nothing scanned, paired or built first


def test_default_validation_off_names_the_folder_that_is_missing(tmp_path, monkeypatch, capsys):
    """With Rain100L's input folder in place and its target folder missing (or named otherwise), the trainer said
    both default folders "do not exist"; and --degset DIR alone was refused as "--tarset None"."""
    from types import SimpleNamespace

    from utils.train import validation_set
    from utils.train.run_log import Console
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/test/derain/Rain100L/input").mkdir(parents=True)
    args = SimpleNamespace(degset=None, tarset=None, skip_bad_files=False)
    assert validation_set.validation_pairs(args, Console()) == []
    line = capsys.readouterr().out.strip()
    assert line.startswith("=> validation off: the default --tarset ") and "Rain100L/target/ does not exist" in line
    assert "--degset" not in line.split("(")[0], line
    with pytest.raises(UserError) as alone:
        validation_set.validation_pairs(SimpleNamespace(degset=str(tmp_path), tarset=None), Console())
    assert "None" not in str(alone.value) and "--tarset not given" in str(alone.value), alone.value


def test_a_full_disk_at_the_loss_figure_is_a_warning_and_a_vanished_folder_is_made_again(tmp_path, monkeypatch,
                                                                                        capsys):
    """The loss figure now goes through atomic_write, whose full-disk error is a DiskFullError, not an OSError:
    it ended the training run where it used to be a warning. And a folder removed by a releasing lock holder
    between a newcomer's check and its open was a raw FileNotFoundError."""
    import json as json_module

    from utils import output_lock, plotting
    from utils.files import DiskFullError
    from utils.train.loss_figure import draw_loss_figure
    from utils.train.run_log import Console
    log = tmp_path / "log.jsonl"
    log.write_text(json_module.dumps({"kind": "iter", "global_step": 1, "l1": 0.5}) + "\n")

    def full(*a, **k):
        raise DiskFullError("the disk is full")
    monkeypatch.setattr(plotting, "replace_file", full)
    draw_loss_figure(log, tmp_path / "figs" / "loss.png", Console())
    assert "could not be written (the disk is full); training goes on" in capsys.readouterr().err
    real_open, calls = os.open, []

    def vanished_once(path, flags, mode=0o777, **kw):
        if str(path).endswith(output_lock.LOCK_NAME):
            calls.append(path)
        if len(calls) == 1 and str(path).endswith(output_lock.LOCK_NAME):
            import shutil
            shutil.rmtree(tmp_path / "run")  # as the releasing holder that made it
            raise FileNotFoundError(path)
        return real_open(path, flags, mode, **kw)
    monkeypatch.setattr(output_lock.os, "open", vanished_once)
    lock = output_lock.OutputLock(tmp_path / "run").acquire()
    monkeypatch.undo()
    assert (tmp_path / "run" / output_lock.LOCK_NAME).is_file()
    lock.release()
    assert not (tmp_path / "run").exists()


def test_a_lock_path_that_is_a_dangling_link_is_an_error_not_a_spin(tmp_path, monkeypatch):
    """With .lock a link to a missing place, every open failed with ENOENT and the retry (meant for a folder a
    releasing holder removed) spun forever at full CPU."""
    from utils import output_lock
    from utils.eval.outputs import OutputFolderError
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / output_lock.LOCK_NAME).symlink_to(tmp_path / "missing" / "x")
    real_open, calls = os.open, []

    def counted(path, *a, **k):
        calls.append(path)
        assert len(calls) < 100, "spinning"
        return real_open(path, *a, **k)
    monkeypatch.setattr(output_lock.os, "open", counted)
    with pytest.raises(OutputFolderError, match=r"cannot create its lock file .*a link to a missing place"):
        output_lock.OutputLock(tmp_path / "o", "--save", "tester").acquire()


def test_the_loss_figure_never_replaces_a_file_it_did_not_draw(tmp_path, capsys):
    """A user's own train_losses.png in --figs-dir (or another run's, in a shared one) was replaced without a
    word: the tester's --figs-dir moves such a file aside, the trainer's did not. Two runs sharing a --figs-dir
    then moved each other's figure aside at every epoch, a figure.before-* folder each time."""
    import json as json_module

    from utils.train.loss_figure import draw_loss_figure
    from utils.train.run_log import Console
    run = tmp_path / "run"
    run.mkdir()
    log = run / "log.jsonl"

    def start(started: str) -> None:  # a fresh run's log: its run record, then its iterations
        log.write_text(json_module.dumps({"kind": "run", "started": started}) + "\n" + "".join(
            json_module.dumps({"kind": "iter", "global_step": i, "l1": 1.0 / i}) + "\n" for i in range(1, 5)))
    start("2026-11-30T10:00:00.000001+00:00")
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "train_losses.png").write_bytes(b"the user's own picture")
    draw_loss_figure(log, figs / "train_losses.png", Console())
    kept = list(figs.glob("figure.before-*/train_losses.png"))
    assert [p.read_bytes() for p in kept] == [b"the user's own picture"]
    assert f"moved to {kept[0].parent}/" in capsys.readouterr().out
    drawn = (figs / "train_losses.png").read_bytes()
    assert drawn.startswith(b"\x89PNG")
    draw_loss_figure(log, figs / "train_losses.png", Console())  # the run's own figure: redrawn in place
    assert len(list(figs.glob("figure.before-*"))) == 1 and "moved" not in capsys.readouterr().out
    other = tmp_path / "other"
    other.mkdir()
    (other / "log.jsonl").write_text(log.read_text())
    for _ in range(3):  # another folder's run, epoch after epoch: each run keeps its own figure, said once
        assert draw_loss_figure(other / "log.jsonl", figs / "train_losses.png", Console()) == \
            figs / "train_losses_other.png"
        assert draw_loss_figure(log, figs / "train_losses.png", Console()) == figs / "train_losses.png"
    assert (figs / "train_losses.png").read_bytes() == drawn and len(list(figs.glob("figure.before-*"))) == 1
    said = capsys.readouterr().out
    assert said.count(f"is the loss figure of the run in {run}: this run's is {figs / 'train_losses_other.png'}") == 1
    assert "moved" not in said
    twin = tmp_path / "x" / "other"  # another folder of that name (the default --name): a name of its own too
    twin.mkdir(parents=True)
    (twin / "log.jsonl").write_text(log.read_text())
    for _ in range(2):
        drawn_at = draw_loss_figure(twin / "log.jsonl", figs / "train_losses.png", Console())
        assert draw_loss_figure(other / "log.jsonl", figs / "train_losses.png", Console()) == \
            figs / "train_losses_other.png"
    assert drawn_at.name.startswith("train_losses_other_") and drawn_at.suffix == ".png"
    assert len(list(figs.glob("figure.before-*"))) == 1 and "moved" not in capsys.readouterr().out
    start("2026-11-30T11:00:00.000001+00:00")  # a fresh run in the first folder: the earlier run's figure goes aside
    draw_loss_figure(log, figs / "train_losses.png", Console())
    assert sorted(p.read_bytes() == drawn for p in figs.glob("figure.before-*/train_losses.png")) == [False, True]


@pytest.mark.parametrize("where", ["figs in denoise", "output in dehaze", "figs in degset"])
def test_a_figure_folder_the_data_is_read_from_is_refused(tmp_path, where, capsys):
    """--figs-dir (or --output-dir) in a scanned training folder put train_losses.png among the clean images:
    the next run found 4 clean images instead of 3 and trained on the plot."""
    data = make_train_tree(tmp_path / "data")
    flags = train_flags(data, tmp_path) + ["--dry-run"]
    if where == "figs in denoise":
        flags += ["--figs-dir", str(data["denoise"])]
        said = "--figs-dir .*: it is where --denoise-dir reads images from"
    elif where == "output in dehaze":  # dehaze scans its synthetic/ folder with subfolders
        at = flags.index("--figs-dir")
        del flags[at:at + 2]  # the figure goes beside the log
        flags += ["--output-dir", str(data["dehaze"] / "synthetic" / "runs" / "a")]
        said = "--output-dir .*: it is inside .*synthetic, which --dehaze-dir reads images from with its subfolders,"
    else:
        for sub in ("in", "gt"):
            (tmp_path / "val" / sub).mkdir(parents=True)
        flags += ["--degset", str(tmp_path / "val" / "in"), "--tarset", str(tmp_path / "val" / "gt"), "--figs-dir",
                  str(tmp_path / "val" / "in")]
        said = "--figs-dir .*: it is where --degset reads images from"
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^error: {said} .*train_losses.png.*choose a --", err, flags=re.M), err
    assert not (tmp_path / "ckpt").exists()
    assert sorted(p.name for p in data["denoise"].iterdir()) == ["clean_0.png", "clean_1.png", "clean_2.png"]


def test_a_full_disk_while_logging_is_one_error_line_naming_the_log(data, tmp_path, capsys, monkeypatch):
    """It said 'disk full while writing a file' (no file, no folder) and left part of the record in log.jsonl."""
    import json

    from _disks import FillingDisk

    from utils.train import run_log
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "3", "--nEpochs", "1"]
    FillingDisk(monkeypatch, run_log, b'"kind": "iter", "epoch": 1, "iteration": 2,')
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert f"error: disk full: writing log.jsonl to {tmp_path / 'ckpt'} needs " in err, err
    assert err.rstrip().endswith("free space there or choose another folder (log.jsonl ends at its last complete "
                                 "record)"), err
    log = (tmp_path / "ckpt" / "log.jsonl").read_text()
    assert log.endswith("\n")
    assert [(r["kind"], r.get("iteration")) for r in map(json.loads, log.splitlines())] == [("run", None), ("iter", 1)]


def test_an_output_dir_without_room_for_one_checkpoint_is_refused_before_training(data, tmp_path, capsys,
                                                                                 monkeypatch):
    """A disk with less free space than one checkpoint trained a whole epoch (hours at the paper's scale) and only
    then failed, at its first save. It is refused at the start now, before any iteration or file, --dry-run too."""
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 5 * 2**20, 5 * 2**20))
    steps = []
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: steps.append(1) or ({}, False))
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "3", "--nEpochs", "1"]
    for extra in ([], ["--dry-run"]):
        assert engine.run_cli(get_args_parser().parse_args(flags + extra)) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "Traceback" not in err, err
        assert re.search(rf"^error: disk full: --output-dir {re.escape(str(tmp_path / 'ckpt'))} has 5.0 MiB free, "
                         r"and each checkpoint of this run takes at least \d+\.\d MiB .*nothing was trained$", err,
                         flags=re.M), err
        assert not steps and not (tmp_path / "ckpt").exists()


def test_a_latest_that_cannot_be_written_says_the_checkpoint_is_saved(data, tmp_path, capsys, monkeypatch):
    """The disk filled between a checkpoint and its ``latest``: the run said the checkpoint "was not saved" and the
    checkpoints and latest were "as they were", while epoch_002.pth was there whole. It now names the saved
    checkpoint, what latest still names, and that --resume auto goes on from the saved one."""
    from utils.checkpoints import training
    from utils.files import disk_full
    real = training.write_text

    def full_for_the_second(path, text):
        if "epoch_002.pth" in text:
            raise disk_full(Path(path), len(text))
        return real(path, text)
    monkeypatch.setattr(training, "write_text", full_for_the_second)
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "1", "--nEpochs", "2"]
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    ckpt = tmp_path / "ckpt"
    assert len(err) == 1 and err[0].startswith(f"error: disk full: writing latest to {ckpt} needs "), err
    assert "not saved" not in err[0] and err[0].endswith(
        f"The checkpoint of epoch 2, iteration 1 is saved, as {ckpt / 'epoch_002.pth'}, but {ckpt / 'latest'} still "
        f"names epoch_001.pth; --resume auto picks epoch_002.pth, this save: fix that, then continue with --resume "
        f"auto"), err
    assert sorted(p.name for p in ckpt.glob("*.pth")) == ["epoch_001.pth", "epoch_002.pth"]
    monkeypatch.setattr(training, "write_text", real)
    assert engine.run_cli(get_args_parser().parse_args([*flags, "--nEpochs", "3", "--resume", "auto"])) == 0
    assert f"=> resumed {ckpt / 'epoch_002.pth'}: 2 epochs done" in capsys.readouterr().out


def test_a_keep_the_disk_cannot_hold_during_a_save_is_refused_before_training(data, tmp_path, capsys, monkeypatch):
    """--keep 1 on a disk with room for one checkpoint: the start-up check passed (one fits), the run trained
    its first epoch, saved, trained the second and then failed at its save, since a save writes the new checkpoint
    whole before removing the old (a failed save must lose nothing), so the folder holds two at once. That is
    now refused at the start, naming --keep; a run of one save, or a disk with room for two, starts."""
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 30 * 2**20, 30 * 2**20))
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "1", "--keep", "1", "--dry-run"]
    assert engine.run_cli(get_args_parser().parse_args([*flags, "--nEpochs", "2"])) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and re.search(
        rf"^error: disk full: --output-dir {re.escape(str(tmp_path / 'ckpt'))} has 30.0 MiB free, and this run holds 2 "
        r"checkpoints there at once \(--keep 1 keeps 1, and each save writes the new one whole before removing the "
        r"oldest, so that a failed save loses none\), each at least \d+\.\d MiB .*so a later save would fail: .*"
        r"nothing was trained$", err, flags=re.M), err
    assert engine.run_cli(get_args_parser().parse_args([*flags, "--nEpochs", "1"])) == 0  # one save: one fits
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 60 * 2**20, 60 * 2**20))
    assert engine.run_cli(get_args_parser().parse_args([*flags, "--nEpochs", "2"])) == 0


def test_the_checkpoints_a_run_holds_at_once():
    from utils.train.run_checks import checkpoints_added, saves_planned
    assert saves_planned(3, 10, 0, 0, 0) == 3
    assert saves_planned(2, 10, 0, 0, 4) == 2 + 4  # steps 4, 8, 12, 16 mid-epoch; 20 is an epoch's end
    assert saves_planned(1, 10, 5, 25, 4) == 1 + 1  # steps 26..30: 28 mid-epoch
    assert [checkpoints_added(1, 0, n) for n in (0, 1, 2, 9)] == [0, 1, 2, 2]
    assert [checkpoints_added(3, 0, n) for n in (2, 3, 4, 100)] == [2, 3, 4, 4]
    assert checkpoints_added(1, 3, 5) == 1 and checkpoints_added(3, 2, 5) == 2  # a resumed folder's own checkpoints
    assert checkpoints_added(0, 0, 50) == 1  # --keep 0: a run keeping all may be pruned as it goes


def test_a_checkpoint_rotation_cannot_remove_is_a_warning_not_a_lost_save(data, tmp_path, capsys, monkeypatch):
    """An old checkpoint that --keep's rotation could not remove (made immutable, or its folder's permissions
    changed) ended the run with 'The checkpoint of epoch 2 ... was not saved; ... its latest are as they were',
    while epoch_002.pth and latest were both written. It is now a warning, given once (every later save tried the
    file again and said so again); the file stays and training goes on."""
    import errno
    real = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name == "epoch_001.pth":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(self))
        return real(self, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", unlink)
    flags = train_flags(data, tmp_path) + ["--iters-per-epoch", "1", "--nEpochs", "3", "--keep", "1"]
    assert engine.run_cli(get_args_parser().parse_args(flags)) == 0
    ckpt = tmp_path / "ckpt"
    err = capsys.readouterr().err
    assert "error:" not in err and (f"could not remove {ckpt / 'epoch_001.pth'}, older than the newest --keep 1 "
                                    f"(Operation not permitted): it stays; the checkpoint just saved and latest are "
                                    f"complete") in err, err
    assert err.count("could not remove") == 1  # said once, not again at every later save that tries it again
    assert sorted(p.name for p in ckpt.glob("*.pth")) == ["epoch_001.pth", "epoch_003.pth"]
    assert json.loads((ckpt / "latest").read_text())["checkpoint"] == "epoch_003.pth"
