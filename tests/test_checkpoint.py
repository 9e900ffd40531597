"""Loading every accepted checkpoint format, and refusing files that try to run code; saving, rotation, choosing
the checkpoint to resume, and what a resume restores (unit level: no training run)."""
import io
import json
import os
import pickle
import re
import warnings
import zipfile

import pytest
import torch
import torch.nn as nn

from net import BaryNet
from net.presets import build_model
from utils.checkpoints import (
    LEGACY_UNUSED_KEYS,
    CheckpointError,
    load_model,
    load_model_weights,
    load_weights,
    read_checkpoint,
    save_atomic,
)

_CANARY = "/tmp/baryir_pickle_canary"


class ReferenceStyleBaryNet(BaryNet):
    """A module whose state dict has the reference's names, legacy unused tensors included."""

    def __init__(self, **cfg):
        super().__init__(**cfg)
        d = self.config["dim"]
        for name in sorted(LEGACY_UNUSED_KEYS):
            setattr(self, name.rsplit(".", 1)[0], nn.Conv2d(d, d, 1, bias=False))


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_CANARY}",))


def _tiny():
    torch.manual_seed(0)
    return build_model("BaryNet", "tiny")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_legacy_keys_file_matches_loader(tmp_path):
    from _conformance import CONFORMANCE
    path = CONFORMANCE / "legacy_unused_keys.txt"
    listed = {ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    assert listed == set(LEGACY_UNUSED_KEYS)


@pytest.mark.parametrize("wrap", [False, True], ids=["module", "DataParallel"])
def test_reference_checkpoint_loads_without_its_code(tmp_path, wrap):
    ref = ReferenceStyleBaryNet(**_tiny().config)
    assert LEGACY_UNUSED_KEYS <= set(ref.state_dict())
    pickled = nn.DataParallel(ref) if wrap else ref
    path = tmp_path / "model_epoch_120.pth"
    torch.save({"epoch": 120, "BaryIR": pickled}, path)

    obj = read_checkpoint(path)
    assert obj["epoch"] == 120
    # The class was not imported: a placeholder stands in for it.
    assert not isinstance(obj["BaryIR"], nn.Module)

    fresh = build_model("BaryNet", "tiny")
    load_model_weights(fresh, path)
    expected = {k: v for k, v in ref.state_dict().items() if k not in LEGACY_UNUSED_KEYS}
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())


def test_plain_state_dict_and_project_checkpoint_load(tmp_path):
    src = _tiny()
    plain = tmp_path / "plain.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, plain)
    project = tmp_path / "project.pth"
    save_atomic({"model": src.state_dict(), "epoch": 3, "model_config": src.config}, project)
    for path in (plain, project):
        dst = build_model("BaryNet", "tiny", dim=16)
        torch.nn.init.zeros_(dst.output.weight)
        load_model_weights(dst, path)
        assert _same_weights(src, dst)


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    if os.path.exists(_CANARY):
        os.unlink(_CANARY)
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"evil{protocol}.pth"
        with open(path, "wb") as fh:
            pickle.dump({"BaryIR": Exploit(), "epoch": 1}, fh, protocol=protocol)
        with pytest.raises(CheckpointError, match=r"refusing to load .*evil.*system"):
            read_checkpoint(path)
    torch.save({"BaryIR": Exploit()}, tmp_path / "evil_zip.pth")
    with pytest.raises(CheckpointError, match="tries to run code"):
        read_checkpoint(tmp_path / "evil_zip.pth")
    assert not os.path.exists(_CANARY)


