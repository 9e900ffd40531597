# ruff: noqa: F811 - the fixtures bench and checkpoint come from _tester_case, and tests take them by name
"""tester_bary.py keeping an earlier run's outputs aside: a new run into the --save (or --figs-dir, --savetar) of
an earlier one moves that run's results and restorations into ``results.before-<time>/`` whole, moves back what it
moved when something cannot move, and never moves an input or a file the run reads (:mod:`_tester_case`).
"""
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tester_case import bench, checkpoint, pair_dirs, run, write_photos  # noqa: F401 - fixtures, taken by name

from utils.errors import UserError

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tree(folder):
    """Every file under ``folder`` but the kept-aside runs', as paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.relative_to(folder).parts[0].startswith("results.before-"))


def test_an_earlier_runs_restorations_this_run_does_not_write_go_aside_with_its_results(bench, checkpoint, tmp_path,
                                                                                        capsys):
    """A run scoring other tasks (or fewer images, or none saved) into the --save of an earlier run moved aside
    the earlier results.* and the files of its own names, but left the earlier run's other restorations beside
    the new results.json, which does not describe them: one folder, images and scores of two runs."""
    save = tmp_path / "t"
    first = run("--model", checkpoint, "--data-root", bench, "--tasks", "dehaze", "jpeg", "--save", save)
    assert [im["output"] for im in first["tasks"]["jpeg"]["images"]] == \
        ["jpeg/astro.png", "jpeg/cat.png", "jpeg/coffee.png"]  # the record says which files the run wrote
    (save / "dehaze" / "notes.txt").write_text("the user's own")  # never written by the tester: stays
    earlier = {p: (save / p).read_bytes() for p in _tree(save) if p != "dehaze/notes.txt"}
    capsys.readouterr()
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--max-images", "2", "--save", save)
    [kept] = save.glob("results.before-*")
    assert {p: (kept / p).read_bytes() for p in _tree(kept)} == earlier  # the earlier run whole, at its places
    assert _tree(save) == ["dehaze/notes.txt", "jpeg/astro.png", "jpeg/cat.png", "results.csv", "results.json",
                           "results.md"]
    said = (f"=> 5 file(s) of the names this run writes were already in {save}, and 4 more that the earlier "
            f"results.json there records (this run does not write them): moved to {kept}/")
    assert said in capsys.readouterr().out
    # --no-images: the earlier restorations go with their record; folders left empty go too
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--no-images")
    assert _tree(save) == ["dehaze/notes.txt", "results.csv", "results.json", "results.md"]
    assert not (save / "jpeg").exists()
    # --input: the earlier run's restorations of photos not given again go aside too
    photos = tmp_path / "photos"
    photos.mkdir()
    write_photos(photos, ["a.png", "b.png"])
    run("--model", checkpoint, "--input", photos, "--save", tmp_path / "i")
    (photos / "b.png").unlink()
    run("--model", checkpoint, "--input", photos, "--save", tmp_path / "i")
    [kept] = (tmp_path / "i").glob("results.before-*")
    assert _tree(tmp_path / "i") == ["a.png", "results.json"] and _tree(kept) == ["a.png", "b.png", "results.json"]
    # --overwrite (--save among the inputs): what this run writes is replaced, as it says, but the earlier record
    # goes aside with the restorations it records that this run does not write; the images read stay
    shutil.copytree(photos, tmp_path / "o")
    write_photos(tmp_path / "o", ["c.jpg", "d.jpg"])
    run("--model", checkpoint, "--input", tmp_path / "o" / "c.jpg", tmp_path / "o" / "d.jpg", "--save", tmp_path / "o",
        "--overwrite")
    capsys.readouterr()
    run("--model", checkpoint, "--input", tmp_path / "o" / "c.jpg", "--save", tmp_path / "o", "--overwrite")
    [kept] = (tmp_path / "o").glob("results.before-*")
    assert _tree(kept) == ["d.png", "results.json"]
    assert _tree(tmp_path / "o") == ["a.png", "c.jpg", "c.png", "d.jpg", "results.json"]
    said = "=> an earlier run's results.json and 1 file it records that this run does not write were in "
    assert said + f"{tmp_path / 'o'}: moved to {kept}/\n" in capsys.readouterr().out


def test_a_record_names_no_file_outside_its_folder(tmp_path):
    """The earlier results.json decides what is moved aside: no entry of it may name a file elsewhere."""
    from utils.eval.outputs import recorded_outputs
    record = {"restored": [{"output": "/elsewhere/a.png"}, {"output": ".."}, {"output": 3}, "b.png"],
              "tasks": {"r": {"images": [{"output": "r/x.png"}, {"output": "../x.png"}, {"output": "/etc/x.png"},
                                         {"output": "r/../../x.png"}, {"output": ""}, {"name": "y.png"}]},
                        "s": "not a row"}}
    assert recorded_outputs(record, tmp_path) == [tmp_path / "a.png", tmp_path / "r" / "x.png"]
    assert recorded_outputs(["not", "a", "record"], tmp_path) == [] == recorded_outputs({"an earlier run": 1}, tmp_path)
    # names the tester never gives a restoration: its lock, its record, a checkpoint, a user's notes, a hidden
    # file, another row's folder
    foreign = {"restored": [{"output": n} for n in (".lock", "results.json", "zero.pth", "notes.md", ".x.png")],
               "tasks": {"r": {"images": [{"output": n} for n in ("s/x.png", "r/.lock", "r/a.pth", "r/s/x.png")]}}}
    assert recorded_outputs(foreign, tmp_path) == []


def test_a_record_moves_nothing_the_run_reads_or_holds(bench, checkpoint, tmp_path):
    """An earlier results.json decided what moved aside: one naming .lock and the --model checkpoint moved both
    (a second tester could then take the lock), and restorations scored in their own folder (--degset there,
    --max-images 2) left that folder with 2 of its 3 images."""
    save = tmp_path / "res"
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save)
    shutil.copytree(save / "jpeg", tmp_path / "tar")  # targets of the restorations' sizes and names
    run("--model", checkpoint, "--degset", save / "jpeg", "--tarset", tmp_path / "tar", "--save", save,
        "--max-images", "2")
    assert sorted(p.name for p in (save / "jpeg").iterdir()) == ["astro.png", "cat.png", "coffee.png"]
    model = save / "zero.pth"
    shutil.copy(checkpoint, model)
    (save / "notes.md").write_text("mine")
    record = json.loads((save / "results.json").read_text())
    record["restored"] = [{"output": n} for n in (".lock", "zero.pth", "notes.md")]
    (save / "results.json").write_text(json.dumps(record))
    run("--model", model, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--no-images")
    assert model.is_file() and (save / "notes.md").read_text() == "mine"
    assert not any(p.name in (".lock", "zero.pth", "notes.md") for p in save.glob("results.before-*/*"))


def test_temporaries_a_killed_run_left_are_removed_and_nothing_else(bench, checkpoint, tmp_path, capsys):
    """kill -9 while an image or results.json was being written left its hidden temporary in --save for good;
    the next run into the folder removes those of writers that are gone, and nothing else."""
    import time
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    two_minutes_ago = time.time() - 120
    save = tmp_path / "t"
    files = {  # name: removed
        f"jpeg/.cat.png.{gone.pid}.ab12cd34.tmp": True,  # its writer is gone
        f".results.json.{gone.pid}.zz99z_9z.tmp": True,
        f"jpeg/.astro.png.{os.getpid()}.ab12cd34.tmp": False,  # being written
        f".notes.txt.{gone.pid}.ab12cd34.tmp": False,  # not a name the tester writes
        f".cat.png.{gone.pid}.tmp": False,  # not atomic_write's naming
        f".cat.png.{gone.pid}.ab12cd3.tmp": False,
        f"cat.png.{gone.pid}.ab12cd34.tmp": False,
        "scratch.tmp": False,
        f"other/.cat.png.{gone.pid}.ab12cd34.tmp": False,  # in no folder this run writes
        ".holiday.png.original.tmp": False,  # a user's file named like the older, pid-less temporaries
    }
    for name, _ in files.items():
        (save / name).parent.mkdir(parents=True, exist_ok=True)
        (save / name).write_bytes(b"partial")
        os.utime(save / name, (two_minutes_ago, two_minutes_ago))
    an_hour_ago = time.time() - 3600  # past the 15 minutes after which a pid-less temporary counts as stale
    os.utime(save / ".holiday.png.original.tmp", (an_hour_ago, an_hour_ago))
    fresh = save / f".coffee.png.{gone.pid}.ab12cd34.tmp"  # too fresh to judge: a writer on another machine
    fresh.write_bytes(b"partial")
    link = save / f".link.png.{gone.pid}.ab12cd34.tmp"
    link.symlink_to(save / "scratch.tmp")
    os.utime(link, (two_minutes_ago, two_minutes_ago), follow_symlinks=False)
    unlocked = tmp_path / "targets" / f".cat.png.{gone.pid}.ab12cd34.tmp"  # --savetar has no lock: another
    unlocked.parent.mkdir()                                                # tester may be writing it
    unlocked.write_bytes(b"partial")
    os.utime(unlocked, (two_minutes_ago, two_minutes_ago))
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--savetar",
        tmp_path / "targets")
    assert all((save / name).exists() != removed for name, removed in files.items())
    assert fresh.exists() and link.is_symlink() and unlocked.exists()
    said = [line for line in capsys.readouterr().out.splitlines() if "temporary" in line]
    removed = [save / n for n in (f".results.json.{gone.pid}.zz99z_9z.tmp", f"jpeg/.cat.png.{gone.pid}.ab12cd34.tmp")]
    assert said == [f"=> removed 2 unfinished temporary files that a killed run left: {removed[0]}, {removed[1]}"]


def test_an_earlier_degset_runs_restorations_this_run_does_not_write_go_aside(checkpoint, tmp_path, capsys):
    """A --degset run records its restorations as <name>.png, in --save itself: those a later run into the folder
    does not write (--max-images) go aside with the record, counted as they are (one the user deleted is not
    said to have moved)."""
    deg, tar = pair_dirs(tmp_path, ["a.png", "b.png", "c.png"], ["a.png", "b.png", "c.png"])
    save = tmp_path / "o"
    first = run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", save)
    assert [im["output"] for im in first["tasks"]["deg"]["images"]] == ["a.png", "b.png", "c.png"]
    (save / "c.png").unlink()
    capsys.readouterr()
    run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", save, "--max-images", "1")
    [kept] = save.glob("results.before-*")
    assert _tree(kept) == ["a.png", "b.png", "results.csv", "results.json", "results.md"]
    assert _tree(save) == ["a.png", "results.csv", "results.json", "results.md"]
    said = (f"=> 4 file(s) of the names this run writes were already in {save}, and 1 more that the earlier "
            f"results.json there records (this run does not write them): moved to {kept}/")
    assert said in capsys.readouterr().out


def test_a_recorded_row_folder_that_links_out_of_save_is_not_emptied(bench, checkpoint, tmp_path):
    """The earlier record names dehaze/<name>.png; the user moved that row's restorations to a folder of their own
    and left a link to it in --save: the next run kept aside what the record names through the link, taking
    the user's files out of their folder."""
    save = tmp_path / "t"
    run("--model", checkpoint, "--data-root", bench, "--tasks", "dehaze", "jpeg", "--save", save, "--max-images", "1")
    mine = tmp_path / "mine"
    (save / "dehaze").rename(mine)
    (save / "dehaze").symlink_to(mine, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--max-images", "1")
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    assert (save / "dehaze").is_symlink()
    assert not any(p.match("*/dehaze/*") for p in save.glob("results.before-*/**/*"))


def test_an_earlier_record_with_savetar_keeps_aside_in_save_alone(bench, checkpoint, tmp_path):
    """The restorations an earlier record names lie in --save: kept aside there, not again under --savetar (whose
    folder they are not in: a traceback) or --figs-dir; the targets and figure it records there go aside there."""
    save, targets, figs = tmp_path / "t", tmp_path / "tt", tmp_path / "figs"
    outputs = ["--save", save, "--savetar", targets, "--figs", "--figs-dir", figs, "--max-images", "1"]
    run("--model", checkpoint, "--data-root", bench, "--tasks", "dehaze", "jpeg", *outputs)
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", *outputs)
    [kept] = save.glob("results.before-*")
    assert "dehaze/astro_0.8_0.1.png" in _tree(kept) and not (save / "dehaze").exists()
    [kept_targets] = targets.glob("results.before-*")
    assert _tree(kept_targets) == ["dehaze/astro_0.8_0.1.png", "jpeg/astro.png"]
    assert _tree(targets) == ["jpeg/astro.png"]
    [kept_figs] = figs.glob("results.before-*")
    assert _tree(kept_figs) == ["dehaze.png", "jpeg.png"]


def test_an_earlier_run_whose_files_cannot_all_be_moved_aside_stays_whole(bench, checkpoint, tmp_path, monkeypatch):
    """An earlier run of denoise_15, derain and dehaze in --save, its derain restorations in a folder they cannot
    be moved out of (chattr +i): a run of denoise_15 and derain there stopped at them with 'permission denied',
    its results.* and denoise_15 restorations already moved aside and its dehaze ones left in --save with no
    results.json describing them. Now it stops with everything where it was, and says so."""
    save = tmp_path / "r1"
    run("--model", checkpoint, "--data-root", bench, "--tasks", "denoise_15", "derain", "dehaze", "--save", save,
        "--max-images", "1")
    before = _contents(save)
    assert any(k.startswith("derain/") for k in before) and any(k.startswith("dehaze/") for k in before)
    _refuse_moves(monkeypatch, lambda src, dst: save / "derain" in src.parents)
    with pytest.raises(UserError, match=r"derain/.*could not be moved aside \(Operation not permitted\), so "
                                        r"nothing was moved: the \d+ file\(s\) moved before it were moved back"):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "denoise_15", "derain", "--save", save,
            "--max-images", "1")
    assert _contents(save) == before and not list(save.glob("results.before-*"))


