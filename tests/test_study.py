"""bench/study.py end to end in a smoke setting (structure and finiteness, not who wins), and its parts
(utils/study/) one by one."""
import io
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _disks import tear_figure_saves

REPO = Path(__file__).resolve().parents[1]

import study

from net.presets import WB_BACKBONES, build_model
from utils.errors import StopSignal
from utils.study.arms import (
    ARMS,
    CAPACITY_TOLERANCE,
    COMPARISONS,
    ID_TASKS,
    MATCHED_DIM,
    OOD_TASKS,
    arm_model_config,
    parameter_counts,
)
from utils.study.budget import EVAL_SECONDS, SEC_PER_ITER, UNMEASURED, plan
from utils.study.errors import StudyError
from utils.study.probe import PROBE_SETS, SPACES, logistic_loss, probe_accuracy, probe_summary
from utils.study.report import COLOURS, capacity_note, figures, tables
from utils.study.runs import balanced_repeats, check_network, trainer_argv
from utils.study.stats import paired_stats, summarise, verdict
from utils.train.losses import ABLATABLE, map_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smoke_args(tmp: Path, *extra: str):
    return study.get_args_parser().parse_args([
        "--root", str(tmp / "demo"), "--scale", "0.25", "--max-photos", "2", "--out", str(tmp / "out"),
        "--figs-dir", str(tmp / "figs"), "--iters", "2", "--epochs", "1", "--seeds", "0", "--batch-size", "2",
        "--patch-size", "32", "--device", "cpu", "--no-progress", *extra])


def _finite(x) -> bool:
    return x is None or (isinstance(x, float) and math.isfinite(x))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    return tmp, study.main(smoke_args(tmp))


@pytest.mark.slow
def test_study_end_to_end(smoke, capsys):
    tmp, res = smoke
    out = tmp / "out"
    arms = list(ARMS)
    assert res["settings"]["arms"] == arms and res["settings"]["seeds"] == [0]

    table = res["summary"]["table"]
    assert set(table) == set(arms)
    for arm in arms:
        for name in ID_TASKS + OOD_TASKS + ("ID", "OOD"):
            mean, std = table[arm][name]["psnr"]
            assert math.isfinite(mean) and 0 < mean < 100 and std is None  # one seed: no std
            assert 0 < table[arm][name]["ssim"][0] <= 1

    comparisons = res["summary"]["comparisons"]
    assert [(c["method"], c["baseline"]) for c in comparisons.values()] == list(COMPARISONS)
    for comparison in comparisons.values():
        assert set(comparison["tasks"]) == set(ID_TASKS + OOD_TASKS + ("ID", "OOD"))
        for c in comparison["tasks"].values():
            assert c["images"]["n"] >= 2  # two test photos (one seed) per task, more per group
            assert math.isfinite(c["images"]["mean"])
            assert all(_finite(c["images"][k]) for k in ("p_t", "p_wilcoxon"))
            assert c["seeds"]["n"] == 1 and c["seeds"]["ci95"] is None
            assert isinstance(c["verdict"], str) and c["verdict"]
    assert set(res["summary"]["ablations"]) == {"no_orthogonality", "no_contrastive", "no_potentials"}
    assert set(res["parameters"]) == set(arms)
    assert res["parameters"]["barypromptir"]["potentials"] > 0 and res["parameters"]["promptir"]["potentials"] == 0

    probe = res["probe"]
    assert set(probe) == {a for a in arms if ARMS[a].backbone in WB_BACKBONES} >= {"baryir", "barypromptir"}
    for per in probe.values():
        for set_name in PROBE_SETS:
            for space in SPACES:
                (acc,) = per[f"{set_name}/{space}"]
                assert 0.0 <= acc <= 1.0
        assert -1.0 <= per["cos"][0] <= 1.0 and 0.0 <= per["abs_cos"][0] <= 1.0
    assert res["probe_counts"]["test_photos"] == 2 and res["probe_counts"]["train_crops"] >= 1

    for name in ("psnr_by_arm.png", "baryir_minus_baseline.png", "probe_accuracy.png"):
        assert (tmp / "figs" / name).stat().st_size > 0
    md = (out / "study.md").read_text()
    for method, baseline in COMPARISONS:
        assert f"### {ARMS[method].label} − {ARMS[baseline].label}, PSNR (dB)" in md
    assert "Linear probe" in md and "command:" in md and "### Arms" in md and "--dim 26" in md
    assert md.count("NOT capacity-matched") == 2 and md.count("matched in parameter count") == 1
    saved = json.loads((out / "study.json").read_text())
    assert saved["summary"]["comparisons"].keys() == comparisons.keys()
    for arm in arms:
        cached = json.loads((out / "runs" / arm / "seed0" / "eval.json").read_text())
        assert cached["network"]["backbone"] == ARMS[arm].backbone
        assert cached["network"]["model_config"]["dim"] == ARMS[arm].config.get("dim", 16)

    def logged(arm):
        lines = (out / "runs" / arm / "seed0" / "train" / "log.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == "iter"]
    assert all("congruence" in r for r in logged("baryir")) and all("congruence" in r for r in logged("barypromptir"))
    assert not any("congruence" in r for a in ("restormer", "restormer_matched", "promptir") for r in logged(a))
    assert logged("no_potentials") and not any("potentials" in r or "congruence" in r for r in logged("no_potentials"))


def test_rerun_uses_the_caches_and_refuses_another_setting(smoke, capsys):
    tmp, res = smoke
    capsys.readouterr()
    again = study.main(smoke_args(tmp))
    assert capsys.readouterr().out.count("cached") == len(ARMS)
    assert again["summary"]["table"] == res["summary"]["table"]
    with pytest.raises(StudyError, match="another setting"):
        study.main(smoke_args(tmp, "--iters", "4"))


def test_ablation_terms_leave_the_map_loss():
    torch.manual_seed(0)
    from net import Potentials
    b = torch.randn(4, 16, 2, 2, requires_grad=True)
    z = torch.randn(4, 16, 2, 2)
    pots = Potentials(2, 16, 16)
    args = (torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8), z, b, z - b, torch.tensor([0, 1, 1, 3]),
            torch.tensor([0, 0, 1, 1]), torch.tensor([0.5, 0.5]), pots)
    full, parts = map_loss(*args)
    lam = 0.5
    for term, key, sign in (("orthogonality", "orthogonality", 0.05), ("contrastive", "contrastive", 0.05),
                            ("potentials", "potential", -1.0)):
        loss, _ = map_loss(*args, without=(term,))
        expected = full - (lam * sign * parts[key]).mean()
        assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-5), term
    assert set(ABLATABLE) == {"orthogonality", "contrastive", "potentials"}
    with pytest.raises(ValueError, match="cannot leave out"):
        map_loss(*args, without=("transport",))


def test_balanced_repeats_give_each_family_a_similar_share():
    files = {f"Train/Denoise/c{i}.png": {} for i in range(12)}
    files |= {f"Train/Derain/rainy/rain-{i}.png": {} for i in range(24)}
    files |= {f"Train/Dehaze/synthetic/part1/{i:04d}_0.8_0.1.png": {} for i in range(36)}
    reps = balanced_repeats({"files": files}, min_samples=400)
    shares = [3 * 12 * reps["denoise_15"], 24 * reps["derain"], 36 * reps["dehaze"]]
    assert reps["denoise_15"] == reps["denoise_25"] == reps["denoise_50"]
    assert sum(shares) >= 400 and max(shares) / min(shares) < 1.3


