"""The run's log: records written whole (a full disk, a link), mended after a crash, rewound on a resume and
read; the console's messages on the main rank only."""
import pytest
from _disks import FillingDisk


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    """After a crash mid-write, the resumed run's first record was appended to the torn fragment and the
    reader skipped both; the log now ends the torn line first (and rewinding keeps it a line of its own)."""
    import json

    from utils.train.run_log import JsonlLog, read_log, rewind_log
    path = tmp_path / "log.jsonl"
    path.write_text('{"kind": "iter", "global_step": 1}\n{"kind": "iter", "global_st')
    assert rewind_log(path, 5) == 0
    log = JsonlLog(path)
    log.write({"kind": "run", "resumed": True, "loss": float("nan"), "nested": {"x": [1.0, float("inf")]}})
    log.write({"kind": "iter", "global_step": 2})
    records = read_log(path)
    assert [r["kind"] for r in records] == ["iter", "run", "iter"]
    assert records[1]["loss"] is None and records[1]["nested"] == {"x": [1.0, None]}  # strict JSON: no NaN
    for line in path.read_text().splitlines()[2:]:
        json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


def test_results_json_is_strict_json_and_fid_is_in_the_tables(tmp_path):
    """A NaN (an FID from a failed square root) was written as NaN, which strict parsers refuse; the FID the
    tester computes per set appeared in results.json only, not in the printed table or the CSV."""
    import csv
    import json

    from utils.eval.report import summary_table, write_results
    row = {"count": 2, "psnr": 30.0, "ssim": 0.9, "input_psnr": 20.0, "input_ssim": 0.5, "seconds_per_image": 0.1,
           "images": [], "fid": float("nan"), **{f"{k}_{m}": {"name": "x.png", m: 1.0} for k in ("best", "worst")
                                                  for m in ("psnr", "ssim")}}
    results = {"protocol": {"fid": True}, "tasks": {"a": row, "b": {**row, "fid": 12.345}},
               "average": {"psnr": 30.0, "ssim": 0.9, "rows": 2}}
    paths = write_results(results, tmp_path)
    saved = json.loads(paths["json"].read_text(), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert saved["tasks"]["a"]["fid"] is None and saved["tasks"]["b"]["fid"] == 12.345
    table = summary_table(results)
    assert "| FID |" in table and "| 12.35 |" in table
    with open(paths["csv"]) as fh:
        assert [r["fid"] for r in csv.DictReader(fh) if r["kind"] == "task"] == ["nan", "12.345"]


def test_a_full_disk_while_logging_names_the_log_and_leaves_no_part_of_the_record(tmp_path, monkeypatch):
    """A full disk in the middle of a record ended the run with 'disk full while writing a file' (no file, no
    folder, unlike a checkpoint's) and left the log ending in part of the record, which stayed in the log."""
    import json

    from utils.errors import failure_message
    from utils.files import DiskFullError
    from utils.train import run_log
    path = tmp_path / "run" / "log.jsonl"
    log = run_log.JsonlLog(path)
    log.write({"kind": "run", "global_step": 0})
    log.write({"kind": "iter", "global_step": 1, "l1": 0.5})
    before = path.read_bytes()
    FillingDisk(monkeypatch, run_log, b'"global_step": 2')
    with pytest.raises(DiskFullError) as full:
        log.write({"kind": "iter", "global_step": 2, "l1": 0.25})
    message, status = failure_message(full.value)
    assert status == 1 and message.startswith(f"disk full: writing log.jsonl to {tmp_path / 'run'} needs ")
    assert "free space there or choose another folder (log.jsonl ends at its last complete record)" in message
    assert path.read_bytes() == before  # no part of the record
    assert [json.loads(line)["global_step"] for line in path.read_text().splitlines()] == [0, 1]


def test_a_quota_while_logging_is_a_full_disk_too(tmp_path, monkeypatch):
    import errno

    from utils.files import DiskFullError
    from utils.train import run_log
    path = tmp_path / "log.jsonl"
    disk = FillingDisk(monkeypatch, run_log, b'"iter"', room=0)
    disk.error = OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(DiskFullError, match=r"disk full: writing log.jsonl to .* needs \d+ bytes and "):
        run_log.JsonlLog(path).write({"kind": "iter", "global_step": 1})
    assert path.read_bytes() == b""


def test_mending_a_log_removes_the_records_cut_short_and_keeps_every_complete_one(tmp_path):
    """A record cut short (a kill mid-write) stayed in the log, ended with a newline by the resumed run, and jq or
    pandas refused the whole log at that line."""
    import json

    from utils.train.run_log import mend_log
    path = tmp_path / "log.jsonl"
    whole = ['{"kind": "run", "global_step": 0}\n', '{"kind": "iter", "global_step": 1}\n',
             '{"kind": "iter", "global_step": 2}\n', '{"kind": "iter", "global_step": 3}']
    mid, last = '{"kind": "iter", "global_st\n', '{"kind": "epoch", "epoch": 1, "global_step": 3, "l1": 0.'
    path.write_text(whole[0] + mid + whole[1] + whole[2] + last)
    assert mend_log(path) == (2, len(mid) + len(last))
    assert path.read_text() == "".join(whole[:3])
    path.write_text("".join(whole))  # complete, only its newline missing: kept, and ended
    assert mend_log(path) == (0, 0) and path.read_text() == "".join(whole) + "\n"
    assert mend_log(path) == (0, 0) and mend_log(tmp_path / "none.jsonl") == (0, 0)
    path.write_bytes(path.read_bytes() + b"\0" * 4096)  # a power cut: the file's end is zeros
    assert mend_log(path) == (1, 4096)
    assert [json.loads(line)["global_step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_a_full_disk_while_rewinding_names_the_discarded_file_and_changes_neither(tmp_path, monkeypatch):
    """Rewinding appended the discarded records with a buffered write: a full disk there said 'disk full while
    writing a file' and could leave part of a record in log.discarded.jsonl."""
    import json

    from utils.files import DiskFullError
    from utils.train import run_log
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"kind": "iter", "global_step": i}) + "\n" for i in range(1, 5)))
    discarded = run_log.discarded_log(path)
    discarded.write_text(json.dumps({"kind": "iter", "global_step": 9}) + "\n")
    before = path.read_bytes(), discarded.read_bytes()
    FillingDisk(monkeypatch, run_log, b'"global_step": 4')
    with pytest.raises(DiskFullError, match=rf"^disk full: writing log.discarded.jsonl to {tmp_path} needs .*"
                                            r"\(log.discarded.jsonl ends at its last complete line\)$"):
        run_log.rewind_log(path, 2)
    assert (path.read_bytes(), discarded.read_bytes()) == before