def test_a_pickle_setting_attributes_of_an_allowed_function_is_refused_and_writes_nothing(tmp_path):
    """BUILD on an allow-listed function set attributes on torch's and this project's functions for the whole
    process; with ``dump_patches`` and a ``__name__`` that is a path, a legacy file's 'module' record made torch
    write ``<that path>.patch`` (a diff holding the file's lines) wherever the file said."""
    target = tmp_path / "elsewhere" / "planted"
    target.parent.mkdir()

    def text(s: str) -> bytes:
        return b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()

    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    build = (b"\x80\x02ccopyreg\n_reconstructor\nq\x00N}(" + text("dump_patches") + b"\x88" + text("__name__")
             + text(str(target)) + b"u\x86b0")  # the function, its (None, {attributes}) state, BUILD, POP
    record = b"(" + text("module") + b"h\x00" + text("src.py") + text("planted line\n") + b"tQ."  # BINPERSID
    path = tmp_path / "patch.pt"
    path.write_bytes(head + build + record + pickle.dumps([], protocol=2))
    with pytest.raises(CheckpointError, match=r"patch.pt: the file asks to set attributes of copyreg._reconstructor"):
        read_checkpoint(path)
    assert not list(target.parent.iterdir())
    rebuild = torch._utils._rebuild_tensor_v2
    path = tmp_path / "rename.pth"
    buf = io.BytesIO()
    torch.save({}, buf)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info) if not info.filename.endswith("data.pkl") else
                         b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}" + text("__name__") + text("renamed")
                         + b"s\x86b.")
    with pytest.raises(CheckpointError, match=r"asks to set attributes of torch._utils._rebuild_tensor_v2"):
        read_checkpoint(path)
    assert torch._utils._rebuild_tensor_v2 is rebuild and rebuild.__name__ == "_rebuild_tensor_v2"


def test_mismatched_keys_are_counted_with_a_few_of_each(tmp_path):
    """A file no network of the project fits listed five keys of each kind (over 1000 characters); now it counts
    them, with two of each."""
    path = tmp_path / "tiny.pth"
    sd = _tiny().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(build_model("BaryNet", "paper"), path)
    msg = str(err.value)
    assert re.search(r"does not fit BaryNet \(dim=48, num_blocks=\[4, 6, 6, 8\]\): [\d,]+ keys missing from the file "
                     r"\([^,()]+, [^,()]+, \.\.\. and [\d,]+ more\), 1 key the network has none of \(extra.weight\), "
                     r"[\d,]+ keys of another shape \(.*\); no --backbone, --preset and model flags of this project "
                     r"build a network of these keys and shapes", msg), msg
    assert len(msg) < 700 and "\n" not in msg, msg
    with pytest.raises(CheckpointError, match=r"1 key the network has none of \(extra.weight\)"):
        load_model_weights(_tiny(), path)


@pytest.mark.parametrize("backbone, sizes, flags", [
    ("PromptIR", {}, "--backbone PromptIR --preset tiny"),
    ("BaryPromptIR", {}, "--backbone BaryPromptIR --preset tiny"),
    ("Restormer", {}, "--backbone Restormer --preset tiny"),
    ("BaryNet", {}, "--backbone BaryNet --preset tiny"),
    ("BaryNet", {"dim": 24, "num_blocks": [1, 2, 1, 2]},
     "--backbone BaryNet --preset tiny --dim 24 --num-blocks 1 2 1 2"),
])
def test_a_state_dict_of_another_network_names_it_and_the_flags_that_load_it(tmp_path, backbone, sizes, flags):
    """A plain state dict of another backbone or size listed hundreds of missing and reshaped keys (615 for a tiny
    PromptIR given to the paper BaryNet); the network it holds is named instead, with the flags that build it."""
    path = tmp_path / "other.pth"
    torch.save(build_model(backbone, "tiny", **sizes).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(build_model("BaryNet", "paper"), path)
    assert str(err.value) == (f"{path} holds the weights of a {backbone} (dim={sizes.get('dim', 16)}, num_blocks="
                              f"{sizes.get('num_blocks', [1, 1, 1, 2])}), not of the BaryNet (dim=48, num_blocks="
                              f"[4, 6, 6, 8]) these flags build: pass {flags}")
    model, info = load_model(path, *flags.split()[1:4:2], **sizes)  # the flags named do load it
    assert info["backbone"] == backbone


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "torn.pth"
    torch.save(_tiny().state_dict(), bad)
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="torn.pth"):
        read_checkpoint(bad)


