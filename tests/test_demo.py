"""`make demo` end to end in its smallest setting (tiny images, two iterations)."""
import json
import math
from pathlib import Path

import pytest

from utils.demo import run as demo


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path, monkeypatch):
    told = []  # what the embedding figures say they show (their source line)
    real_report = demo.embedding_report
    monkeypatch.setattr(demo, "embedding_report", lambda *a, **k: told.append(k.get("source")) or real_report(*a, **k))
    args = demo.get_args_parser().parse_args([
        "--quick", "--root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "ckpt"),
        "--results", str(tmp_path / "results"), "--figs-dir", str(tmp_path / "figs"), "--device", "cpu"])
    summary = demo.main(args)

    tasks = set(demo.IN_DISTRIBUTION + demo.OUT_OF_DISTRIBUTION)
    rows = summary["restored"]
    assert {name.split("/")[0] for name in rows} == tasks
    assert rows.keys() == summary["degraded"].keys()
    for name, row in rows.items():
        assert math.isfinite(row["psnr"]) and 0 < row["ssim"] <= 1, name
        assert row["images"], name
    # the table has one line per evaluated row, with both the input's and the restoration's numbers
    table = (tmp_path / "results" / "demo_table.md").read_text()
    assert all(name in table for name in rows)
    for fig in ("train_losses.png", "demo_takeaway_maps.png", "demo_embedding_projection.png", "derain_demo.png"):
        assert (tmp_path / "figs" / fig).stat().st_size > 0, fig
    saved = json.loads((tmp_path / "results" / "demo_summary.json").read_text())
    assert math.isfinite(saved["embeddings"]["mean_cosine_wb_residual"])
    assert (tmp_path / "results" / "results.json").is_file()
    # the embedding figures name the checkpoint they came from and the photos, as utils.analysis's do
    assert told == [f"BaryNet checkpoint {summary['checkpoint']}, on the demo's test photos"]

    # a second run reuses the finished training (resume auto) and the built data, and still draws the loss
    # curves (the trainer, with nothing to do, draws none)
    (tmp_path / "figs" / "train_losses.png").unlink()
    # and replaces the demo's own outputs, but moves aside a file of a name it writes that it did not write as it
    # is (--results over a user's folder replaced their files silently)
    assert not list(tmp_path.glob("*/*.before-*"))
    (tmp_path / "results" / "results.md").write_text("my notes")
    (tmp_path / "figs" / "dehaze.png").write_bytes(b"my figure")
    again = demo.main(demo.get_args_parser().parse_args([
        "--quick", "--root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "ckpt"),
        "--results", str(tmp_path / "results"), "--figs-dir", str(tmp_path / "figs"), "--device", "cpu"]))
    assert again["checkpoint"] == summary["checkpoint"]
    [kept] = (tmp_path / "results").glob("results.before-*")
    [kept_fig] = (tmp_path / "figs").glob("figures.before-*")
    assert [p.name for p in kept.rglob("*") if p.is_file()] == ["results.md"]
    assert (kept / "results.md").read_text() == "my notes" and (kept_fig / "dehaze.png").read_bytes() == b"my figure"
    assert [p.name for p in kept_fig.rglob("*") if p.is_file()] == ["dehaze.png"]
    assert (tmp_path / "results" / "results.md").read_text() != "my notes"
    assert (tmp_path / "figs" / "train_losses.png").stat().st_size > 0
    for name, row in summary["restored"].items():
        assert again["restored"][name]["psnr"] == row["psnr"]
        assert [i["psnr"] for i in again["restored"][name]["images"]] == [i["psnr"] for i in row["images"]]


def test_the_quick_demo_keeps_out_of_the_full_demos_folders():
    """`python -m utils.demo --quick` trained at patch 32 into checkpoint/demo, so the next `make demo` (patch 64,
    --resume auto) was refused as a run of other settings until the folder was cleaned by hand."""
    full, quick = (demo.get_args_parser().parse_args(argv) for argv in ([], ["--quick"]))
    for args in (full, quick):
        demo.resolve_folders(args)
    for flag in ("root", "output_dir", "results", "figs_dir"):
        a, b = getattr(full, flag), getattr(quick, flag)
        assert a != b and not b.startswith(a + "/") and not a.startswith(b + "/"), flag
    assert (full.root, full.output_dir, full.results) == ("data/demo", "checkpoint/demo", "results/demo")
    chosen = demo.get_args_parser().parse_args(["--quick", "--output-dir", "mine"])
    demo.resolve_folders(chosen)
    assert chosen.output_dir == "mine"


def test_another_seed_gets_folders_of_its_own():
    """`python -m utils.demo --seed 1` after a finished seed-0 demo rebuilt data/demo with seed 1 and found the
    seed-0 run finished in checkpoint/demo: it evaluated the seed-0 model and called it seed 1's."""
    made = {}
    for argv in ([], ["--seed", "1"], ["--seed", "2"], ["--quick", "--seed", "1"], ["--seed", "1", "--root", "d"]):
        args = demo.get_args_parser().parse_args(argv)
        demo.resolve_folders(args)
        made[" ".join(argv)] = args
    folders = [(a.root, a.output_dir, a.results) for key, a in made.items() if "--root" not in key]
    assert all(len(set(column)) == len(column) for column in zip(*folders)), folders
    assert made["--seed 1"].output_dir == "checkpoint/demo-seed1"
    assert made["--seed 1 --root d"].root == "d"  # a folder given is used as given