def test_a_run_without_figs_holds_no_figs_folder(bench, checkpoint, tmp_path, monkeypatch):
    """Without --figs nothing is drawn: the default --figs-dir (results/figs, shared by every run started here)
    is neither created nor locked, so a tester drawing figures there does not refuse this one."""
    from utils.output_lock import OutputLock
    monkeypatch.chdir(tmp_path)
    args = ["--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--max-images", "1"]
    run(*args, "--save", tmp_path / "a")
    assert not (tmp_path / "results").exists()
    with OutputLock(tmp_path / "results" / "figs", "--figs-dir", "tester"):  # another tester drawing figures
        assert run(*args, "--save", tmp_path / "b")["tasks"]["jpeg"]["count"] == 1
        assert run(*args, "--save", tmp_path / "c", "--dry-run")["dry_run"]


def test_a_run_refused_at_a_later_lock_removes_a_folder_it_made_that_holds_another(checkpoint, tmp_path):
    """--savetar t with --save t/o (neither there yet) and a busy --figs-dir: the locks went --save, --savetar,
    so t/o made t, whose own lock found it there; refused, t/o went but t was left behind, empty. In the order
    of the paths t comes first and both go."""
    from utils.output_lock import OutputFolderBusy, OutputLock
    deg, tar = pair_dirs(tmp_path, ["a.png"], ["a.png"])
    shared, t = tmp_path / "shared", tmp_path / "t"
    with OutputLock(shared, "--figs-dir", "tester"):
        with pytest.raises(OutputFolderBusy, match="in use by another tester"):
            run("--model", checkpoint, "--degset", deg, "--tarset", tar, "--save", t / "o", "--savetar", t, "--figs",
                "--figs-dir", shared)
    assert not t.exists()