def test_a_pipe_given_as_checkpoint_is_named_as_one_not_missing(tmp_path):
    """``--model`` or ``--resume`` naming a FIFO said "checkpoint not found (no such file or folder)" of a path that
    exists, sending the user to look for a typo."""
    from utils.checkpoints.folder import resolve_checkpoint
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="--model .*fifo.pth: not a regular file"):
        resolve_checkpoint(fifo)
    with pytest.raises(CheckpointError, match="fifo.pth is not a regular file"):
        read_checkpoint(fifo)


def test_a_checkpoint_other_than_the_one_latest_names_is_said_to_be_used(tmp_path):
    """``--model run/latest`` whose pointer names a checkpoint that is gone fell back to the newest by name and
    said "run/latest points to run/epoch_001.pth": another model was evaluated than the one named, silently.
    The note now says why; a pointer that names the checkpoint used says only where it points."""
    import time

    from utils.checkpoints.folder import resolve_checkpoint
    (tmp_path / "epoch_001.pth").write_bytes(b"1")
    pointer = tmp_path / "latest"
    pointer.write_text('{"checkpoint": "epoch_001.pth"}')
    assert resolve_checkpoint(pointer) == (tmp_path / "epoch_001.pth", f"--model {pointer} points to "
                                                                       f"{tmp_path / 'epoch_001.pth'}")
    assert resolve_checkpoint(tmp_path)[1].endswith("using its newest checkpoint, " + str(tmp_path / "epoch_001.pth"))
    pointer.write_text('{"checkpoint": "epoch_009.pth"}')
    for given in (pointer, tmp_path):
        found, note = resolve_checkpoint(given)
        assert found == tmp_path / "epoch_001.pth" and str(found) in note
        assert note.endswith("(latest names epoch_009.pth, which is not there: the newest checkpoint by name is used)")
    pointer.write_text("{not json")
    assert resolve_checkpoint(pointer)[1].endswith("(its latest pointer cannot be read: the newest checkpoint by "
                                                   "name is used)")
    pointer.write_text('{"checkpoint": "epoch_001.pth"}')
    os.utime(pointer, (time.time() - 60, time.time() - 60))
    (tmp_path / "epoch_002.pth").write_bytes(b"2")  # saved after the pointer's last update: a cut-short save
    found, note = resolve_checkpoint(pointer)
    assert found == tmp_path / "epoch_002.pth"
    assert note.endswith("(epoch_002.pth was saved after the epoch_001.pth that latest names, by a run stopped "
                         "before it updated latest)")