def test_paired_stats_and_verdict():
    s = paired_stats([1.0, 1.2, 0.9, 1.1])
    assert s["ci95"][0] > 0 and s["p_t"] < 0.01
    noise = paired_stats([1.0, -1.0, 0.5])
    assert verdict(s, noise, "A", "B").startswith("consistent over images (A)")
    assert verdict(s, s, "A", "B") == "larger than the seed-to-seed noise: A"
    assert verdict(noise, noise, "A", "B") == "not distinguishable from noise"
    assert paired_stats([0.0, 0.0])["p_wilcoxon"] is None


def test_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    classes = ("a", "b", "c")
    labels = [c for _ in range(6) for c in classes]
    photos = [f"p{i}" for i in range(6) for _ in classes]
    feats = np.stack([np.eye(4)[classes.index(c)] * 3 + rng.normal(0, 0.3, 4) for c in labels])
    test = np.array([int(p[1:]) >= 3 for p in photos])
    assert probe_accuracy(feats, labels, photos, test, classes) == 1.0
    shuffled = rng.normal(0, 1, feats.shape)
    assert probe_accuracy(shuffled, labels, photos, test, classes) < 1.0


def test_logistic_gradient_matches_finite_differences():
    from scipy.optimize import check_grad
    rng = np.random.default_rng(1)
    x = np.hstack([rng.normal(size=(12, 5)), np.ones((12, 1))])
    onehot = np.eye(3)[rng.integers(0, 3, 12)]
    w = rng.normal(size=6 * 3)
    err = check_grad(lambda v: logistic_loss(v, x, onehot, 0.1)[0],
                     lambda v: logistic_loss(v, x, onehot, 0.1)[1], w)
    assert err < 1e-5


def test_summary_tables_and_figures_over_several_seeds(tmp_path):
    """The multi-seed paths (std, seed-level tests, probe over seeds) on synthetic results: no training."""
    rng = np.random.default_rng(0)
    seeds, arms = [0, 1, 2], list(ARMS)
    images = ["a.png", "b.png", "c.png"]

    def fake_eval(offset):
        return {t: {"psnr": 0.0, "ssim": 0.0, "images": {n: [25 + offset + rng.normal(0, 0.3), 0.8] for n in images}}
                for t in ID_TASKS + OOD_TASKS}
    evals = {(a, s): fake_eval(2.0 if a == "baryir" else -2.0 if a == "barypromptir" else 0.0)
             for a in arms for s in seeds}
    summary = summarise(evals, arms, seeds)
    assert summary["table"]["baryir"]["ID"]["psnr"][1] is not None
    comparisons = summary["comparisons"]
    assert list(comparisons) == ["baryir_vs_restormer", "baryir_vs_restormer_matched", "barypromptir_vs_promptir"]
    for key in ("baryir_vs_restormer", "baryir_vs_restormer_matched"):
        c = comparisons[key]["tasks"]["ID"]
        assert c["seeds"]["n"] == 3 and c["images"]["n"] == 3 * 3 * len(ID_TASKS)
        assert c["verdict"] == "larger than the seed-to-seed noise: BaryIR better"
    assert comparisons["barypromptir_vs_promptir"]["tasks"]["OOD"]["verdict"] == \
        "larger than the seed-to-seed noise: baseline better"
    assert list(summarise(evals, ["baryir", "restormer_matched"], seeds)["comparisons"]) == \
        ["baryir_vs_restormer_matched"]
    assert summary["ablations"]["no_potentials"]["OOD"]["verdict"].endswith("full BaryIR better")

    classes = PROBE_SETS["all"]
    labels = [c for _ in range(7) for c in classes]
    photos = [f"p{i}" for i in range(7) for _ in classes]
    test = np.array([i < 3 for i in range(7) for _ in classes])
    n = len(labels)
    onehot = np.eye(len(classes))[[classes.index(c) for c in labels]]

    def fake_embeddings():  # residual separates the types, WB and source carry nothing
        return {"wb": rng.normal(size=(n, 8)), "residual": 3 * onehot + rng.normal(0, 0.2, onehot.shape),
                "source": rng.normal(size=(n, 8)), "cos": rng.uniform(-0.1, 0.1, n)}
    emb = {(a, s): fake_embeddings() for a in arms if ARMS[a].wb for s in seeds}
    probe = probe_summary(emb, labels, photos, test, arms, seeds)
    assert list(probe) == ["baryir", "no_orthogonality", "no_contrastive", "no_potentials", "barypromptir"]
    assert np.mean(probe["baryir"]["all/residual"]) == 1.0 and np.mean(probe["baryir"]["all/wb"]) < 0.6
    degraded = fake_eval(-5.0)
    params = parameter_counts(arms, 64)
    md = tables(summary, probe, degraded, arms, seeds, {"test_photos": 3, "train_crops": 4}, params)
    assert md.count("±") > 50 and "larger than the seed-to-seed noise" in md
    assert "| BaryIR (2.57 M) |" in md and "Restormer (L1 only) (1.01 M)" in md
    assert f"dim {MATCHED_DIM}, capacity-matched (L1 only) (2.62 M)" in md
    assert "Held-out photos: 3 test photos, leave one out; probe training data: 4 training crops plus the other " \
           "test photos. Classes" in md
    # --max-photos 1: "1 test photos ... plus the other test photos", of which there were none
    one = tables(summary, probe, degraded, arms, seeds, {"test_photos": 1, "train_crops": 1}, params)
    assert "Held-out photos: 1 test photo, leave one out; probe training data: 1 training crop. Classes" in one
    import matplotlib
    backend = matplotlib.get_backend()
    matplotlib.use("pdf")  # the caller's (a notebook's inline one, say): the figures switched it to Agg
    try:
        paths = figures(summary, probe, degraded, arms, seeds, tmp_path, params)
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(backend)
    assert [p.name for p in paths] == ["psnr_by_arm.png", "baryir_minus_baseline.png", "probe_accuracy.png"]


def test_figures_without_a_probe_are_listed(tmp_path):
    """Arms without a WB backbone (--arms restormer restormer_matched) have no probe: figures returned None
    (its return had slid under ``if probe:``), and the study ended in a TypeError after every run had trained."""
    arms, seeds = ["baryir", "restormer"], [0]
    fake = {t: {"psnr": 30.0, "ssim": 0.9, "images": {"a.png": [30.0, 0.9]}} for t in ID_TASKS + OOD_TASKS}
    summary = summarise({(a, s): fake for a in arms for s in seeds}, arms, seeds)
    paths = figures(summary, {}, fake, arms, seeds, tmp_path)
    assert [p.name for p in paths] == ["psnr_by_arm.png", "baryir_minus_baseline.png"]
    assert all(p.is_file() for p in paths)


TINY_BARYNET = 2_573_617


def test_matched_restormer_is_within_ten_percent_of_tiny_barynet():
    counts = parameter_counts(["baryir", "restormer", "restormer_matched", "promptir", "barypromptir"], 64)
    assert counts["baryir"]["network"] == TINY_BARYNET and counts["baryir"]["potentials"] > 0
    matched = counts["restormer_matched"]["network"]
    assert abs(matched / TINY_BARYNET - 1) <= CAPACITY_TOLERANCE, matched
    arm = ARMS["restormer_matched"]
    assert arm.backbone == "Restormer" and arm.config == {"dim": MATCHED_DIM} and not arm.wb
    # the narrowest dim that matches: two less (dim must be even) is outside the tolerance
    narrower = sum(p.numel() for p in build_model("Restormer", "tiny", dim=MATCHED_DIM - 2).parameters())
    assert narrower / TINY_BARYNET - 1 < -CAPACITY_TOLERANCE
    # the other pairs are not matched, and the tables say so
    for method, baseline in (("baryir", "restormer"), ("barypromptir", "promptir")):
        assert "NOT capacity-matched" in capacity_note(method, baseline, counts)
    assert "matched in parameter count" in capacity_note("baryir", "restormer_matched", counts)