def test_keeping_aside_removes_each_folder_it_empties_inner_ones_first(tmp_path):
    """keep_aside removes the folders below the kept folder's place that the move left empty, and their parents
    left empty in turn: a parent tried before its emptied child (or the child alone) stayed, empty; a folder
    holding anything else, and the place itself, stay."""
    from utils.files import keep_aside
    save = tmp_path / "o"
    for rel in ("derain/Rain100L/a.png", "derain/Rain100L/b.png", "jpeg/c.png", "jpeg/notes.txt", "x/y/z/d.png"):
        (save / rel).parent.mkdir(parents=True, exist_ok=True)
        (save / rel).write_text(rel)
    moved = [save / "derain" / "Rain100L" / "a.png", save / "derain" / "Rain100L" / "b.png", save / "jpeg" / "c.png",
             save / "x" / "y" / "z" / "d.png"]
    kept = keep_aside(moved, save / "results")
    assert sorted(p.relative_to(save).as_posix() for p in save.rglob("*") if kept not in (p, *p.parents)) == \
        ["jpeg", "jpeg/notes.txt"]
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()) == \
        ["derain/Rain100L/a.png", "derain/Rain100L/b.png", "jpeg/c.png", "x/y/z/d.png"]


def test_keeping_aside_twice_in_one_second_makes_a_second_folder_and_merges_nothing(tmp_path, monkeypatch):
    """Two runs keeping files aside within one second get ``.before-<time>`` and ``.before-<time>-2``: the second
    run's files never land in (and replace the files of) the first run's kept folder."""
    from utils import files
    monkeypatch.setattr(files.time, "strftime", lambda fmt: "20250101-120000")
    save = tmp_path / "o"
    save.mkdir()
    kept = []
    for run_text in ("first run", "second run"):
        (save / "a.png").write_text(run_text)
        kept.append(files.keep_aside([save / "a.png"], save / "results"))
    assert [k.name for k in kept] == ["results.before-20250101-120000", "results.before-20250101-120000-2"]
    assert [(k / "a.png").read_text() for k in kept] == ["first run", "second run"]