def test_every_default_output_folder_is_ignored_by_git():
    """What the demo, the quick demo, the tester and the quick study write by default leaves `git status` clean
    (the tester's --figs used to write into the repository's own figs/)."""
    import shutil
    import subprocess
    from pathlib import Path

    import tester_bary
    from bench import study

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    folders = []
    for argv in ([], ["--quick"], ["--seed", "3"], ["--quick", "--seed", "3"]):
        args = demo.get_args_parser().parse_args(argv)
        demo.resolve_folders(args)
        folders += [args.root, args.output_dir, args.results, args.figs_dir]
    tester = tester_bary.get_args_parser().parse_args([])
    folders += [tester.save, tester.figs_dir]
    quick = study.resolve_settings(study.get_args_parser().parse_args(["--quick"]))
    folders += [quick.out, quick.figs_dir]
    elsewhere = study.resolve_settings(study.get_args_parser().parse_args(["--quick", "--out", "mine"]))
    assert elsewhere.figs_dir == str(Path("mine") / "figs")  # a quick study's figures go with its --out
    probes = [f"{folder}/probe.png" for folder in folders]
    done = subprocess.run(["git", "-c", "safe.directory=*", "check-ignore", "--no-index", *probes], cwd=repo,
                          capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 0: some ignored, 1: none; anything else is git failing, not the rule
        pytest.skip(f"git check-ignore failed here: {done.stderr.strip()}")
    assert sorted(done.stdout.split()) == sorted(probes), f"not ignored: {set(probes) - set(done.stdout.split())}"


def test_a_stopped_or_failed_training_stops_the_demo(tmp_path, monkeypatch):
    """Ctrl-C during training made the trainer save and return 0, and the demo went on to evaluate the
    mid-epoch checkpoint and print its table; a failed start printed a second 'demo: training failed' line."""
    import torch

    from net.presets import build_model
    from utils.errors import failure_message
    from utils.train import engine

    args = demo.get_args_parser().parse_args(["--quick", "--output-dir", str(tmp_path / "ckpt")])
    demo.resolve_budget(args)
    demo.resolve_folders(args)
    (tmp_path / "ckpt").mkdir()

    def saved_mid_epoch(targs):
        path = tmp_path / "ckpt" / "iter_e001_i000001.pth"
        torch.save({"model": build_model("BaryNet", "tiny").state_dict(), "epoch": 0, "iteration": 1}, path)
        (tmp_path / "ckpt" / "latest").write_text(json.dumps({"checkpoint": path.name}))
        return 0
    # (143: SIGTERM while the trainer started, which the demo reported as its training having failed)
    def sigterm_mid_epoch(targs):  # the trainer returns the signal's status when the demo asks for it (it said 130)
        return 143 if getattr(targs, "status_on_stop", False) else saved_mid_epoch(targs)
    for trainer, status in ((saved_mid_epoch, 130), (lambda targs: 130, 130), (lambda targs: 143, 143),
                            (sigterm_mid_epoch, 143)):
        monkeypatch.setattr(engine, "run_cli", trainer)
        with pytest.raises(demo.DemoStopped) as stop:
            demo.train(args, tmp_path)
        # the demo's last line said only "error: interrupted", after the trainer's "continue with --resume auto",
        # a flag the demo does not take: it names how to go on, and keeps Ctrl-C's exit status
        assert failure_message(stop.value) == (
            f"the demo stopped; its training so far is saved in {tmp_path / 'ckpt'}: run the same command again "
            f"(make demo, or python -m utils.demo with the same flags) to continue it", status)
    monkeypatch.setattr(engine, "run_cli", lambda targs: 2)
    with pytest.raises(SystemExit) as stop:
        demo.train(args, tmp_path)
    assert stop.value.code == 2  # the trainer's own status; its error line is the only one


def test_training_flags_are_checked_by_the_demos_names_and_quick_keeps_the_ones_given():
    from utils.errors import UsageError
    for argv, words in ((["--epochs", "0"], "--epochs must be at least 1"),
                        (["--iters-per-epoch", "-1"], "--iters-per-epoch must be >= 0"),
                        (["--patch-size", "30"], "--patch-size must be a multiple of 8"),
                        (["--seed", "-1"], "--seed must be >= 0")):
        with pytest.raises(UsageError, match=words):
            demo.resolve_budget(demo.get_args_parser().parse_args(argv))
    with pytest.raises(UsageError, match="--epochs must be at least 1"):  # --quick used to override it silently
        demo.resolve_budget(demo.get_args_parser().parse_args(["--quick", "--epochs", "0"]))
    quick = demo.get_args_parser().parse_args(["--quick", "--iters-per-epoch", "5"])
    demo.resolve_budget(quick)
    assert (quick.epochs, quick.iters_per_epoch, quick.batch_size, quick.patch_size) == (1, 5, 2, 32)



def test_the_package_imports_no_top_level_script():
    """`python -m utils.demo` imported trainer_bary.py, a script the package (net, utils) does not install:
    run from another folder with the project pip-installed, it failed with ModuleNotFoundError."""
    import ast
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    scripts = {p.stem for p in repo.glob("*.py")} | {"bench", "tests"}
    found = []
    for path in sorted((repo / "utils").rglob("*.py")) + sorted((repo / "net").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.relative_to(repo)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] in scripts]
    assert found == []