def test_records_are_not_appended_through_a_link_to_a_file_elsewhere(tmp_path):
    """A run folder resumed in place (one downloaded, say) whose log.discarded.jsonl is a link to ~/.bashrc: the
    rewind appended the log's records past the checkpoint, the folder's own text, to the file the link names."""
    import json

    from utils.errors import UserError
    from utils.train import run_log
    elsewhere = tmp_path / "home" / ".bashrc"
    elsewhere.parent.mkdir()
    elsewhere.write_text("# mine\n")
    run = tmp_path / "run"
    run.mkdir()
    path = run / "log.jsonl"
    path.write_text("".join(json.dumps({"kind": "iter", "global_step": i, "x": "$(touch pwned)"}) + "\n"
                            for i in range(1, 5)))
    run_log.discarded_log(path).symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"log.discarded.jsonl is a symbolic link \(to .*\.bashrc\): its lines are "
                                        r"not appended through it"):
        run_log.rewind_log(path, 2)
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"log.jsonl is a symbolic link .*: its records are not appended"):
        run_log.JsonlLog(path).write({"kind": "run"})
    assert elsewhere.read_text() == "# mine\n"


def test_reading_a_log_skips_what_is_not_a_record(tmp_path):
    """A stray byte that is not UTF-8 ended the loss figure in a traceback, and a JSON line that is not an object
    (``[1]``) in an AttributeError."""
    from utils.train.loss_history import read_loss_history
    from utils.train.run_log import read_log
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"kind": "iter", "global_step": 1, "l1": 0.5}\n[1]\n\xff\xfe\n{"kind": "iter", "global_st\n'
                     b'{"kind": "iter", "global_step": 2, "l1": "x"}\n{"kind": "epoch", "epoch": [2], "val_psnr": 1}\n'
                     b'{"kind": "iter", "global_step": 3, "l1": 1e999}\n{"kind": "iter", "global_step": 4, "l1": 1'
                     + b"0" * 400 + b"}\n")  # a number past any float: the figure ended in an OverflowError
    assert [r["global_step"] for r in read_log(path) if r["kind"] == "iter"] == [1, 2, 3, 4]
    history = read_loss_history(path)  # the loss figure's reader: a value that is not a finite number is not drawn
    assert history.iterations == 4 and [list(a) for a in history.curves["l1"].values.points()] == [[1], [0.5]]
    assert history.epochs == [{"val_psnr": 1}] and history.means() == []