def test_keeping_aside_passes_over_a_file_moved_away_meanwhile(tmp_path):
    """A file another run moved away between the listing and the move is passed over: the others are still kept
    aside, and no error ends the run halfway through its moves."""
    from utils.files import keep_aside
    save = tmp_path / "o"
    save.mkdir()
    (save / "b.png").write_text("b")
    kept = keep_aside([save / "a.png", save / "b.png"], save / "results")
    assert sorted(p.name for p in kept.iterdir()) == ["b.png"] and not (save / "b.png").exists()


def test_an_earlier_run_across_save_and_figs_dir_stays_whole_when_one_cannot_move(bench, checkpoint, tmp_path,
                                                                                  monkeypatch):
    """Keep-aside was all or nothing in each folder but not across them: an earlier run's figure in --figs-dir that
    could not be moved stopped the run with --save's files already moved aside (results.json and restorations in
    results.before-*, the figure still beside them in --figs-dir). Now --save's move is undone too, and said."""
    save, figs = tmp_path / "s", tmp_path / "figs"
    outputs = ["--save", save, "--figs", "--figs-dir", figs, "--max-images", "1"]
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "dehaze", *outputs)
    saved, drawn = _contents(save), _contents(figs)
    assert saved and drawn
    _refuse_moves(monkeypatch, lambda src, dst: figs in src.parents)
    with pytest.raises(UserError, match=r"figs/.*could not be moved aside \(Operation not permitted\), so nothing "
                                        r"was moved; the \d+ file\(s\) moved aside from 1 other folder\(s\) before "
                                        r"it were moved back"):
        run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "dehaze", *outputs)
    assert _contents(save) == saved and _contents(figs) == drawn
    assert not list(save.glob("results.before-*")) and not list(figs.glob("results.before-*"))