def test_save_atomic_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomic({"x": torch.ones(3)}, path)

    def exploding_save(obj, fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_latest_says_where_the_run_is_in_the_consoles_words():
    """A save 500 iterations into the first epoch is "epoch 1, iteration 500" (the console's epoch),
    not the checkpoint's internal count of completed epochs (0)."""
    from utils.checkpoints import checkpoint_name, latest_record

    mid = latest_record(checkpoint_name(0, 500), {"epoch": 0, "iteration": 500, "global_step": 500})
    assert mid == {"checkpoint": "iter_e001_i000500.pth", "at": "epoch 1, iteration 500", "epochs_done": 0,
                   "global_step": 500}
    end = latest_record(checkpoint_name(1, 0), {"epoch": 1, "iteration": 0, "global_step": 900})
    assert (end["checkpoint"], end["at"], end["epochs_done"]) == ("epoch_001.pth", "end of epoch 1", 1)


def test_a_save_whose_pointer_a_kill_cut_off_is_still_the_newest(tmp_path):
    """A save writes its checkpoint, then ``latest``: killed between the two, ``--resume auto`` (and the tester's
    newest checkpoint) went back to the save before, and a whole save interval was trained again."""
    from utils.checkpoints import read_latest

    def at(name: str, when: float):
        (tmp_path / name).write_bytes(b"a checkpoint")
        os.utime(tmp_path / name, (when, when))
    at("epoch_001.pth", 1000)
    at("iter_e002_i000004.pth", 1100)  # a renumbered resume's own, in another batch's units: before the pointer
    (tmp_path / "latest").write_text('{"checkpoint": "epoch_001.pth"}\n')
    os.utime(tmp_path / "latest", (1200, 1200))
    assert read_latest(tmp_path).name == "epoch_001.pth"
    at("iter_e002_i000008.pth", 1300)  # saved, then killed before latest was rewritten
    assert read_latest(tmp_path).name == "iter_e002_i000008.pth"


@pytest.mark.parametrize("content, why", [(b"", "the file is empty"), (b"\x80\x04garbage", "UnpicklingError")])
def test_a_file_that_is_not_a_checkpoint_says_what_to_do(tmp_path, content, why):
    """A text file given as a checkpoint gave 'UnpicklingError: could not find MARK' and no fix."""
    path = tmp_path / "not_a_checkpoint.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{why}.*not a PyTorch checkpoint: copy or download it again"):
        read_checkpoint(path)


@pytest.mark.parametrize("content, kind", [(b"hello\n", "a text file"), (b"print('a script')\n", "a text file"),
                                          (b'{"epoch": 1, "psnr": 30.1}\n', "a JSON file"),
                                          ("caf\u00e9 \u00e9t\u00e9".encode() * 60, "a text file"),
                                          (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
                                          (b"\xff\xd8\xff\xe0" + bytes(64), "a JPEG image")])
def test_a_file_that_is_plainly_something_else_is_named_as_such(tmp_path, content, kind):
    """The run's loss figure or its log.jsonl given as --model was called 'damaged ... copy or download it again',
    advice that fits a torn checkpoint, not a file that never was one."""
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path)
    assert str(refused.value) == (f"cannot read checkpoint {path}: it is {kind}, not a checkpoint. Pass a checkpoint "
                                  f"file (the trainer's epoch_NNN.pth, a .pth/.pt of weights) or a run's output folder")


def test_a_torn_checkpoint_names_its_runs_other_checkpoints_without_torchs_boilerplate(tmp_path):
    """A run folder whose newest checkpoint is cut short: torch's five sentences about miniz, and no word of the
    earlier checkpoints beside it that --model could take instead."""
    for epoch in (1, 2):
        torch.save({"epoch": epoch, "x": torch.ones(64)}, tmp_path / f"epoch_00{epoch}.pth")
    torn = tmp_path / "epoch_002.pth"
    torn.write_bytes(torn.read_bytes()[:200])
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(torn)
    said = str(refused.value)
    assert said.startswith(f"cannot read checkpoint {torn}: ") and "internal miniz error" not in said, said
    assert said.endswith(f"copy or download it again, or use another checkpoint ({tmp_path} holds others: "
                         f"epoch_001.pth)"), said


def test_a_pickle_of_a_newer_protocol_is_one_error_and_no_torch_warning(tmp_path):
    """A plain pickle (protocol 5) given as a checkpoint printed torch's 'Detected pickle protocol 5 ...
    please file an issue' UserWarning, two lines of it, above the one error line."""
    path = tmp_path / "pickled.pth"
    path.write_bytes(pickle.dumps({"epoch": 1, "steps": [1, 2]}, protocol=5))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            read_checkpoint(path)
    assert not [w for w in seen if "pickle" in str(w.message)], [str(w.message) for w in seen]


def test_weights_of_another_network_are_one_line_naming_a_few_keys():
    """The mismatch listed up to 20 keys per kind on lines of their own, over 1000 characters each."""
    torch.manual_seed(0)
    small = build_model("BaryNet", "tiny")
    other = build_model("Restormer", "tiny").state_dict()
    other["renamed.weight"] = other.pop("output.weight")  # no network of the project's: its keys are listed
    with pytest.raises(CheckpointError, match="does not fit") as err:
        load_weights(small, other, "other.pth")
    message = str(err.value)
    assert "\n" not in message and "... and" in message and len(message) < 1500, message