def test_a_record_after_a_complete_log_is_on_the_next_line_with_no_blank_line(tmp_path):
    """A resumed run appends to a log that ends in a newline (or, once, in a complete record without one)."""
    from utils.train.run_log import JsonlLog
    path = tmp_path / "log.jsonl"
    path.write_text('{"kind": "iter", "global_step": 1}\n')
    JsonlLog(path).write({"kind": "run", "global_step": 1})
    assert path.read_text() == '{"kind": "iter", "global_step": 1}\n{"kind": "run", "global_step": 1}\n'
    path.write_text('{"kind": "iter", "global_step": 1}')
    JsonlLog(path).write({"kind": "run", "global_step": 1})
    assert path.read_text() == '{"kind": "iter", "global_step": 1}\n{"kind": "run", "global_step": 1}\n'
    empty = tmp_path / "empty.jsonl"
    JsonlLog(empty).write({"kind": "run", "global_step": 0})
    assert empty.read_text() == '{"kind": "run", "global_step": 0}\n'


def test_only_the_main_rank_writes_the_log_and_prints(tmp_path, capsys):
    """Under torchrun every rank holds a log and a console: the others' are off, or each record and warning
    comes once per rank."""
    from utils.train.run_log import Console, JsonlLog
    path = tmp_path / "run" / "log.jsonl"
    JsonlLog(path, enabled=False).write({"kind": "iter", "global_step": 1})
    Console(False)("progress")
    Console(False).warn("trouble")
    assert not path.parent.exists() and capsys.readouterr() == ("", "")
    Console(True).warn("trouble")
    assert "!! WARNING: trouble" in capsys.readouterr().err


def test_rewinding_puts_the_moved_records_on_the_disk_before_the_log_loses_them(tmp_path, monkeypatch):
    """The log is replaced atomically; the records it loses must be durable in the discarded file first, or a
    power cut in between loses them."""
    import json
    import os

    from utils.train import run_log
    path = tmp_path / "log.jsonl"
    before = "".join(json.dumps({"kind": "iter", "global_step": i}) + "\n" for i in range(1, 5))
    path.write_text(before)
    real_fsync, synced = os.fsync, []

    def fsync(fd):
        real_fsync(fd)
        synced.append((os.fstat(fd).st_ino, path.read_text()))
    monkeypatch.setattr(os, "fsync", fsync)
    assert run_log.rewind_log(path, 2) == 2
    discarded = run_log.discarded_log(path)
    assert [json.loads(line)["global_step"] for line in discarded.read_text().splitlines()] == [3, 4]
    assert (discarded.stat().st_ino, before) in synced  # on the disk while the log still held them