def test_keeping_aside_together_whose_move_back_fails_names_the_folder_holding_what_is_aside(tmp_path, monkeypatch):
    """Across folders as within one: a file of an earlier folder that cannot move back is named, with the folder
    that holds it."""
    from utils.files import keep_aside_together
    a, b = tmp_path / "a", tmp_path / "b"
    for f in (a / "x" / "1.png", a / "2.png", b / "3.png"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f.name)
    _refuse_moves(monkeypatch, lambda src, dst: src == b / "3.png" or dst == a / "2.png")
    with pytest.raises(UserError) as caught:
        keep_aside_together([([a / "x" / "1.png", a / "2.png"], a / "results"), ([b / "3.png"], b / "results")])
    [kept] = a.glob("results.before-*")
    assert _contents(kept) == {"2.png": b"2.png"} and _contents(a) == {"x/1.png": b"1.png",
                                                                       f"{kept.name}/2.png": b"2.png"}
    assert (f"{b / '3.png'} could not be moved aside (Operation not permitted), so nothing was moved; and file(s) "
            f"moved aside from other folders before it could not be moved back, for {a / '2.png'} (Operation not "
            f"permitted): they are still in {kept}/ (1), each at the place it had beside that folder — move them "
            f"back from there, then make its folder") in str(caught.value)
    assert not list(b.glob("results.before-*"))