def test_every_arm_trains_with_the_same_budget_through_the_trainers_parser(tmp_path):
    import trainer_bary
    from utils.train import options
    assert trainer_bary.get_args_parser is options.get_args_parser  # what utils.study.runs.train_run parses with
    args = study.resolve_settings(study.get_args_parser().parse_args(["--out", str(tmp_path)]))
    parser = trainer_bary.get_args_parser()
    overridable = ("dim", "num_blocks", "num_refinement_blocks", "heads")
    counts = parameter_counts(list(ARMS), args.patch_size)
    shared = None
    for name, arm in ARMS.items():
        argv = trainer_argv(args, arm, 1, tmp_path / "demo", tmp_path / name, {"denoise_15": 2, "derain": 3})
        targs = parser.parse_args(argv)
        assert (targs.backbone, targs.preset, set(targs.ablate)) == (arm.backbone, "tiny", set(arm.ablate))
        assert {k: getattr(targs, k) for k in overridable if getattr(targs, k) is not None} == arm.config
        with torch.device("meta"):
            model = build_model(targs.backbone, targs.preset, **{k: getattr(targs, k) for k in overridable})
        assert sum(p.numel() for p in model.parameters()) == counts[name]["network"]
        budget = {k: v for k, v in vars(targs).items()
                  if k not in ("backbone", "ablate", "output_dir", "figs_dir", *overridable)}
        assert shared is None or budget == shared, name  # the same data, iterations, batch, patch, seed
        shared = budget
    assert (shared["batchSize"], shared["patch_size"], shared["seed"]) == (4, 64, 1)


def test_every_arm_has_an_estimate_a_colour_and_a_label():
    for arm in ARMS.values():
        assert arm.cost_key in SEC_PER_ITER and arm.cost_key in EVAL_SECONDS
    assert UNMEASURED <= SEC_PER_ITER.keys()
    assert set(COLOURS) == set(ARMS) and len(set(COLOURS.values())) == len(ARMS)
    assert len({a.label for a in ARMS.values()}) == len(ARMS)
    assert all(m in ARMS and b in ARMS for m, b in COMPARISONS)
    args = study.resolve_settings(study.get_args_parser().parse_args([]))
    text = plan(args, {"denoise_15": 4})
    assert "restormer_matched*" in text and "baryir*" not in text and "guessed from the network's size" in text