# --------------------------------------------------------------------------- saving, rotation, choosing the newest

def _save(folder, epoch: int, iteration: int, keep: int = 0, **extra):
    from utils.checkpoints import save_training_checkpoint

    state = {"epoch": epoch, "iteration": iteration, "global_step": 10 * epoch + iteration, "model": {}, **extra}
    return save_training_checkpoint(state, folder, keep=keep).name


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_rotation_keeps_the_newest_and_never_the_checkpoint_latest_names(tmp_path):
    """keep=0 keeps every checkpoint, keep=1 the newest alone; a checkpoint ``latest`` names is never deleted, even
    when one further on sorts after it (a resume with another batch saves iter_e002_i000002 beside the
    i000004 it resumed): deleting it would leave ``latest`` naming nothing, the save just made lost."""
    for epoch in (1, 2, 3):
        _save(tmp_path, epoch, 0)
    assert _names(tmp_path) == ["epoch_001.pth", "epoch_002.pth", "epoch_003.pth", "latest"]
    _save(tmp_path, 3, 4, keep=1)
    assert _names(tmp_path) == ["iter_e004_i000004.pth", "latest"]
    assert _save(tmp_path, 3, 2, keep=1) == "iter_e004_i000002.pth"  # renumbered: before the one resumed
    assert _names(tmp_path) == ["iter_e004_i000002.pth", "iter_e004_i000004.pth", "latest"]
    assert json.loads((tmp_path / "latest").read_text())["checkpoint"] == "iter_e004_i000002.pth"