@pytest.mark.parametrize("landed", ["before", "after"])
@pytest.mark.parametrize("after", [0, 1, 2])
def test_a_stop_signal_while_keeping_aside_moves_everything_back(tmp_path, monkeypatch, after, landed):
    """Ctrl-C or SIGTERM (which the scripts raise as KeyboardInterrupt) landing among keep-aside's moves left the
    earlier run half in its folder and half aside: the rollback ran only for OSError. ``after``: the renames done
    before the stop; it lands in the next one, ``landed`` before or after the kernel renamed."""
    from utils.files import keep_aside, keep_aside_together
    a, b = tmp_path / "a", tmp_path / "b"
    for f in (a / "x" / "1.png", a / "2.png", b / "3.png"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f.name)
    before = {**{f"a/{k}": v for k, v in _contents(a).items()}, **{f"b/{k}": v for k, v in _contents(b).items()}}
    rename, count = os.rename, []

    def stopped(src, dst, *args, **kwargs):  # one stop, as one signal; the moves back are not stopped
        count.append(src)
        if len(count) != after + 1:
            return rename(src, dst, *args, **kwargs)
        if landed == "after":
            rename(src, dst, *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "rename", stopped)
    with pytest.raises(KeyboardInterrupt):
        keep_aside_together([([a / "x" / "1.png", a / "2.png"], a / "results"), ([b / "3.png"], b / "results")])
    monkeypatch.setattr(os, "rename", rename)
    assert {**{f"a/{k}": v for k, v in _contents(a).items()}, **{f"b/{k}": v for k, v in _contents(b).items()}} \
        == before
    assert not list(a.glob("results.before-*")) and not list(b.glob("results.before-*"))
    count.clear()
    monkeypatch.setattr(os, "rename", stopped)
    with pytest.raises(KeyboardInterrupt):
        keep_aside([a / "x" / "1.png", a / "2.png", b / "3.png"], tmp_path / "results")
    monkeypatch.setattr(os, "rename", rename)
    assert not list(tmp_path.glob("results.before-*")) and (a / "x" / "1.png").is_file() and (b / "3.png").is_file()


def _refuse_moves(monkeypatch, refused):
    """``os.rename`` refusing (EPERM, as for an immutable folder: ``chattr +i``) each move for which
    ``refused(source, destination)`` is true; the others are done. Root can write a folder without write
    permission, so a refused rename is stood in for."""
    rename = os.rename

    def refusing(src, dst, *args, **kwargs):
        if refused(Path(src), Path(dst)):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(src), None, str(dst))
        return rename(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "rename", refusing)