@pytest.mark.parametrize("iters, said", [("0", "5 epochs over the whole demo data set ("),
                                         ("7", "5 epochs of at most 7 iterations (fewer when")])
def test_the_training_line_says_what_iters_per_epoch_0_means(iters, said, tmp_path, monkeypatch, capsys):
    """--iters-per-epoch 0 (the whole data set) was announced as "epochs of at most 0 iterations"."""
    monkeypatch.setattr(demo, "build_demo_data", lambda *a, **k: {"status": "built"})

    def stop(args, root):
        raise demo.DemoStopped("stopped here")
    monkeypatch.setattr(demo, "train", stop)
    args = demo.get_args_parser().parse_args(["--quick", "--epochs", "5", "--iters-per-epoch", iters, "--root",
                                              str(tmp_path / "d"), "--device", "cpu"])
    with pytest.raises(demo.DemoStopped):
        demo.main(args)
    assert f"[2/4] training the tiny preset: {said}" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--results", "--output-dir", "--figs-dir"])
def test_a_folder_flag_with_a_file_in_the_way_is_named_by_the_demos_own_flag(flag, tmp_path):
    """--results README.md was answered about --figs-dir (derived from it, and checked by the trainer), and
    --output-dir README.md with "or --name", a flag the demo does not have; nothing is built before the check."""
    from utils.errors import UserError
    (tmp_path / "a_file").write_text("mine")
    args = demo.get_args_parser().parse_args(["--quick", "--root", str(tmp_path / "data"), "--device", "cpu",
                                              flag, str(tmp_path / "a_file" / "sub")])
    with pytest.raises(UserError) as err:
        demo.main(args)
    assert str(err.value).startswith(f"{flag} {tmp_path / 'a_file' / 'sub'}: a file, not a folder, is in the way")
    assert str(err.value).endswith(f"choose another {flag}") and not (tmp_path / "data").exists()


@pytest.mark.parametrize("name, flag", [("results/demo_table.md", "--results"),
                                        ("figs/demo_embedding_projection.png", "--figs-dir")])
def test_a_folder_at_one_of_the_demos_file_names_is_refused_before_anything_is_built(name, flag, tmp_path):
    """A folder at <results>/demo_table.md stopped the demo after its training and evaluation, with exit 1."""
    from utils.errors import UsageError
    (tmp_path / name).mkdir(parents=True)
    args = demo.get_args_parser().parse_args(["--quick", "--root", str(tmp_path / "data"), "--device", "cpu",
                                              "--results", str(tmp_path / "results"), "--figs-dir",
                                              str(tmp_path / "figs"), "--output-dir", str(tmp_path / "ckpt")])
    with pytest.raises(UsageError) as err:
        demo.main(args)
    assert str(err.value) == (f"{tmp_path / name}: a folder is where the demo writes its file {Path(name).name} — "
                              f"move or rename that folder, or choose another {flag}")
    assert not (tmp_path / "data").exists() and not (tmp_path / "ckpt").exists()


def test_what_a_demo_stopped_by_a_full_disk_wrote_stays_its_own(tmp_path, monkeypatch, capsys):
    """A demo that met a full disk while it wrote its restorations had recorded none of them: the next run moved its
    own unchanged files aside as "yours, or changed since", one more results.before-* folder per stopped run."""
    import torch

    from utils.files import DiskFullError, write_text
    from utils.owned_outputs import foreign_outputs
    results = tmp_path / "results"
    planned = [results / "derain" / "a.png", results / "derain" / "b.png", results / "results.json"]
    monkeypatch.setattr(demo, "build_demo_data", lambda *a, **k: {"status": "built"})
    monkeypatch.setattr(demo, "train", lambda args, root: tmp_path / "epoch_001.pth")
    monkeypatch.setattr(demo, "draw_loss_figure", lambda *a: None)
    monkeypatch.setattr(demo, "load_model", lambda ckpt: (torch.nn.Identity(), {}))
    monkeypatch.setattr(demo, "planned_outputs", lambda *a: planned)

    def full_after_one(*a, **k):
        write_text(planned[0], "restored")
        raise DiskFullError("disk full: writing b.png")
    monkeypatch.setattr(demo, "evaluate_tasks", full_after_one)
    args = demo.get_args_parser().parse_args(["--quick", "--root", str(tmp_path / "d"), "--results", str(results),
                                              "--output-dir", str(tmp_path / "ckpt"), "--device", "cpu"])
    with pytest.raises(DiskFullError):
        demo.main(args)
    assert foreign_outputs(planned, results / demo.OUTPUTS_RECORD) == []
