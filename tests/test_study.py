"""bench/study.py end to end in a smoke setting: structure and finiteness, not who wins."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

import study

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
    arms = list(study.ARMS)
    assert res["settings"]["arms"] == arms and res["settings"]["seeds"] == [0]

    table = res["summary"]["table"]
    assert set(table) == set(arms)
    for arm in arms:
        for name in study.ID_TASKS + study.OOD_TASKS + ("ID", "OOD"):
            mean, std = table[arm][name]["psnr"]
            assert math.isfinite(mean) and 0 < mean < 100 and std is None  # one seed: no std
            assert 0 < table[arm][name]["ssim"][0] <= 1

    vs = res["summary"]["vs_baseline"]
    assert set(vs) == set(study.ID_TASKS + study.OOD_TASKS + ("ID", "OOD"))
    for c in vs.values():
        assert c["images"]["n"] >= 2  # two test photos (one seed) per task, more per group
        assert math.isfinite(c["images"]["mean"]) and all(_finite(c["images"][k]) for k in ("p_t", "p_wilcoxon"))
        assert c["seeds"]["n"] == 1 and c["seeds"]["ci95"] is None
        assert isinstance(c["verdict"], str) and c["verdict"]
    assert set(res["summary"]["ablations"]) == {"no_orthogonality", "no_contrastive", "no_potentials"}

    probe = res["probe"]
    assert set(probe) == {a for a in arms if study.ARMS[a].backbone == "BaryNet"}
    for per in probe.values():
        for set_name in study.PROBE_SETS:
            for space in study.SPACES:
                (acc,) = per[f"{set_name}/{space}"]
                assert 0.0 <= acc <= 1.0
        assert -1.0 <= per["cos"][0] <= 1.0 and 0.0 <= per["abs_cos"][0] <= 1.0
    assert res["probe_counts"]["test_photos"] == 2 and res["probe_counts"]["train_crops"] >= 1

    for name in ("psnr_by_arm.png", "baryir_minus_baseline.png", "probe_accuracy.png"):
        assert (tmp / "figs" / name).stat().st_size > 0
    md = (out / "study.md").read_text()
    assert "BaryIR − Restormer baseline" in md and "Linear probe" in md and "command:" in md
    saved = json.loads((out / "study.json").read_text())
    assert saved["summary"]["vs_baseline"].keys() == vs.keys()
    for arm in arms:
        assert (out / "runs" / arm / "seed0" / "eval.json").is_file()

    def logged(arm):
        lines = (out / "runs" / arm / "seed0" / "train" / "log.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == "iter"]
    assert all("congruence" in r for r in logged("baryir"))
    assert logged("no_potentials") and not any("potentials" in r or "congruence" in r for r in logged("no_potentials"))


def test_rerun_uses_the_caches_and_refuses_another_setting(smoke, capsys):
    tmp, res = smoke
    capsys.readouterr()
    again = study.main(smoke_args(tmp))
    assert capsys.readouterr().out.count("cached") == len(study.ARMS)
    assert again["summary"]["table"] == res["summary"]["table"]
    with pytest.raises(study.StudyError, match="another setting"):
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
    reps = study.balanced_repeats({"files": files}, min_samples=400)
    shares = [3 * 12 * reps["denoise_15"], 24 * reps["derain"], 36 * reps["dehaze"]]
    assert reps["denoise_15"] == reps["denoise_25"] == reps["denoise_50"]
    assert sum(shares) >= 400 and max(shares) / min(shares) < 1.3


def test_paired_stats_and_verdict():
    s = study.paired_stats([1.0, 1.2, 0.9, 1.1])
    assert s["ci95"][0] > 0 and s["p_t"] < 0.01
    noise = study.paired_stats([1.0, -1.0, 0.5])
    assert study.verdict(s, noise, "A", "B").startswith("consistent over images (A)")
    assert study.verdict(s, s, "A", "B") == "larger than the seed-to-seed noise: A"
    assert study.verdict(noise, noise, "A", "B") == "not distinguishable from noise"
    assert study.paired_stats([0.0, 0.0])["p_wilcoxon"] is None


def test_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    classes = ("a", "b", "c")
    labels = [c for _ in range(6) for c in classes]
    photos = [f"p{i}" for i in range(6) for _ in classes]
    feats = np.stack([np.eye(4)[classes.index(c)] * 3 + rng.normal(0, 0.3, 4) for c in labels])
    test = np.array([int(p[1:]) >= 3 for p in photos])
    assert study.probe_accuracy(feats, labels, photos, test, classes) == 1.0
    shuffled = rng.normal(0, 1, feats.shape)
    assert study.probe_accuracy(shuffled, labels, photos, test, classes) < 1.0


def test_logistic_gradient_matches_finite_differences():
    from scipy.optimize import check_grad
    rng = np.random.default_rng(1)
    x = np.hstack([rng.normal(size=(12, 5)), np.ones((12, 1))])
    onehot = np.eye(3)[rng.integers(0, 3, 12)]
    w = rng.normal(size=6 * 3)
    err = check_grad(lambda v: study.logistic_loss(v, x, onehot, 0.1)[0],
                     lambda v: study.logistic_loss(v, x, onehot, 0.1)[1], w)
    assert err < 1e-5


def test_summary_tables_and_figures_over_several_seeds(tmp_path):
    """The multi-seed paths (std, seed-level tests, probe over seeds) on synthetic results: no training."""
    rng = np.random.default_rng(0)
    seeds, arms = [0, 1, 2], list(study.ARMS)
    images = ["a.png", "b.png", "c.png"]

    def fake_eval(offset):
        return {t: {"psnr": 0.0, "ssim": 0.0, "images": {n: [25 + offset + rng.normal(0, 0.3), 0.8] for n in images}}
                for t in study.ID_TASKS + study.OOD_TASKS}
    evals = {(a, s): fake_eval(2.0 if a == "baryir" else 0.0) for a in arms for s in seeds}
    summary = study.summarise(evals, arms, seeds)
    assert summary["table"]["baryir"]["ID"]["psnr"][1] is not None
    c = summary["vs_baseline"]["ID"]
    assert c["seeds"]["n"] == 3 and c["images"]["n"] == 3 * 3 * len(study.ID_TASKS)
    assert c["verdict"] == "larger than the seed-to-seed noise: BaryIR better"
    assert summary["ablations"]["no_potentials"]["OOD"]["verdict"].endswith("full BaryIR better")

    classes = study.PROBE_SETS["all"]
    labels = [c for _ in range(7) for c in classes]
    photos = [f"p{i}" for i in range(7) for _ in classes]
    test = np.array([i < 3 for i in range(7) for _ in classes])
    n = len(labels)
    onehot = np.eye(len(classes))[[classes.index(c) for c in labels]]

    def fake_embeddings():  # residual separates the types, WB and source carry nothing
        return {"wb": rng.normal(size=(n, 8)), "residual": 3 * onehot + rng.normal(0, 0.2, onehot.shape),
                "source": rng.normal(size=(n, 8)), "cos": rng.uniform(-0.1, 0.1, n)}
    emb = {(a, s): fake_embeddings() for a in arms if study.ARMS[a].backbone == "BaryNet" for s in seeds}
    probe = study.probe_summary(emb, labels, photos, test, arms, seeds)
    assert np.mean(probe["baryir"]["all/residual"]) == 1.0 and np.mean(probe["baryir"]["all/wb"]) < 0.6
    degraded = fake_eval(-5.0)
    md = study.tables(summary, probe, degraded, arms, seeds, {"test_photos": 3, "train_crops": 4})
    assert md.count("±") > 50 and "larger than the seed-to-seed noise" in md
    paths = study.figures(summary, probe, degraded, arms, seeds, tmp_path)
    assert [p.name for p in paths] == ["psnr_by_arm.png", "baryir_minus_baseline.png", "probe_accuracy.png"]