def _contents(folder):
    """Every file under ``folder`` with its bytes, by path relative to it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_keeping_aside_that_cannot_move_a_file_moves_back_what_it_had_moved(tmp_path, monkeypatch):
    """A file that could not be moved (its folder immutable) ended keep_aside halfway: the files before it were
    in the kept folder, those after it in their folder, and the error (permission denied) did not say so. Now
    what had moved moves back, the kept folder is removed, and the error names the file and says nothing moved."""
    from utils.files import keep_aside
    save = tmp_path / "o"
    rels = ["results.json", "denoise/a.png", "derain/demo/rain-1.png", "dehaze/c.png"]  # moved in this order
    for rel in rels:
        (save / rel).parent.mkdir(parents=True, exist_ok=True)
        (save / rel).write_text(rel)
    before = _contents(save)
    _refuse_moves(monkeypatch, lambda src, dst: src.parent.name == "demo")
    with pytest.raises(UserError, match=re.escape(f"{save / 'derain' / 'demo' / 'rain-1.png'} could not be moved "
                                                  f"aside (Operation not permitted), so nothing was moved: the 2 "
                                                  f"file(s) moved before it were moved back — make its folder")):
        keep_aside([save / rel for rel in rels], save / "results")
    assert _contents(save) == before and not list(save.glob("results.before-*"))


def test_keeping_aside_whose_move_back_fails_too_names_the_folder_holding_what_is_aside(tmp_path, monkeypatch):
    """A file that could not be moved back after another could not be moved is not lost track of: the error says
    which folder holds it (and at its place there), and what did move back is back."""
    from utils.files import keep_aside
    save = tmp_path / "o"
    rels = ["results.json", "denoise/a.png", "derain/demo/rain-1.png"]
    for rel in rels:
        (save / rel).parent.mkdir(parents=True, exist_ok=True)
        (save / rel).write_text(rel)
    before = _contents(save)
    _refuse_moves(monkeypatch, lambda src, dst: src.parent.name == "demo" or dst == save / "denoise" / "a.png")
    with pytest.raises(UserError, match="could not be moved aside") as caught:
        keep_aside([save / rel for rel in rels], save / "results")
    [kept] = save.glob("results.before-*")
    assert _contents(kept) == {"denoise/a.png": b"denoise/a.png"}
    assert _contents(save) == {k if k != "denoise/a.png" else f"{kept.name}/{k}": v for k, v in before.items()}
    assert (f"moving back what had moved before it failed too, for {save / 'denoise' / 'a.png'} (Operation not "
            f"permitted): 1 file(s) are still in {kept}/, each at the place it had in {save} — move them back from "
            f"there, then make its folder") in str(caught.value)


def test_a_record_whose_row_is_a_dot_folder_names_nothing(tmp_path):
    """A task key "..", "." or "" in an edited results.json made "../x.png" (or "/x.png") a restoration of that
    row: a file of --save's parent, or of the root, to be moved aside."""
    from utils.eval.outputs import recorded_outputs
    record = {"tasks": {row: {"images": [{"output": f"{row}/x.png"}]} for row in ("..", ".", "")}}
    assert recorded_outputs(record, tmp_path / "save") == []


def test_an_earlier_restoration_read_through_a_link_stays_for_the_run(checkpoint, tmp_path):
    """--input links/again.png, a link to b.png that the earlier run in --save restored and records: the record's
    files this run does not write went aside, this run's own input with them, and the run stopped at it ("image
    not found")."""
    photos, save = tmp_path / "photos", tmp_path / "s"
    photos.mkdir()
    write_photos(photos, ["a.png", "b.png"])
    run("--model", checkpoint, "--input", photos, "--save", save)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "again.png").symlink_to(save / "b.png")
    res = run("--model", checkpoint, "--input", tmp_path / "links" / "again.png", "--save", save)
    assert [r["output"] for r in res["restored"]] == [str(save / "again.png")]
    [kept] = save.glob("results.before-*")
    assert _tree(kept) == ["a.png", "results.json"]
    assert _tree(save) == ["again.png", "b.png", "results.json"]


def test_an_earlier_two_level_rows_restorations_go_aside_with_its_parent_folder(bench, checkpoint, tmp_path):
    """A row of two levels (derain/Rain100L) an earlier run wrote and this one does not: its restorations go aside
    with the record, and both folders they leave empty go too, the inner one first (not left beside the new
    results.json, which does not describe them)."""
    save = tmp_path / "t"
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "jpeg", "--save", save, "--max-images", "1")
    assert (save / "derain" / "Rain100L").is_dir()
    run("--model", checkpoint, "--data-root", bench, "--tasks", "jpeg", "--save", save, "--max-images", "1")
    [kept] = save.glob("results.before-*")
    assert _tree(kept) == ["derain/Rain100L/rain-1.png", "jpeg/astro.png", "results.csv", "results.json",
                           "results.md"]
    assert not (save / "derain").exists()
    assert _tree(save) == ["jpeg/astro.png", "results.csv", "results.json", "results.md"]


