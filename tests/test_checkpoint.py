"""Loading every accepted checkpoint format, and refusing files that try to run code."""
import os
import pickle
import warnings

import pytest
import torch
import torch.nn as nn

from net import BaryNet
from net.presets import build_model
from utils.checkpoints import (
    LEGACY_UNUSED_KEYS,
    CheckpointError,
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


def test_mismatched_keys_are_listed(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(_tiny().state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(build_model("BaryNet", "paper"), path)
    msg = str(err.value)
    assert "missing from the file" in msg and "shape mismatches" in msg and "--preset" in msg
    sd = _tiny().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"not in the model \(1\): extra.weight"):
        load_model_weights(_tiny(), path)


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


@pytest.mark.parametrize("content, why", [(b"", "the file is empty"), (b"hello\n", "KeyError"),
                                          (b"print('a script')\n", "UnpicklingError")])
def test_a_file_that_is_not_a_checkpoint_says_what_to_do(tmp_path, content, why):
    """A text file given as a checkpoint gave 'UnpicklingError: could not find MARK' and no fix."""
    path = tmp_path / "not_a_checkpoint.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{why}.*not a PyTorch checkpoint: copy or download it again"):
        read_checkpoint(path)


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
    other = build_model("Restormer", "tiny")
    with pytest.raises(CheckpointError, match="does not fit") as err:
        load_weights(small, other.state_dict(), "other.pth")
    message = str(err.value)
    assert "\n" not in message and "... and" in message and len(message) < 1500, message