def test_the_script_starts_as_a_script(tmp_path):
    """`python bench/study.py` puts bench/, not the repository root, on sys.path: everything it imports must
    come from the installed packages (the trainer through utils.train, not trainer_bary.py)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(REPO / "bench" / "study.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "restormer_matched" in done.stdout and "barypromptir" in done.stdout
    # and reaches the trainer from there (it once imported trainer_bary.py, not importable from bench/)
    code = ("import sys, pathlib; sys.path.insert(0, sys.argv[1]); import study; "
            "from utils.study.runs import train_run; train_run(['--help'], pathlib.Path(sys.argv[2]), 1, False)")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "bench"), str(tmp_path / "run")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--batch-size" in done.stdout


def test_a_run_of_another_network_is_refused(tmp_path):
    right = {"backbone": "Restormer", "model_config": arm_model_config(ARMS["restormer_matched"])}
    check_network("restormer_matched", right, tmp_path / "eval.json")
    check_network("restormer_matched", None, tmp_path / "eval.json")  # a cache from before the check
    narrow = {"backbone": "Restormer", "model_config": arm_model_config(ARMS["restormer"])}
    with pytest.raises(StudyError, match="dim 16 there, 26 now"):
        check_network("restormer_matched", narrow, tmp_path / "eval.json")
    with pytest.raises(StudyError, match="backbone 'BaryNet' there, 'PromptIR' now"):
        check_network("promptir", {"backbone": "BaryNet", "model_config": {}}, tmp_path / "eval.json")


def test_flags_that_cannot_work_are_one_error_line_and_nothing_is_written(tmp_path, capsys):
    """`python bench/study.py --iters 3 --epochs 2` printed its error with exit status 1, and any other failure the
    user fixes (a folder, --device cuda without a GPU, Ctrl-C outside a run) as a traceback: run_main says it."""
    argv = ["--iters", "3", "--epochs", "2", "--out", str(tmp_path / "out"), "--root", str(tmp_path / "demo")]
    assert study.cli(argv) == 2
    assert capsys.readouterr().err == "error: --iters 3 must be a multiple of --epochs 2 (equal epochs)\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo").exists()
    # the trainer's rules too: each failed every run after --out recorded it, and the corrected command was refused
    for flags, said in ((["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
                        (["--patch-size", "30"], "--patch-size must be a multiple of 8 and at least 16, got 30"),
                        (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0")):
        assert study.cli([*flags, "--out", str(tmp_path / "out"), "--root", str(tmp_path / "demo")]) == 2
        assert capsys.readouterr().err == f"error: {said}\n"
    with pytest.raises(SystemExit) as stop:  # refused by the parser
        study.cli(["--torch-threads", "-3", "--out", str(tmp_path / "out"), "--root", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: argument --torch-threads: must be >= 0 (0: torch's default), got -3"), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo").exists()
    (tmp_path / "file").write_text("mine")  # a file where the demo data's folder goes: a UserError, one line
    assert study.cli(["--root", str(tmp_path / "file"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --root") and err.count("\n") == 1 and (tmp_path / "file").read_text() == "mine"


def test_ctrl_c_while_a_figure_is_saved_leaves_the_earlier_figure(tmp_path, monkeypatch):
    """The figures (the committed ones by default) and the caches (eval.json: a torn one stopped every later run)
    were written in place: Ctrl-C or a full disk there left half a file. Now a temporary, then a rename."""
    arms, seeds = ["baryir", "restormer"], [0]
    fake = {t: {"psnr": 30.0, "ssim": 0.9, "images": {"a.png": [30.0, 0.9]}} for t in ID_TASKS + OOD_TASKS}
    summary = summarise({(a, s): fake for a in arms for s in seeds}, arms, seeds)
    earlier = tmp_path / "psnr_by_arm.png"
    earlier.write_bytes(b"the earlier figure")
    tear_figure_saves(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        figures(summary, {}, fake, arms, seeds, tmp_path)
    assert earlier.read_bytes() == b"the earlier figure"


def test_ctrl_c_during_the_runs_is_one_error_line_with_the_interrupted_status(tmp_path, monkeypatch, capsys):
    """Ctrl-C during a run ended the study through SystemExit: its line without error: and status 1, not the
    shell's 130 for Ctrl-C that every other script gives."""
    monkeypatch.setattr(study, "build_demo_data", lambda *a, **kw: {"files": {}, "content_hash": "x"})
    monkeypatch.setattr(study, "balanced_repeats", lambda manifest, n: {"denoise_15": 1})
    monkeypatch.setattr(study, "probe_views", lambda root, manifest: [])

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run_one", interrupted)
    assert study.cli(["--out", str(tmp_path / "out"), "--root", str(tmp_path / "demo"), "--device", "cpu",
                      "--iters", "2", "--epochs", "1", "--arms", "baryir", "--seeds", "0", "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study interrupted; the finished runs") and "\n" not in err, err
    from utils.study import runs
    monkeypatch.setattr(study, "run_one", lambda *a, **kw: runs.train_run(["--epochs", "1"], tmp_path / "t", 1, False))
    monkeypatch.setattr(runs, "run_cli", lambda args: 143)  # SIGTERM while the trainer started: said as that
    assert study.cli(["--out", str(tmp_path / "out"), "--root", str(tmp_path / "demo"), "--device", "cpu",
                      "--iters", "2", "--epochs", "1", "--arms", "baryir", "--seeds", "0", "--no-progress"]) == 143
    err = capsys.readouterr().err.strip()  # (it was "training failed (exit code 143)")
    assert err.startswith("error: study stopped by SIGTERM; the finished runs") and "\n" not in err, err
    # SIGTERM during training: the trainer saves and returns 0, unless asked for the signal's status (it was
    # "study interrupted", 130)
    monkeypatch.setattr(runs, "run_cli", lambda args: 143 if getattr(args, "status_on_stop", False) else 0)
    assert study.cli(["--out", str(tmp_path / "out"), "--root", str(tmp_path / "demo"), "--device", "cpu",
                      "--iters", "2", "--epochs", "1", "--arms", "baryir", "--seeds", "0", "--no-progress"]) == 143
    assert capsys.readouterr().err.strip().startswith("error: study stopped by SIGTERM; the finished runs")


@pytest.mark.parametrize("stop, status, said", [(KeyboardInterrupt, 130, "study interrupted"),
                                                (lambda: StopSignal(15), 143, "study stopped by SIGTERM")])
def test_ctrl_c_while_a_run_is_evaluated_is_the_studys_stop_line(stop, status, said, tmp_path, monkeypatch, capsys):
    """Ctrl-C (or SIGTERM) while a trained run was evaluated reached the study as the tester's EvaluationStopped: it
    printed "error: interrupted" at the end of the run's progress line, without saying that the runs are kept and
    how to continue."""
    from utils.eval.evaluation import EvaluationStopped
    monkeypatch.setattr(study, "build_demo_data", lambda *a, **kw: {"files": {}, "content_hash": "x"})
    monkeypatch.setattr(study, "balanced_repeats", lambda manifest, n: {"denoise_15": 1})
    monkeypatch.setattr(study, "probe_views", lambda root, manifest: [])

    def evaluated(*a, **kw):  # as utils.eval.evaluation.evaluate_set stops at an image
        try:
            raise stop()
        except KeyboardInterrupt as exc:
            raise EvaluationStopped("interrupted", "demo/test/a.png", "denoise_15", None, status) from exc

    monkeypatch.setattr(study, "run_one", evaluated)
    assert study.cli(fake_argv(tmp_path, "--arms", "baryir")) == status
    err = capsys.readouterr().err  # off the line the run's progress was on
    assert err.startswith(f"\nerror: {said}; the finished runs"), err
    assert "Run the same command again to continue" in err and err.strip().count("\n") == 0, err


def test_ctrl_c_while_the_degraded_inputs_are_evaluated_is_the_studys_stop_line(tmp_path, monkeypatch, capsys):
    """Every run finished, Ctrl-C while the degraded inputs were scored (the tables' "degraded" rows) printed only
    "error: interrupted"; it is the study's stop line, and the rerun reads every run from its cache."""
    from utils.eval.evaluation import EvaluationStopped
    fake_study(monkeypatch, tmp_path)

    def evaluated(*a, **kw):  # as utils.eval.evaluation.evaluate_set stops at an image
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise EvaluationStopped("interrupted", "demo/test/a.png", "denoise_15", None, 130) from exc

    monkeypatch.setattr(study, "evaluate_model", evaluated)
    assert study.cli(fake_argv(tmp_path)) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study interrupted; the finished runs") and "\n" not in err, err
    assert not (tmp_path / "out" / "degraded_input.json").exists()


def test_a_damaged_checkpoint_of_a_run_is_an_error_line_of_its_own(tmp_path, monkeypatch, capsys):
    """A run's checkpoint cut short (a full disk) stopped the study with its error after the run's progress,
    "[1/1] baryir seed 0: error: cannot read checkpoint ...", not on a line of its own."""
    from utils.errors import UserError
    monkeypatch.setattr(study, "build_demo_data", lambda *a, **kw: {"files": {}, "content_hash": "x"})
    monkeypatch.setattr(study, "balanced_repeats", lambda manifest, n: {"denoise_15": 1})
    monkeypatch.setattr(study, "probe_views", lambda root, manifest: [])

    def damaged(*a, **kw):  # as utils.checkpoints.read_checkpoint says it
        raise UserError("cannot read checkpoint out/runs/baryir/seed0/train/epoch_001.pth: the file is damaged")

    monkeypatch.setattr(study, "run_one", damaged)
    assert study.cli(fake_argv(tmp_path, "--arms", "baryir")) == 1
    out, err = capsys.readouterr()
    assert out.endswith("[1/1] baryir seed 0: \n") and err.startswith("error: cannot read checkpoint"), (out, err)


def test_a_damaged_checkpoint_of_a_run_says_deleting_it_continues_the_run(tmp_path):
    """A run's last checkpoint cut short (a full disk, a crash while saving) said "copy or download it again, or use
    another checkpoint", neither of which a study can do; deleting it lets the same command continue the run from
    the checkpoint before it (the trainer's --resume auto), and the error now says so."""
    from utils.study import runs
    train = tmp_path / "runs" / "baryir" / "seed0" / "train"
    train.mkdir(parents=True)
    (train / "epoch_001.pth").write_bytes(b"PK\x03\x04 cut short")
    (train / "latest").write_text(json.dumps({"checkpoint": "epoch_001.pth"}))
    with pytest.raises(StudyError) as caught:
        runs.finished_checkpoint(train, 1)
    said = str(caught.value)
    assert said.startswith(f"cannot read checkpoint {train / 'epoch_001.pth'}") and "\n" not in said, said
    assert f"delete {train / 'epoch_001.pth'} and run the same command again" in said, said
    assert (train / "epoch_001.pth").read_bytes() == b"PK\x03\x04 cut short"


def test_a_training_stopped_by_a_closed_console_is_not_called_a_failure(tmp_path, monkeypatch):
    """``bench/study.py --progress 2>&1 | head``: the trainer stops with a checkpoint when its progress meets the
    closed pipe and returns the closed pipe's status; the study called that "training failed (exit code 141)".
    It now ends as every script ends on a closed pipe."""
    from utils.streams import PIPE_CLOSED_STATUS, OutputClosed
    from utils.study import runs
    monkeypatch.setattr(runs, "run_cli", lambda args: PIPE_CLOSED_STATUS)
    with pytest.raises(OutputClosed):
        runs.train_run(["--epochs", "1"], tmp_path / "train", 1, progress=True)


@pytest.mark.parametrize("module, parser", [("study", "get_args_parser"), ("bench_fast_path", "build_parser"),
                                            ("bench_loader", "build_parser"), ("profile_train", "build_parser")])
def test_the_help_shows_no_default_it_does_not_mean(module, parser):
    """`bench/study.py --help` (STUDY.md: "every flag") said "(default: None)" after flags whose help gives the
    real default, "--no-progress  no training progress bars (default: True)" (progress bars are on), and
    "--quick ... (default: False)"; the trainers' and the tester's help leave those out."""
    import importlib
    text = getattr(importlib.import_module(module), parser)().format_help()
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text, text


def test_the_help_names_each_arm_once():
    """--help showed --arms as "{baryir,restormer,...,barypromptir} [{baryir,...} ...]" (a 200-character line, twice,
    in the usage and in the list) and its default as a Python list, as --seeds did ("default [0, 1, 2]")."""
    text = study.get_args_parser().format_help()
    assert "[--arms ARM [ARM ...]]" in text and "  --arms ARM [ARM ...]" in text
    assert text.count("restormer_matched") == text.count("barypromptir") == 1, text
    assert "['baryir'" not in text and "{baryir" not in text
    # the seeds' defaults as they are typed, not as Python lists
    assert "--seeds SEED [SEED ...]" in text and "(default 0 1 2, 0 with --quick)" in " ".join(text.split())


def fake_study(monkeypatch, tmp: Path, fail_runs: bool = False):
    """bench/study.py's main without building data or training: each run's evaluation is a fixed fake, cached in its
    eval.json as run_one caches it (``fail_runs``: a run raises, for checks that must come before any run). Runs in
    ``tmp``: a default folder (figs/study, before) must not reach the checkout's files."""
    monkeypatch.chdir(tmp)
    fake = {t: {"psnr": 30.0, "ssim": 0.9, "images": {"a.png": [30.0, 0.9], "b.png": [31.0, 0.8]}}
            for t in ID_TASKS + OOD_TASKS}
    monkeypatch.setattr(study, "build_demo_data", lambda *a, **kw: {"files": {}, "content_hash": "x"})
    monkeypatch.setattr(study, "balanced_repeats", lambda manifest, n: {"denoise_15": 1})
    monkeypatch.setattr(study, "probe_views", lambda root, manifest: [])
    monkeypatch.setattr(study, "evaluate_model", lambda model, root, device: fake)

    def run_one(args, arm, seed, root, repeats, views, device):
        assert not fail_runs, "a run started"
        run_dir = Path(args.out) / "runs" / arm / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "eval.json").write_text(json.dumps({"train_seconds": 1.0, "eval_seconds": 1.0, "tasks": fake}))
        return fake, None, 2.0

    monkeypatch.setattr(study, "run_one", run_one)