def test_a_failed_save_leaves_the_previous_checkpoint_and_latest_as_they_were(tmp_path, monkeypatch):
    """A save that fails mid-write (a full disk, a kill) leaves no torn checkpoint under its name, which the
    tester's newest-checkpoint and ``--resume auto`` would otherwise pick, and ``latest`` still naming the last
    whole one (it is written after the checkpoint)."""
    from utils.checkpoints import newest_checkpoint, read_latest, resume_candidates

    _save(tmp_path, 1, 0)
    pointer = (tmp_path / "latest").read_text()

    def failing_save(obj, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        _save(tmp_path, 1, 5)
    monkeypatch.undo()
    assert _names(tmp_path) == ["epoch_001.pth", "latest"]
    assert (tmp_path / "latest").read_text() == pointer and json.loads(pointer)["checkpoint"] == "epoch_001.pth"
    assert read_latest(tmp_path).name == newest_checkpoint(tmp_path).name == "epoch_001.pth"
    assert [p.name for p in resume_candidates("auto", tmp_path)[0]] == ["epoch_001.pth"]


@pytest.mark.parametrize("pointer", [None, "{not json", '{"checkpoint": "epoch_009.pth"}'])
def test_without_a_usable_latest_the_furthest_checkpoint_is_resumed_then_the_ones_before(tmp_path, pointer):
    """``latest`` missing, damaged or naming a deleted file: ``--resume auto`` continues the checkpoint furthest
    on (by progress, not by name or age) and falls back newest first; resuming the oldest would train whole
    epochs again."""
    from utils.checkpoints import read_latest, resume_candidates

    for i, name in enumerate(["iter_e002_i000002.pth", "epoch_002.pth", "epoch_001.pth", "iter_e003_i000001.pth"]):
        (tmp_path / name).write_bytes(b"a checkpoint")
        os.utime(tmp_path / name, (1000 - i, 1000 - i))  # the oldest file is the furthest on
    if pointer is not None:
        (tmp_path / "latest").write_text(pointer)
    assert read_latest(tmp_path).name == "iter_e003_i000001.pth"
    assert [p.name for p in resume_candidates("auto", tmp_path)[0]] == [
        "iter_e003_i000001.pth", "epoch_002.pth", "iter_e002_i000002.pth", "epoch_001.pth"]


@pytest.mark.parametrize("named", ["../other/epoch_002.pth", "log.jsonl", "sub/epoch_002.pth"])
def test_a_latest_naming_anything_but_a_checkpoint_of_its_folder_is_passed_over_and_said(tmp_path, named):
    """A hand-edited ``latest`` naming ../other/epoch_002.pth made --resume auto continue another run in this
    folder (its own files set aside); one naming log.jsonl was read as a damaged checkpoint. The pointer is now
    followed only to a checkpoint name of its own folder; otherwise the newest by name is used, and the
    trainer's --resume auto and the tester's --model say so."""
    from utils.checkpoints import read_latest, resolve_checkpoint, resume_candidates
    run, other = tmp_path / "run", tmp_path / "other"
    for folder in (run, other, run / "sub"):
        folder.mkdir()
    (run / "epoch_001.pth").write_bytes(b"1")
    (run / "log.jsonl").write_text("{}\n")
    (other / "epoch_002.pth").write_bytes(b"2")
    (run / "sub" / "epoch_002.pth").write_bytes(b"2")
    (run / "latest").write_text(json.dumps({"checkpoint": named}))
    assert read_latest(run) == run / "epoch_001.pth"
    found, note = resume_candidates("auto", run)
    said = (f"(latest names {named}, which is not a checkpoint name of this folder (epoch_NNN.pth or "
            f"iter_eNNN_iNNNNNN.pth): the newest checkpoint by name is used)")
    assert found == [run / "epoch_001.pth"] and note == f"--resume auto: continuing epoch_001.pth {said}"
    assert resume_candidates(str(run), tmp_path / "elsewhere")[1].endswith(said)
    assert resolve_checkpoint(run / "latest") == (run / "epoch_001.pth",
                                                  f"--model {run / 'latest'}: using {run / 'epoch_001.pth'} {said}")


def test_resume_auto_says_when_latest_is_passed_over(tmp_path):
    """A damaged ``latest``, or one naming a checkpoint that is gone: --resume auto continued the newest by name
    without a word (the tester said it)."""
    from utils.checkpoints import resume_candidates
    (tmp_path / "epoch_001.pth").write_bytes(b"1")
    (tmp_path / "latest").write_text('{"checkpoint": "epoch_001.pth"}')
    assert resume_candidates("auto", tmp_path) == ([tmp_path / "epoch_001.pth"], None)  # nothing to say
    (tmp_path / "latest").write_text("garbage")
    assert resume_candidates("auto", tmp_path)[1] == ("--resume auto: continuing epoch_001.pth (its latest pointer "
                                                      "cannot be read: the newest checkpoint by name is used)")
    (tmp_path / "latest").write_text('{"checkpoint": "epoch_099.pth"}')
    assert resume_candidates("auto", tmp_path)[1] == ("--resume auto: continuing epoch_001.pth (latest names "
                                                      "epoch_099.pth, which is not there: the newest checkpoint by "
                                                      "name is used)")


def test_of_the_saves_a_pointer_missed_the_furthest_is_the_newest(tmp_path):
    """Two saves written after ``latest`` (its rewrite failed, then a kill): the further one is resumed."""
    from utils.checkpoints import read_latest

    for name, when in (("epoch_001.pth", 1000), ("iter_e002_i000004.pth", 1300), ("iter_e002_i000008.pth", 1400)):
        (tmp_path / name).write_bytes(b"a checkpoint")
        os.utime(tmp_path / name, (when, when))
    (tmp_path / "latest").write_text('{"checkpoint": "epoch_001.pth"}\n')
    os.utime(tmp_path / "latest", (1200, 1200))
    assert read_latest(tmp_path).name == "iter_e002_i000008.pth"


# --------------------------------------------------------------------------- what a resume restores

def _trained_pair():
    """A tiny network, its potentials and both Adam optimizers after one step each."""
    from net import Potentials

    torch.manual_seed(0)
    model, pots = nn.Linear(3, 2), Potentials(2, 8, 16)
    opt, pot_opt = torch.optim.Adam(model.parameters(), lr=1e-3), torch.optim.Adam(pots.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).square().sum().backward()
    pots.all(torch.randn(1, 8, 2, 2)).square().sum().backward()
    opt.step()
    pot_opt.step()
    return model, pots, opt, pot_opt


def test_a_mid_epoch_checkpoint_restores_both_optimizers_rng_and_the_epochs_progress(tmp_path):
    """What a resumed run continues from is what the interrupted one had: both optimizers' states (the
    potentials' too), every generator's next draws, and where it was in the epoch with the losses summed so far
    (a resumed epoch's record must give the whole epoch's means)."""
    import random
    from argparse import Namespace

    import numpy as np

    from utils.checkpoints import LoopState, restore_training_state, save_training_checkpoint, training_checkpoint
    from utils.train.resuming import load_start
    from utils.train.run_log import Console

    model, pots, opt, pot_opt = _trained_pair()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = LoopState(epoch=3, iteration=7, global_step=27, loss_sums={"l1": 1.5, "map": -0.25}, loss_count=7)
    ckpt = training_checkpoint(model, pots, opt, pot_opt, scaler, state, False, {"args": {}})
    draws = lambda: (random.random(), float(np.random.rand()), torch.rand(3))  # noqa: E731
    expected = draws()  # what the interrupted run would have drawn next
    path = save_training_checkpoint(ckpt, tmp_path, keep=0)
    assert path.name == "iter_e003_i000007.pth" and (ckpt["epoch"], ckpt["iteration"]) == (2, 7)

    obj = read_checkpoint(path)
    model2, pots2, opt2, pot_opt2 = _trained_pair()
    for opt_new in (opt2, pot_opt2):
        opt_new.state.clear()  # fresh optimizers, as a resumed run builds them
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # a new process's generators are elsewhere
    args = Namespace(start_epoch=1, pretrained=None, backbone="BaryNet")
    resumed, _ = load_start(args, path, obj, model2, pots2, Console(False))
    assert resumed == state  # epoch, iteration, global step, loss sums and count
    restore_training_state(obj, opt2, pot_opt2, scaler, source=str(path))
    for a, b in ((opt, opt2), (pot_opt, pot_opt2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
        for i in sa["state"]:
            for k, v in sa["state"][i].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["state"][i][k])), (i, k)
    got = draws()
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_just_before(tmp_path, capsys):
    """``--resume auto`` passes over a torn newest checkpoint to the one saved just before it, not to an older
    one: each step further back is a save interval trained again."""
    from argparse import Namespace

    from utils.train.run_log import Console
    from utils.train.start import where_to_start

    for epoch, iteration in ((1, 0), (1, 3), (2, 0), (2, 3)):
        _save(tmp_path, epoch, iteration, format_version=1, model={"w": torch.full((2,), float(epoch))})
    newest = tmp_path / "iter_e003_i000003.pth"
    newest.write_bytes(newest.read_bytes()[:500])
    path, obj = where_to_start(Namespace(resume="auto", output_dir=str(tmp_path)), Console())
    assert path.name == "epoch_002.pth" and (obj["epoch"], obj["iteration"], obj["global_step"]) == (2, 0, 20)
    assert "Falling back to the checkpoint before it, epoch_002.pth" in capsys.readouterr().err


def test_the_output_folders_lock_is_released_when_the_run_ends_or_fails(tmp_path):
    """The trainer's hold on --output-dir ends with the run, also when it fails: a lock left behind keeps a
    hidden file in the user's folder (and reads as a busy folder to tools that check it)."""
    from utils.output_lock import LOCK_NAME
    from utils.train.distributed import DistInfo
    from utils.train.start import hold_output_folder

    with hold_output_folder(tmp_path, DistInfo()):
        assert (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError, match="diverged"), hold_output_folder(tmp_path, DistInfo()):
        raise RuntimeError("diverged")
    assert not (tmp_path / LOCK_NAME).exists()


def test_weights_are_finite_only_when_the_potentials_are_too():
    """The save guard: non-finite potentials (as well as a non-finite network) refuse the save that would
    otherwise replace the last good checkpoint with one no resume can load."""
    from net import Potentials
    from utils.checkpoints import all_finite

    model, pots = nn.Linear(3, 2), Potentials(2, 8, 16)
    assert all_finite(model, pots) and all_finite(model, None)
    with torch.no_grad():
        next(pots.parameters()).view(-1)[0] = float("inf")
    assert not all_finite(model, pots) and all_finite(model, None)
    with torch.no_grad():
        model.bias[1] = float("nan")
    assert not all_finite(model, None)


def test_a_resumed_run_keeps_its_own_seed_and_seeds_every_generator(capsys):
    """The data order of a resumed epoch follows the seed: a resume given another --seed (or none, the default)
    keeps the checkpoint's, or its epochs would not be the interrupted run's."""
    import random
    from argparse import Namespace

    import numpy as np

    from utils.train.distributed import DistInfo
    from utils.train.run_log import Console
    from utils.train.start import agree_seed

    args = Namespace(seed=0)
    ckpt = {"format_version": 1, "model": {}, "args": {"seed": 7}}
    assert agree_seed(args, ckpt, DistInfo(), Console()) == 7 and args.seed == 7
    # a warning: a --seed given on resume is not used (it was a line among the start-up's on stdout)
    assert "WARNING: keeping the resumed run's seed 7 (not --seed 0)" in capsys.readouterr().err
    drawn = (random.random(), float(np.random.rand()), torch.rand(2))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    assert drawn[:2] == (random.random(), float(np.random.rand())) and torch.equal(drawn[2], torch.rand(2))
    assert agree_seed(Namespace(seed=3), None, DistInfo(), Console()) == 3  # a fresh run: its own --seed


def test_resume_given_a_runs_latest_pointer_continues_the_checkpoint_it_names(tmp_path):
    """``--resume <run>/latest`` means that run, from the checkpoint ``latest`` names (the JSON pointer itself is
    no checkpoint to load)."""
    from utils.checkpoints import resume_candidates

    for epoch in (1, 2):
        _save(tmp_path, epoch, 0)
    found, note = resume_candidates(str(tmp_path / "latest"), tmp_path / "elsewhere")
    assert [p.name for p in found] == ["epoch_002.pth", "epoch_001.pth"] and "a run's pointer" in note


def test_a_save_of_non_finite_weights_is_refused_and_the_last_checkpoint_stays(tmp_path):
    """The saver's own guard: weights that became NaN (whatever the losses said) are never written over the
    last good checkpoint, which ``--resume auto`` would then pass over to an older one."""
    from types import SimpleNamespace

    from net import Potentials
    from utils.checkpoints import LoopState
    from utils.train.distributed import DistInfo
    from utils.train.engine import NonFiniteLossError, Saver
    from utils.train.run_log import Console

    _save(tmp_path, 1, 0)
    model, pots = nn.Linear(3, 2), Potentials(2, 8, 16)
    with torch.no_grad():
        next(pots.parameters()).view(-1)[0] = float("nan")
    training = SimpleNamespace(model_without_ddp=model, potentials=pots, info=DistInfo())
    save = Saver(training, tmp_path, {}, iters=5, keep=0, console=Console(False))
    with pytest.raises(NonFiniteLossError, match="epoch 2, iteration 3; not saving"):
        save(LoopState(epoch=2, iteration=3, global_step=8))
    assert _names(tmp_path) == ["epoch_001.pth", "latest"]