def test_a_lost_epoch_record_is_told_by_any_record_from_the_epochs_start_on(tmp_path):
    """With --log-every 0 the log holds no iteration: the run record (epoch 1) or the previous epoch's record,
    both at the step the epoch began after, tell that the run reached the epoch whose record is missing."""
    import json

    from utils.train.run_log import record_lost
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"kind": "run", "global_step": 0}) + "\n")
    assert record_lost(path, 1, 0)
    path.write_text(json.dumps({"kind": "run", "global_step": 0}) + "\n"
                    + json.dumps({"kind": "epoch", "epoch": 1, "global_step": 3}) + "\n")
    assert not record_lost(path, 1, 0) and record_lost(path, 2, 3)
    assert not record_lost(path, 3, 6)  # the log stops before epoch 3 began: not this log's epoch
    assert not record_lost(tmp_path / "none.jsonl", 1, 0)


def test_a_resume_reads_the_end_of_the_log_for_its_epochs_record_not_the_whole_log(tmp_path, monkeypatch):
    """Every resume from an epoch's end asked whether the log lost the epoch's record by reading the whole log:
    at the paper's scale some 20 s, and 300 MB of records in memory. It reads from the log's end now and stops at
    the record, and tells what reading every record told, for any log."""
    import json

    from utils.train import run_log
    from utils.train.run_log import read_log, record_lost

    def whole(path, epoch, start):  # what it told when it read every record
        records = read_log(path)
        told = any(isinstance(r.get("global_step"), int) and r["global_step"] >= start for r in records)
        return told and not any(r.get("kind") == "epoch" and r.get("epoch") == epoch for r in records)
    path = tmp_path / "log.jsonl"
    lines = [json.dumps({"kind": "run", "global_step": 0}) + "\n"]
    for epoch in (1, 2, 3):
        lines += [json.dumps({"kind": "iter", "epoch": epoch, "global_step": s, "l1": 0.1}) + "\n"
                  for s in range(1000 * epoch - 999, 1000 * epoch + 1)]
        lines.append(json.dumps({"kind": "epoch", "epoch": epoch, "global_step": 1000 * epoch}) + "\n")
    path.write_text("".join(lines))
    seen = []
    real = run_log.lines_from_end
    monkeypatch.setattr(run_log, "lines_from_end", lambda *a: (seen.append(item) or item for item in real(*a)))
    assert not record_lost(path, 3, 2000) and len(seen) <= 2  # the last line is the epoch's record
    text = "".join(lines)
    cases = {"the record lost": text.replace(lines[-1], ""),
             "the run went on into the next epoch": text + lines[5],
             "the record far back": lines[-1] + text.replace(lines[-1], ""),
             "the record's kind escaped": text.replace('"kind": "epoch", "epoch": 3',
                                                       '"kind": "\\u0065poch", "epoch": 3'),
             "its epoch true": text.replace('"epoch": 1, "global_step": 1000}', '"epoch": true, "global_step": 1000}'),
             "a torn last line": text.replace(lines[-1], lines[-1][:20]),
             "lines split at a carriage return": text.replace("}\n", "}\r"),
             "a list, a blank line": text.replace(lines[-1], "\n[3]\n" + lines[-1]),
             "no record past the epoch's start": "".join(lines[:1500])}
    stray = text.encode().replace(b'"kind": "epoch", "epoch": 3', b'"kind": "epoch", "\xff": 0, "epoch": 3')
    for what, log in [(what, log.encode()) for what, log in cases.items()] + [("a stray byte", stray)]:
        path.write_bytes(log)
        for epoch, start in ((3, 2000), (2, 1000), (1, 0), (4, 3000)):
            assert record_lost(path, epoch, start) == whole(path, epoch, start), (what, epoch)
    path.write_text(text.replace(lines[-1], ""))
    assert record_lost(path, 3, 2000)