def fake_argv(tmp: Path, *extra: str) -> list[str]:
    """A tiny study's flags, ``extra`` last; a list flag in ``extra`` (--arms, --seeds) replaces this one's (a flag
    of several values may be given once)."""
    lists = []
    for flag, values in (("--arms", ["baryir", "restormer"]), ("--seeds", ["0"])):
        if flag not in extra:
            lists += [flag, *values]
    return ["--out", str(tmp / "out"), "--root", str(tmp / "demo"), "--device", "cpu", "--iters", "2", "--epochs", "1",
            *lists, "--no-progress", *extra]


def test_the_figures_go_with_the_studys_own_results_by_default(tmp_path):
    """Without --quick the figures' default was figs/study, the committed figures: a partial study (its own --out, one
    arm, 2 iterations) replaced figs/study/psnr_by_arm.png and left a folder mixing two studies."""
    for extra in ([], ["--quick"]):
        args = study.resolve_settings(study.get_args_parser().parse_args(["--out", str(tmp_path / "o"), *extra]))
        assert Path(args.figs_dir) == tmp_path / "o" / "figs"
    args = study.resolve_settings(study.get_args_parser().parse_args([]))
    assert Path(args.figs_dir) == Path(args.out) / "figs" and Path(args.out) == Path("results/study")


def test_a_rerun_replaces_only_the_studys_own_outputs(tmp_path, monkeypatch, capsys):
    """A user's file at a name the study writes (<figs-dir>/psnr_by_arm.png, <out>/study.md) was replaced without a
    trace. It is moved to a *.before-<time> folder; the study's own outputs, unchanged since, are replaced."""
    fake_study(monkeypatch, tmp_path)
    figs = tmp_path / "out" / "figs"
    figs.mkdir(parents=True)
    (figs / "psnr_by_arm.png").write_bytes(b"my figure")
    (tmp_path / "out" / "study.md").write_text("my notes")
    assert study.cli(fake_argv(tmp_path)) == 0
    [kept] = (tmp_path / "out").glob("study.before-*")
    assert (kept / "figs" / "psnr_by_arm.png").read_bytes() == b"my figure"
    assert (kept / "study.md").read_text() == "my notes"
    assert sorted(p.name for p in kept.rglob("*") if p.is_file()) == ["psnr_by_arm.png", "study.md"]
    assert "2 files of the names the study writes were in" in capsys.readouterr().out
    written = {p: p.read_bytes() for p in [figs / "psnr_by_arm.png", tmp_path / "out" / "study.md"]}
    assert all(b"my " not in data for data in written.values())
    # a rerun replaces what the study wrote, keeps nothing aside; an edit since counts as the user's
    assert study.cli(fake_argv(tmp_path)) == 0
    assert len(list((tmp_path / "out").glob("study.before-*"))) == 1
    (tmp_path / "out" / "study.md").write_text("edited")
    assert study.cli(fake_argv(tmp_path)) == 0
    assert sorted((p.read_text() for p in (tmp_path / "out").glob("study.before-*/study.md"))) == ["edited", "my notes"]


