"""utils/owned_outputs.py: a rerun replaces the files it wrote itself, unchanged since, and moves any other file at
those names aside (the demo's and the study's rule)."""
import hashlib
import json
import os
import shutil

from utils.owned_outputs import foreign_outputs, keep_aside_foreign_outputs, record_outputs


def test_only_files_written_as_recorded_are_the_scripts_own(tmp_path, capsys):
    out, figs, elsewhere = tmp_path / "out", tmp_path / "figs", tmp_path / "elsewhere"
    for folder in (out, figs, elsewhere):
        folder.mkdir()
    record = out / ".outputs.json"
    planned = [out / "table.md", out / "summary.json", figs / "a.png", elsewhere / "b.png", out / "never.md"]
    for p, text in zip(planned[:4], ("t", "s", "a", "b")):
        p.write_text(text)
    assert foreign_outputs(planned, record) == planned[:4]  # no record yet: every file there is someone else's
    record_outputs(planned, record)
    assert foreign_outputs(planned, record) == []
    planned[0].write_text("edited")  # changed since: not the script's any more
    planned[2].unlink()
    os.symlink(planned[1], planned[2])  # a link at a name it writes: never written through
    assert foreign_outputs(planned, record) == [planned[0], planned[2]]

    planned[3].write_text("changed")
    left = keep_aside_foreign_outputs(planned, record, [(out, "results"), (figs, "figures")], "the tool")
    assert left == [planned[3]] and planned[3].read_text() == "changed"  # in neither folder: left where it is
    [kept] = out.glob("results.before-*")
    [kept_fig] = figs.glob("figures.before-*")
    assert (kept / "table.md").read_text() == "edited" and (kept_fig / "a.png").is_symlink()
    assert not planned[0].exists() and planned[1].read_text() == "s"
    said = capsys.readouterr().out
    assert f"=> 1 file of the names the tool writes was in {out}, and not as the tool wrote it" in said
    assert said.count("\n") == 2


def test_an_unreadable_record_makes_every_file_foreign(tmp_path):
    (tmp_path / "a.png").write_text("a")
    for text in ("{", "[1, 2]"):
        (tmp_path / "record.json").write_text(text)
        assert foreign_outputs([tmp_path / "a.png"], tmp_path / "record.json") == [tmp_path / "a.png"]


def test_the_record_keeps_the_files_of_earlier_runs(tmp_path, capsys):
    """record_outputs rewrote the record with the current run's files only: the figures an earlier run wrote to
    another folder (another --figs-dir) were then called "yours, or changed since" and moved aside."""
    out, figs1, figs2 = tmp_path / "out", tmp_path / "figs1", tmp_path / "figs2"
    for folder in (out, figs1, figs2):
        folder.mkdir()
    record = out / ".outputs.json"
    first, second = [out / "table.md", figs1 / "a.png"], [out / "table.md", figs2 / "a.png"]
    for p in first:
        p.write_text("1")
    record_outputs(first, record)
    second[0].unlink()  # a planned name with no file there this time: no longer the script's
    second[1].write_text("2")
    record_outputs(second, record)
    assert foreign_outputs([*first, second[1]], record) == []
    first[0].write_text("someone's")
    assert foreign_outputs(first, record) == [first[0]]
    assert keep_aside_foreign_outputs([figs1 / "a.png"], record, [(figs1, "figures")], "the tool") == []
    assert (figs1 / "a.png").read_text() == "1" and not list(figs1.glob("figures.before-*"))
    assert capsys.readouterr().out == ""


def test_outputs_copied_or_moved_with_their_record_stay_the_scripts_own(tmp_path, capsys):
    """The record named each file by its absolute path: a results folder copied elsewhere (or renamed) with its
    record had every output moved aside on the next run, as if the user had written them."""
    old = tmp_path / "old"
    (old / "figs").mkdir(parents=True)
    record = old / ".outputs.json"
    planned = [old / "table.md", old / "figs" / "a.png"]
    for p in planned:
        p.write_text(p.name)
    record_outputs(planned, record)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    moved = [new / "table.md", new / "figs" / "a.png"]
    assert foreign_outputs(moved, new / ".outputs.json") == []
    assert keep_aside_foreign_outputs(moved, new / ".outputs.json", [(new, "results")], "the tool") == []
    assert sorted(p.name for p in new.iterdir()) == [".outputs.json", "figs", "table.md"]
    assert not capsys.readouterr().out
    (new / "figs" / "a.png").write_text("edited")  # the copy is judged by content, as the original was
    assert foreign_outputs(moved, new / ".outputs.json") == [new / "figs" / "a.png"]


def test_a_record_of_absolute_paths_still_counts(tmp_path):
    """Records the demo and the study wrote before the keys were relative keep their files the script's own."""
    (tmp_path / "a.png").write_text("a")
    record = tmp_path / ".outputs.json"
    record.write_text(json.dumps({str(tmp_path / "a.png"): hashlib.sha256(b"a").hexdigest()}))
    assert foreign_outputs([tmp_path / "a.png"], record) == []
    record_outputs([tmp_path / "a.png"], record)
    assert json.loads(record.read_text()) == {"a.png": hashlib.sha256(b"a").hexdigest()}