def _mended_whole(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """What mend_log made of a log holding ``data`` when it read the whole log: its lines that are not JSON removed
    (the definition the tests compare with)."""
    import json

    def is_json(line):
        try:
            json.loads(line)
        except ValueError:
            return False
        return True
    lines = data.splitlines(keepends=True)
    kept, torn = [line for line in lines if is_json(line)], [line for line in lines if not is_json(line)]
    if not torn and (not data or data.endswith(b"\n")):
        return data, (0, 0)
    return (b"".join(line if line.endswith(b"\n") else line + b"\n" for line in kept),
            (len(torn), sum(len(line) for line in torn)))


def _rewound_whole(data: bytes, global_step: int) -> tuple[bytes, bytes, int]:
    """What rewind_log made of a log holding ``data`` (UTF-8) when it read the whole log: the log, what went to the
    discarded log, and how many records moved."""
    import io
    import json
    kept, moved = [], []
    for line in io.TextIOWrapper(io.BytesIO(data)).read().splitlines(keepends=True):
        line_ = line if line.endswith("\n") else line + "\n"
        try:
            record = json.loads(line)
        except ValueError:
            kept.append(line_)
            continue
        past = (isinstance(record, dict) and record.get("kind") in ("iter", "epoch", "run")
                and isinstance(record.get("global_step"), int) and record["global_step"] > global_step)
        (moved if past else kept).append(line_)
    if not moved:
        return data, b"", 0
    return "".join(kept).encode(), "".join(moved).encode(), len(moved)


def _records(steps, every_epoch=4):
    import json
    lines = [json.dumps({"kind": "run", "global_step": 0, "started": "t0"})]
    for s in steps:
        lines.append(json.dumps({"kind": "iter", "epoch": 1 + s // every_epoch, "global_step": s, "l1": 0.5}))
        if s % every_epoch == every_epoch - 1:
            lines.append(json.dumps({"kind": "epoch", "epoch": 1 + s // every_epoch, "global_step": s}))
    return "\n".join(lines).encode() + b"\n"


TRICKY_ENDS = {  # what a log's last lines can hold: a kill or a power cut mid-write, a user's editor, stray bytes
    "whole": b"",
    "torn": b'{"kind": "iter", "global_st',
    "torn, then a blank line": b'{"kind": "iter", "glob\n\n',
    "a record without its newline": b'{"kind": "iter", "global_step": 40, "l1": 0.1}',
    "a blank line": b"\n",
    "blank lines between records": b'\n\n{"kind": "iter", "global_step": 40}\n\n{"kind": "epoch", "global_step": 40}\n',
    "a stray byte": b'{"kind": "iter", "global_step": 40, "l1": 0.\xff}\n{"kind": "iter", "global_step": 41}\n',
    "zeros of a power cut": b"\x00" * 300,
    "zeros, then records": b"\x00" * 300 + b'\n{"kind": "iter", "global_step": 40}\n',
    "carriage returns": b'{"kind": "iter", "global_step": 40}\r\n{"kind": "iter", "global_step": 41}\r\n',
    "a carriage return inside": b'{"kind": "iter", "global_step": 40}\r{"kind": "iter", "glob\n',
    "torn mid-way, written after": b'{"kind": "epoch", "epo\n{"kind": "run", "global_step": 39}\n'
                                   b'{"kind": "iter", "global_step": 40}\n',
    "not objects": b'[1, 2]\n7\n"text"\n{"kind": "iter", "global_step": true}\n{"kind": "iter", "global_step": "41"}\n'
                   b'{"kind": "iter", "global_step": 41.0}\n{"kind": "note"}\n',
}


@pytest.mark.parametrize("end", TRICKY_ENDS.values(), ids=list(TRICKY_ENDS))
def test_mending_from_the_logs_end_leaves_what_mending_the_whole_log_left(tmp_path, monkeypatch, end):
    """mend_log read the whole log (some 300 MB at the paper's scale, tens of seconds on every resume) to find what a
    stop left at its end; it reads the end now, and leaves the log as before, the lines before its end kept byte for
    byte. Small blocks and span here, so that the end read crosses blocks."""
    from utils.train import run_log
    real = run_log.lines_from_end
    monkeypatch.setattr(run_log, "lines_from_end", lambda path, block=0: real(path, 13))
    monkeypatch.setattr(run_log, "MENDED_SPAN", 400)
    for head in (b"", _records(range(1, 3)), _records(range(1, 40))):
        path = tmp_path / "log.jsonl"
        path.write_bytes(head + end)
        want, counts = _mended_whole(head + end)
        assert (run_log._mend_start(path, 400) > 0) == (len(head) > 1000)  # the long log: read from its end
        assert run_log.mend_log(path) == counts, (head, end)
        assert path.read_bytes() == want, (head, end)


def test_a_line_torn_deep_in_a_log_by_a_version_that_did_not_mend_stays_and_is_passed_over(tmp_path, monkeypatch):
    """What mend_log now leaves that the whole log's read removed: a line torn further back than MENDED_SPAN bytes
    of whole records (a version that wrote on after it); read_log and the loss figure pass over it as before."""
    from utils.train import run_log
    monkeypatch.setattr(run_log, "MENDED_SPAN", 400, raising=False)
    path = tmp_path / "log.jsonl"
    data = _records(range(1, 3)) + b'{"kind": "iter", "glo\n' + _records(range(3, 40))
    path.write_bytes(data)
    assert run_log.mend_log(path) == (0, 0) and path.read_bytes() == data
    assert len(run_log.read_log(path)) == data.count(b"\n") - 1


@pytest.mark.parametrize("end", [e for e in TRICKY_ENDS.values() if b"\xff" not in e],
                         ids=[k for k, e in TRICKY_ENDS.items() if b"\xff" not in e])
def test_rewinding_from_the_logs_end_moves_what_rewinding_the_whole_log_moved(tmp_path, monkeypatch, end):
    """rewind_log read and parsed the whole log on every resume that had records to move; it reads back from the
    end to the last record at or before the checkpoint's step now, and the log and the discarded log are as they
    were, for every step (before the first record, at one, between, past the last)."""
    from utils.train import run_log
    real = run_log.lines_from_end
    monkeypatch.setattr(run_log, "lines_from_end", lambda path, block=0: real(path, 13))
    data = _records(range(1, 40)) + end
    for step in (-1, 0, 1, 3, 20, 38, 39, 40, 41, 100):
        path, discarded = tmp_path / f"{step}" / "log.jsonl", tmp_path / f"{step}" / "log.discarded.jsonl"
        path.parent.mkdir()
        path.write_bytes(data)
        discarded.write_bytes(b'{"kind": "iter", "global_step": 99}')  # an earlier rewind's, without its newline
        log, moved, count = _rewound_whole(data, step)
        assert (run_log._rewind_start(path, step) > 0) == (step >= 0)  # read back to its record at or before
        assert run_log.rewind_log(path, step) == count, (step, end)
        assert path.read_bytes() == log, (step, end)
        assert discarded.read_bytes() == b'{"kind": "iter", "global_step": 99}' + (b"\n" + moved if moved else b""), \
            (step, end)


def test_rewinding_a_log_with_a_stray_byte_in_what_it_moves_stops_as_before(tmp_path):
    """A stray byte in the records to move (mend_log removes the line first on a resume) stops it as reading the
    whole log did, and changes neither file."""
    from utils.train.run_log import rewind_log
    path = tmp_path / "log.jsonl"
    data = _records(range(1, 10)) + TRICKY_ENDS["a stray byte"]
    path.write_bytes(data)
    with pytest.raises(UnicodeDecodeError):
        _rewound_whole(data, 5)
    with pytest.raises(UnicodeDecodeError):
        rewind_log(path, 5)
    assert path.read_bytes() == data and not (tmp_path / "log.discarded.jsonl").exists()


def test_rewinding_a_log_whose_steps_go_back_loses_no_record(tmp_path):
    """Each resume rewinds the log before it writes, so its steps never go back and the read from the end stops at
    the last record at or before the checkpoint. A log whose steps do (a version that did not rewind, resumed in
    between) keeps the records past the checkpoint that lie before that one, where reading the whole log moved
    them; every record is in the log or the discarded log still."""
    from utils.train.run_log import discarded_log, rewind_log
    path = tmp_path / "log.jsonl"
    data = _records(range(1, 21)) + _records(range(11, 16))
    path.write_bytes(data)
    assert rewind_log(path, 12) == 4  # 13 to 15 of the second start and its epoch (the whole log moved 13-20 too)
    assert sorted(path.read_bytes().splitlines() + discarded_log(path).read_bytes().splitlines()) == \
        sorted(data.splitlines())