def test_a_folder_flag_with_a_file_in_the_way_fails_before_any_run(tmp_path, monkeypatch, capsys):
    """--out naming a file raised FileExistsError; --figs-dir naming one raised only after every run had finished
    (~86 minutes in the full study), and study.md was not written."""
    fake_study(monkeypatch, tmp_path, fail_runs=True)
    (tmp_path / "a_file").write_text("mine")
    for flag in ("--out", "--figs-dir"):
        assert study.cli([*fake_argv(tmp_path), flag, str(tmp_path / "a_file")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} {tmp_path / 'a_file'}: a file, not a folder") and err.count("\n") == 1
    assert (tmp_path / "a_file").read_text() == "mine" and not (tmp_path / "out").exists()


def test_an_out_or_figs_dir_in_the_demo_data_folder_fails_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """--out data/demo (or a folder in it) was taken: the runs' loss curves and the figures went among the demo's
    images, and every later study, or make demo, on that --root was refused for images its manifest does not list;
    --out w2/out with a new --root w2 was refused as "files that are not the demo's", blaming --root."""
    fake_study(monkeypatch, tmp_path, fail_runs=True)
    root = tmp_path / "demo"
    for flag, folder in (("--out", root), ("--out", root / "out"), ("--figs-dir", root / "test" / "figs")):
        assert study.cli([*fake_argv(tmp_path), flag, str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} {folder} is ") and f"--root {root}" in err, err
        assert f"choose an {flag} outside it" in err and err.count("\n") == 1, err
    assert not root.exists() and not (tmp_path / "out").exists()


def test_damaged_caches_are_one_error_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """A truncated embeddings.npz (BadZipFile), a truncated eval.json (JSONDecodeError) and a study_config.json
    holding `{` were tracebacks; each is one error: line naming the file and what to delete."""
    from utils.study.runs import run_one
    fake_study(monkeypatch, tmp_path)
    assert study.cli(fake_argv(tmp_path)) == 0
    wb_dir, run_dir = (tmp_path / "out" / "runs" / arm / "seed0" for arm in ("baryir", "restormer"))
    buf = io.BytesIO()
    np.savez(buf, wb=np.zeros((2, 3)), residual=np.zeros((2, 3)), source=np.zeros((2, 3)), cos=np.zeros(2))
    (wb_dir / "embeddings.npz").write_bytes(buf.getvalue())  # baryir's run is cached whole
    good = (run_dir / "eval.json").read_text()
    (run_dir / "eval.json").write_text(good[:len(good) // 2])
    monkeypatch.setattr(study, "run_one", run_one)  # the real one: it reads the cache
    assert study.cli(fake_argv(tmp_path)) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {run_dir / 'eval.json'} is damaged") and err.count("\n") == 1
    assert out.endswith("restormer seed 0: \n")  # the run's line ends: the error line on a console starts its own
    assert "delete it to have that run evaluated again" in err
    (run_dir / "eval.json").write_text(good)

    (wb_dir / "embeddings.npz").write_bytes(buf.getvalue()[:200])
    assert study.cli(fake_argv(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {wb_dir / 'embeddings.npz'} is damaged") and err.count("\n") == 1
    assert "delete it to have that run evaluated and embedded again" in err
    (wb_dir / "embeddings.npz").write_bytes(b"\n")  # not an archive at all: numpy's words advised allow_pickle
    assert study.cli(fake_argv(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {wb_dir / 'embeddings.npz'} is damaged") and "pickle" not in err

    # `{}` and a config with a key of another kind parse, but are no study config: they read as "another setting
    # (iters: None there ...)"
    config = json.loads((tmp_path / "out" / "study_config.json").read_text())
    for text in ("{", "{}", "[]", json.dumps({**config, "iters": "2"}), json.dumps({**config, "repeats": 1})):
        (tmp_path / "out" / "study_config.json").write_text(text)
        assert study.cli(fake_argv(tmp_path)) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / 'out' / 'study_config.json'} is damaged") and err.count("\n") == 1
        assert "another setting" not in err and "delete just it" in err


@pytest.mark.parametrize("flags, said", [(["--scale", "0"], "--scale must lie in [0.05, 4], got 0.0"),
                                         (["--scale", "-1"], "--scale must lie in [0.05, 4], got -1.0"),
                                         (["--max-photos", "0"], "--max-photos must be an integer >= 1"),
                                         (["--seeds", "-1"], "--seeds must be in 0..2**63-1"),
                                         (["--scale", "0.25", "--patch-size", "128"],
                                          "--patch-size 128 is larger than the demo data's training images at "
                                          "--scale 0.25 (96x96)"),
                                         (["--batch-size", "100000"], "--batch-size 100000 is more than the demo "
                                          "data's 96 distinct training samples (12 crops, each with 3 noise levels, "
                                          "2 rainy and 3 hazy versions), so a batch would hold one of them twice or "
                                          "more — pass --batch-size 96 or less"),
                                         (["--scale", "0.25", "--max-photos", "1", "--batch-size", "17"],
                                          "--batch-size 17 is more than the demo data's 16 distinct training samples "
                                          "(2 crops, each with 3 noise levels, 2 rainy and 3 hazy versions), so a "
                                          "batch would hold one of them twice or more — pass --batch-size 16 or less, "
                                          "or leave out --max-photos (more photos)")])
def test_every_flag_error_exits_2(flags, said, tmp_path, monkeypatch, capsys):
    """--scale 0, --scale -1 and --max-photos 0 exited 1 (the data builder said them), other flag errors 2; --seeds -1,
    a --patch-size larger than the data's training crops and a --batch-size larger than its distinct samples (100000:
    2.3 TiB, refused by each run's memory check) failed every run, each with "training failed", after --out had
    recorded the setting, which then refused the corrected command as "another setting"."""
    monkeypatch.chdir(tmp_path)  # before, the runs started: nothing of theirs may reach the checkout
    assert study.cli(fake_argv(tmp_path, *flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo").exists()


def test_a_batch_of_every_distinct_training_sample_is_taken(tmp_path):
    """The bound on --batch-size is the demo data's distinct samples, which a batch of that size may hold."""
    for flags in (["--scale", "0.25", "--max-photos", "1", "--batch-size", "16"], ["--batch-size", "96"]):
        args = study.resolve_settings(study.get_args_parser().parse_args(fake_argv(tmp_path, *flags)))
        assert args.batch_size == int(flags[-1])


def test_a_batch_and_patch_beyond_the_memory_are_refused_before_out_is_written(tmp_path, monkeypatch, capsys):
    """--batch-size 96 --patch-size 384 is within the demo data's bounds but needs about 424 GiB by the trainer's
    estimate: every run failed on the trainer's memory check ("training failed"), after --out had recorded the setting.
    It is refused first, naming the largest run's need (the capacity-matched Restormer's, the widest network) and a
    batch and a patch that every run fits, by the trainer's own estimate of each run's own arguments."""
    from utils.dataset_utils import num_sources
    from utils.errors import human_bytes
    from utils.train import run_checks
    from utils.train.distributed import DistInfo
    from utils.train.options import get_args_parser as trainer_parser
    free = 8 * 2**30
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_checks, "available_bytes", lambda device: free)
    monkeypatch.setattr(run_checks, "resident_bytes", lambda: 0)  # this process's size moves between two reads

    def built(*a, **kw):
        raise AssertionError("the demo data was built: the setting was taken")
    monkeypatch.setattr(study, "build_demo_data", built)
    assert study.cli(fake_argv(tmp_path, "--arms", *ARMS, "--batch-size", "96", "--patch-size", "384")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()

    def need(arm, batch, patch):  # the trainer's estimate of the run the study starts for arm
        args = study.get_args_parser().parse_args(fake_argv(tmp_path, "--batch-size", str(batch), "--patch-size",
                                                            str(patch)))
        targs = trainer_parser().parse_args(trainer_argv(args, ARMS[arm], 0, tmp_path / "demo", tmp_path / "t",
                                                         dict.fromkeys(ID_TASKS, 1)))
        return run_checks.memory_need(targs, num_sources(targs.de_type), DistInfo()).total
    largest = max(ARMS, key=lambda a: need(a, 96, 384))
    assert largest == "restormer_matched"
    assert err.startswith(f"error: --batch-size 96 --patch-size 384: the largest of the study's runs to train "
                          f"({largest}) needs about {human_bytes(need(largest, 96, 384))} by the trainer's estimate, "
                          f"but 8.0 GiB are free on this machine, so the trainer would refuse it — pass --batch-size ")
    batch = int(err.split("--batch-size ")[2].split()[0])
    patch = int(err.split("--patch-size ")[2].split()[0])
    assert all(need(a, batch, 384) <= free for a in ARMS) and need(largest, batch + 1, 384) > free
    assert all(need(a, 96, patch) <= free for a in ARMS) and need(largest, 96, patch + 8) > free
    assert patch % 8 == 0 and patch >= 16


def test_an_arm_whose_runs_are_all_evaluated_is_not_held_to_the_memory(tmp_path, monkeypatch):
    """Its runs train no more (their caches are read): a study whose runs a larger machine trained was refused on a
    smaller one, for memory those runs no longer need; an arm with a run still to train is held to it."""
    from utils.train import run_checks
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_checks, "available_bytes", lambda device: 8 * 2**30)
    monkeypatch.setattr(run_checks, "resident_bytes", lambda: 0)

    class Built(Exception):
        pass

    def built(*a, **kw):
        raise Built
    monkeypatch.setattr(study, "build_demo_data", built)
    for arm in ("baryir", "restormer"):
        (tmp_path / "out" / "runs" / arm / "seed0").mkdir(parents=True)
        (tmp_path / "out" / "runs" / arm / "seed0" / "eval.json").write_text("{}")
    big = ["--batch-size", "96", "--patch-size", "384"]
    with pytest.raises(Built):  # past the check, on to the data
        study.main(study.get_args_parser().parse_args(fake_argv(tmp_path, *big)))
    with pytest.raises(StudyError, match=r"the largest of the study's runs to train \(baryir\)"):
        study.main(study.get_args_parser().parse_args(fake_argv(tmp_path, *big, "--seeds", "0", "1")))


def test_the_batch_and_patch_help_says_the_bounds_the_checks_apply(tmp_path):
    """--batch-size's help writes the demo data's distinct samples at --scale 1 by hand (counting the crops decodes
    the photos): they are check_batch_size's own words and numbers."""
    import re
    actions = {a.dest: a.help for a in study.get_args_parser()._actions}
    args = study.resolve_settings(study.get_args_parser().parse_args(fake_argv(tmp_path)))
    args.batch_size = 10**6
    with pytest.raises(StudyError) as err:
        study.check_batch_size(args, study.requested_params(0, 1.0, None))
    samples, crops = re.search(r"data's (\d+) distinct training samples \((.*?)\)", str(err.value)).groups()
    assert f"({samples}: {crops}; fewer with --max-photos)" in " ".join(actions["batch_size"].split())
    side = study.requested_params(0, 1.0, None)["train_side"]
    assert f"({side} at --scale 1)" in actions["patch_size"]


def _psnr_figure(monkeypatch, seeds, figs_dir):
    """The PSNR figure :func:`figures` draws for two arms over ``seeds`` (fake results), as a matplotlib Figure."""
    from utils.study import report
    drawn = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path, **kw: drawn.setdefault(Path(path).name, fig))
    arms, rng = ["baryir", "restormer"], np.random.default_rng(0)
    evals = {(a, s): {t: {"psnr": 0.0, "ssim": 0.0, "images": {"a.png": [25 + rng.normal(), 0.8]}}
                      for t in ID_TASKS + OOD_TASKS} for a in arms for s in seeds}
    degraded = evals[(arms[0], seeds[0])]
    report.figures(summarise(evals, arms, seeds), {}, degraded, arms, seeds, figs_dir)
    return drawn["psnr_by_arm.png"]


def test_the_psnr_figure_is_read_by_position_and_one_seed_has_no_error_bars(monkeypatch, tmp_path):
    """Bars started at the lowest mean - 3 dB (set_ylim), so their lengths misled; with one seed the title said
    "mean ± std over 1 seed(s)" and drew zero-height error bars."""
    from matplotlib.container import BarContainer, ErrorbarContainer
    for seeds in ([0], [0, 1, 2]):
        fig = _psnr_figure(monkeypatch, seeds, tmp_path)
        for ax in fig.axes:
            bars = [c for c in ax.containers if isinstance(c, BarContainer)]
            assert not bars or ax.get_ylim()[0] == 0, "bars that do not start at 0"
            points = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            assert points and all(c.has_yerr == (len(seeds) > 1) for c in points)
        title = fig._suptitle.get_text()
        assert ("±" in title) == (len(seeds) > 1) and "(s)" not in title
        assert len(seeds) == 1 or f"over {len(seeds)} seeds" in title


def test_the_plan_counts_in_words_and_its_estimate_includes_a_runs_fixed_cost(tmp_path):
    """The plan said "(1 trainings)" and "1 epoch(s)"; its estimate at tiny settings ("up to 6 s ... baryir 4 s,
    restormer 2 s per seed") left out what a run costs beside its iterations and images (26 s and 7 s in reality)."""
    from utils.study.budget import FIXED_SECONDS, estimated_seconds
    args = study.resolve_settings(study.get_args_parser().parse_args(fake_argv(tmp_path, "--scale", "0.25")))
    args.arms = ["baryir"]
    text = plan(args, {"denoise_15": 1})
    assert "(1 training)" in text and "(1 epoch of 2" in text and "(s)" not in text
    assert estimated_seconds(args)["baryir"] >= FIXED_SECONDS > 0


def test_the_estimate_leaves_out_the_runs_already_finished(tmp_path, monkeypatch, capsys):
    """Run again after a stop (or with a seed added), the plan estimated every run, those read from their caches too:
    a rerun of a tiny study with both runs cached said "estimate: up to 46 s" and only read them."""
    fake_study(monkeypatch, tmp_path)
    assert study.cli(fake_argv(tmp_path)) == 0  # baryir and restormer, seed 0
    capsys.readouterr()
    assert study.cli(fake_argv(tmp_path)) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  estimate:"))
    assert line == (f"  estimate: all 2 runs already finished in {tmp_path / 'out'} (read from their caches): only "
                    f"the tables and figures are left")
    assert study.cli(fake_argv(tmp_path, "--seeds", "0", "1")) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  estimate:"))
    assert line.startswith(f"  estimate: 2 of 4 runs already finished in {tmp_path / 'out'} (read from their caches); "
                           f"the other 2: up to "), line
    from utils.study.budget import estimated_seconds, minutes
    args = study.resolve_settings(study.get_args_parser().parse_args(fake_argv(tmp_path, "--seeds", "0", "1")))
    assert f"the other 2: up to {minutes(sum(estimated_seconds(args).values()))} on " in line, line  # seed 1 only


def test_busy_cores_get_a_note_naming_torch_threads_1(tmp_path, monkeypatch, capsys):
    """On a 2-core machine other processes kept busy, the study's torch threads (2, torch's default) waited on each
    other: an evaluation took 23-30 s that took 2-3 s with --torch-threads 1, and nothing said so."""
    from utils.study.budget import busy_cores_note
    assert busy_cores_note(1, 9.0, 2) is None and busy_cores_note(2, 1.5, 2) is None
    assert "--torch-threads 1 can be several times faster" in busy_cores_note(2, 6.5, 2)
    fake_study(monkeypatch, tmp_path)
    monkeypatch.setattr(study.os, "getloadavg", lambda: (7.0, 7.0, 7.0))
    monkeypatch.setattr(study.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        for threads, said in (("2", True), ("1", False)):
            assert study.cli(fake_argv(tmp_path, "--torch-threads", threads, "--seeds", threads)) == 0
            err = capsys.readouterr().err
            assert ("note: this machine's 2 cores are busy (load average 7.0)" in err) == said, err
        assert study.cli(fake_argv(tmp_path, "--torch-threads", "2", "--seeds", "2")) == 0  # every run cached
        assert "busy" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_the_estimate_of_the_full_study_covers_its_recorded_time():
    """STUDY.md records the full study's total (its 24 runs' training and evaluation); the plan's estimate of that
    setting, "up to" on the safe side, must not be below it."""
    import re
    from types import SimpleNamespace

    from utils.study.budget import FULL, estimated_seconds
    text = (REPO / "STUDY.md").read_text()
    runs, minutes = re.search(r"the (\d+) runs recorded ([\d.]+) minutes of training and\s+evaluation", text).groups()
    args = SimpleNamespace(arms=list(ARMS), iters=FULL["iters"], batch_size=4, patch_size=64, scale=1.0)
    assert int(runs) == len(ARMS) * len(FULL["seeds"])
    assert sum(estimated_seconds(args).values()) * len(FULL["seeds"]) >= float(minutes) * 60


def test_the_estimate_covers_the_smoke_runs(smoke):
    """The estimate is "up to": at tiny settings it said 4 s for BaryIR and 2 s for Restormer where the runs took 26 s
    and 7 s (a run's fixed cost was left out). Each smoke run's recorded time stays within twice its estimate (twice:
    the cores are shared, and the estimate is for a machine where another process holds one)."""
    from utils.study.budget import estimated_seconds
    tmp, _ = smoke
    planned = estimated_seconds(study.resolve_settings(smoke_args(tmp)))
    for arm in ARMS:
        r = json.loads((tmp / "out" / "runs" / arm / "seed0" / "eval.json").read_text())
        assert r["train_seconds"] + r["eval_seconds"] <= 2 * planned[arm], (arm, r["train_seconds"], planned[arm])


@pytest.mark.parametrize("where", ["figs/psnr_by_arm.png", "study.md", "study.json", "study_config.json"])
def test_a_folder_at_an_output_name_fails_before_any_run(where, tmp_path, monkeypatch, capsys):
    """A folder at one of the study's file names (<out>/figs/psnr_by_arm.png, <out>/study.md) was met after every run,
    with the earlier study.md, study.json and figures already moved aside: exit 1 and nothing written."""
    fake_study(monkeypatch, tmp_path)
    assert study.cli(fake_argv(tmp_path)) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    fake_study(monkeypatch, tmp_path, fail_runs=True)
    monkeypatch.setattr(study, "build_demo_data", lambda *a, **kw: pytest.fail("the data was built"))
    path = tmp_path / "out" / where
    path.unlink()
    del before[path]
    path.mkdir()
    assert study.cli(fake_argv(tmp_path)) == 2
    err = capsys.readouterr().err
    flag = "--figs-dir" if where.startswith("figs/") else "--out"
    assert err == f"error: {path}: a folder is where the study writes its file {path.name} — move or rename that " \
                  f"folder, or choose another {flag}\n"
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before


def test_torch_threads_is_its_own_flag_and_threads_a_deprecated_name_for_it(tmp_path, monkeypatch, capsys):
    """The study's --threads set torch's CPU threads, where trainer_bary.py's --threads (--workers) counts data-loader
    workers: `--threads 4`, copied from a trainer's command, changed the study's torch threads. It is --torch-threads
    now; --threads (STUDY.md listed it) still works, with a note naming the new flag."""
    fake_study(monkeypatch, tmp_path)
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    try:
        for flags, note in ((["--torch-threads", str(want)], False), (["--threads", str(want)], True)):
            torch.set_num_threads(before)
            assert study.cli(fake_argv(tmp_path, *flags)) == 0
            assert torch.get_num_threads() == want
            err = capsys.readouterr().err
            assert ("note: --threads is deprecated here" in err and f"--torch-threads {want}" in err) == note, err
    finally:
        torch.set_num_threads(before)
    assert study.cli(fake_argv(tmp_path, "--threads", "2", "--torch-threads", "3")) == 2
    assert capsys.readouterr().err == ("error: --threads 2 and --torch-threads 3 disagree: pass --torch-threads only "
                                       "(--threads is its deprecated name)\n")
    help_text = " ".join(study.get_args_parser().format_help().split())
    assert "--torch-threads TORCH_THREADS torch's CPU threads" in help_text
    assert "not the trainers' --threads, their data-loader workers" in help_text
    assert "--threads THREADS deprecated: the former name of --torch-threads" in help_text


def test_a_second_study_in_the_same_out_is_refused_while_the_first_runs(tmp_path, monkeypatch, capsys):
    """The same command started twice (two terminals) ran both: the second evaluated a run the first had just trained
    again, beside it, and both wrote the tables and figures. It is one error line naming the first one's PID now;
    after the first has ended, the next runs."""
    from utils.output_lock import OutputLock
    fake_study(monkeypatch, tmp_path, fail_runs=True)
    monkeypatch.setattr(study, "build_demo_data", lambda *a, **kw: pytest.fail("the data was built"))
    with OutputLock(tmp_path / "out", flag="--out", role="study"):  # the first study, still running
        assert study.cli(fake_argv(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err == (f"error: --out {tmp_path / 'out'} is in use by another study (PID {os.getpid()} on "
                   f"{socket.gethostname()}); wait for it to finish or choose another --out\n"), err
    assert not (tmp_path / "out").exists()  # nothing written, nothing left behind
    fake_study(monkeypatch, tmp_path)
    assert study.cli(fake_argv(tmp_path)) == 0
    assert (tmp_path / "out" / "study.md").is_file() and not (tmp_path / "out" / ".lock").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_fails_before_the_data_and_out(tmp_path, monkeypatch, capsys):
    """--device cuda on a machine without a GPU was refused after the demo data was built and --out had recorded
    the setting (study_config.json): now before either."""
    fake_study(monkeypatch, tmp_path, fail_runs=True)
    monkeypatch.setattr(study, "build_demo_data", lambda *a, **kw: pytest.fail("the data was built"))
    assert study.cli(fake_argv(tmp_path, "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda asks for a CUDA GPU, but none is visible") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_arm_or_seed_named_twice_runs_once(tmp_path):
    """--seeds 0 0 ran seed 0 once, --arms restormer restormer made two identical arm rows: both keep the first
    occurrence of each, in order."""
    argv = ["--out", str(tmp_path / "o"), "--arms", "restormer", "baryir", "restormer", "--seeds", "1", "0", "1"]
    args = study.resolve_settings(study.get_args_parser().parse_args(argv))
    assert args.arms == ["restormer", "baryir"] and args.seeds == [1, 0]


_TERM_AS_THE_TRAINER_STARTS = """import os, runpy, signal, sys, time
from utils.train import engine
def check_run(*args, **kwargs):  # SIGTERM while the study's trainer checks its flags and data
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
engine.check_run = check_run
sys.argv = ["bench/study.py", *{argv!r}]
runpy.run_path("bench/study.py", run_name="__main__")
"""


def test_sigterm_as_a_trainer_starts_stops_the_study_in_one_line_naming_it(tmp_path):
    """`kill` of a study while its trainer started ended it without a word (killed by the signal): the study, unlike
    the demo and the tester, left SIGTERM to the kernel, so the trainer never returned 143 for the study to name."""
    argv = ["--out", str(tmp_path / "out"), "--root", str(tmp_path / "demo"), "--device", "cpu", "--iters", "2",
            "--epochs", "1", "--arms", "baryir", "--seeds", "0", "--no-progress"]
    done = subprocess.run([sys.executable, "-c", _TERM_AS_THE_TRAINER_STARTS.format(argv=argv)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: study stopped by SIGTERM; the finished runs and the last checkpoint are kept in {tmp_path / 'out'}"
        f"/runs. Run the same command again to continue."), done.stderr


def test_torch_threads_above_the_cores_is_said_in_one_warning(tmp_path, monkeypatch, capsys):
    """--torch-threads 8 on a 2-core machine oversubscribed its cores without a word (every operation's threads wait
    on each other: the study several times slower). It runs as asked, after one warning line naming the cores."""
    fake_study(monkeypatch, tmp_path)
    monkeypatch.setattr(study, "usable_cores", lambda: 2, raising=False)
    before = torch.get_num_threads()
    try:
        assert study.cli(fake_argv(tmp_path, "--torch-threads", "3")) == 0
        warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        assert warned == ["warning: --torch-threads 3 is more than the 2 cores this process may use: torch's threads "
                          "will wait on each other at every operation, often several times slower; --torch-threads 2 "
                          "or fewer (0: torch's default) is faster"]
        assert torch.get_num_threads() == 3
        for threads in ("2", "0"):
            assert study.cli(fake_argv(tmp_path, "--torch-threads", threads)) == 0
            assert "warning:" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_usable_cores_are_the_processes_affinity(monkeypatch):
    """taskset -c 0 on a 2-core machine: one core to use, whatever os.cpu_count says."""
    from utils import runtime
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    assert runtime.usable_cores() == 1
    monkeypatch.delattr(runtime.os, "sched_getaffinity", raising=False)  # macOS
    assert runtime.usable_cores() == 2


def test_a_second_study_writing_the_same_figs_dir_is_refused_while_the_first_runs(tmp_path, monkeypatch, capsys):
    """Two studies of two --out but one --figs-dir ran together, each replacing (or moving aside) the other's
    figures: --out was held, --figs-dir not. It is held too now; --figs-dir equal to --out is held once."""
    from utils.output_lock import OutputLock
    fake_study(monkeypatch, tmp_path, fail_runs=True)
    monkeypatch.setattr(study, "build_demo_data", lambda *a, **kw: pytest.fail("the data was built"))
    figs = tmp_path / "shared-figs"
    with OutputLock(figs, flag="--out", role="study"):  # the first study (whose --out this is), still running
        assert study.cli(fake_argv(tmp_path, "--figs-dir", str(figs))) == 1
    err = capsys.readouterr().err
    assert err == (f"error: --figs-dir {figs} is in use by another study (PID {os.getpid()} on "
                   f"{socket.gethostname()}); wait for it to finish or choose another --figs-dir\n"), err
    assert not (tmp_path / "out").exists() and not figs.exists()  # nothing written, nothing left behind
    fake_study(monkeypatch, tmp_path)
    assert study.cli(fake_argv(tmp_path, "--figs-dir", str(figs))) == 0
    assert (figs / "psnr_by_arm.png").is_file() and not (figs / ".lock").exists()
    assert study.cli(fake_argv(tmp_path, "--out", str(tmp_path / "both"), "--figs-dir", str(tmp_path / "both"))) == 0
    assert (tmp_path / "both" / "psnr_by_arm.png").is_file() and not (tmp_path / "both" / ".lock").exists()