def test_an_earlier_runs_targets_and_figures_this_run_does_not_write_go_aside_with_its_results(bench, checkpoint,
                                                                                              tmp_path, capsys):
    """A run of derain and dehaze with --savetar and --figs, then one of derain alone into the same folders: the
    dehaze restorations went aside with the earlier results.json, but its dehaze targets and figure stayed beside
    the new run's files, where they looked like this run's. Now those the earlier record names in this run's
    folders, still as it wrote them, go aside with it; a target edited since stays, and so do targets in a
    --savetar this run does not write."""
    save, targets, figs = tmp_path / "s", tmp_path / "t", tmp_path / "f"
    outputs = ["--save", save, "--savetar", targets, "--figs", "--figs-dir", figs, "--max-images", "2"]
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "dehaze", *outputs)
    assert _tree(targets) == ["dehaze/astro_0.8_0.1.png", "dehaze/cat_0.8_0.1.png", "derain/Rain100L/rain-1.png",
                              "derain/Rain100L/rain-2.png"]
    (targets / "dehaze" / "cat_0.8_0.1.png").write_bytes(b"the user's own since")
    drawn = (figs / "dehaze.png").read_bytes()
    capsys.readouterr()
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", *outputs)
    [kept_targets], [kept_figs] = targets.glob("results.before-*"), figs.glob("results.before-*")
    assert _tree(kept_targets) == ["dehaze/astro_0.8_0.1.png", "derain/Rain100L/rain-1.png",
                                   "derain/Rain100L/rain-2.png"]
    assert _tree(targets) == ["dehaze/cat_0.8_0.1.png", "derain/Rain100L/rain-1.png", "derain/Rain100L/rain-2.png"]
    assert _tree(kept_figs) == ["dehaze.png", "derain_Rain100L.png"]
    assert (kept_figs / "dehaze.png").read_bytes() == drawn
    assert _tree(figs) == ["derain_Rain100L.png"]
    said = capsys.readouterr().out
    assert (f"=> 2 file(s) of the names this run writes were already in {targets}, and 1 more that the earlier "
            f"results.json in {save} records (this run does not write them): moved to {kept_targets}/") in said
    assert f"and 1 more that the earlier results.json in {save} records" in said and f"{kept_figs}/" in said
    # another --savetar: the earlier targets are in no folder this run writes, and stay
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", "dehaze", *outputs)
    other = ["--save", save, "--savetar", tmp_path / "t2", "--max-images", "2"]
    run("--model", checkpoint, "--data-root", bench, "--tasks", "derain", *other)
    assert "dehaze/astro_0.8_0.1.png" in _tree(targets) and len(list(targets.glob("results.before-*"))) == 2


def test_an_overwrite_runs_earlier_targets_go_aside_with_the_record_that_names_them(bench, checkpoint, tmp_path,
                                                                                    capsys):
    """--overwrite (--save in a task folder read): as the earlier restorations this run does not write, the earlier
    targets it does not write take the earlier results.json aside with them, each into its own folder's
    results.before-*, and it is said."""
    root, targets = tmp_path / "b", tmp_path / "t"
    shutil.copytree(bench, root)
    outputs = ["--save", root / "jpeg" / "out", "--savetar", targets, "--max-images", "1", "--overwrite"]
    run("--model", checkpoint, "--data-root", root, "--tasks", "jpeg", "dehaze", *outputs)
    capsys.readouterr()
    run("--model", checkpoint, "--data-root", root, "--tasks", "jpeg", *outputs)
    [kept], [kept_targets] = (root / "jpeg" / "out").glob("results.before-*"), targets.glob("results.before-*")
    assert _tree(kept) == ["results.json"] and _tree(kept_targets) == ["dehaze/astro_0.8_0.1.png"]
    assert _tree(targets) == ["jpeg/astro.png"]
    assert (f"=> with them, 1 file in {targets} that the earlier results.json records (this run does not write "
            f"them): moved to {kept_targets}/") in capsys.readouterr().out
