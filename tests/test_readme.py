"""Every command the README shows parses with the argument parser of the script it runs, and runs its first
lines (everything up to the work) on a tiny layout."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_data import make_test_tree, make_train_tree

import tester_bary
from net.presets import build_model
from utils.analysis import own_photos
from utils.data import doctor
from utils.data.image_io import read_image, write_image
from utils.demo import run as demo
from utils.errors import UserError
from utils.train import engine, run_checks
from utils.train import options as train_options

README = Path(__file__).resolve().parents[1] / "README.md"
PARSERS = {
    "trainer_bary.py": train_options.get_args_parser,
    "trainer_bary_ddp.py": train_options.get_args_parser,
    "tester_bary.py": tester_bary.get_args_parser,
    "utils.demo": demo.get_args_parser,
    "utils.analysis": own_photos.get_args_parser,
}


def _commands():
    """Shell commands inside the README's code blocks, continuation lines joined."""
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", README.read_text(), flags=re.S)
    cmds = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if any(script in line for script in PARSERS):
                cmds.append(line)
    return cmds


def _script_args(cmd):
    words = shlex.split(cmd)
    for i, w in enumerate(words):
        name = Path(w).name
        if name in PARSERS:
            return name, words[i + 1:]
        if w == "-m" and i + 1 < len(words) and words[i + 1] in PARSERS:
            return words[i + 1], words[i + 2:]
    raise AssertionError(f"no script in {cmd!r}")


COMMANDS = _commands()


def test_readme_shows_the_two_commands_and_the_scripts():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    shown = {_script_args(c)[0] for c in COMMANDS}
    assert {"trainer_bary.py", "trainer_bary_ddp.py", "tester_bary.py"} <= shown


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_parses(cmd):
    script, argv = _script_args(cmd)
    argv = [a.replace("$NODE_RANK", "0").replace("$MASTER_HOST", "localhost") for a in argv]
    PARSERS[script]().parse_args(argv)


def test_every_path_in_the_code_map_exists():
    """The README's code map names only files and folders that exist."""
    text = README.read_text()
    table = text[text.index("| where | what |"):text.index("## Real data")]
    paths = set()
    for row in table.splitlines():
        first = row.split("|")[1] if row.count("|") > 2 else ""
        paths |= {t for t in re.findall(r"`([\w./-]+)`", first) if "/" in t or "." in t or t == "Makefile"}
    assert len(paths) > 25
    root = README.parent
    missing = sorted(p for p in paths if not (root / p).exists())
    assert not missing, f"README code map names missing paths: {missing}"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ["README.md", "docs/METHOD.md", "STUDY.md", "BENCHMARKS.md"])
def test_every_link_within_a_document_leads_to_one_of_its_headings(doc):
    """The README's contents line links each section by its anchor: a heading renamed later leaves a dead link."""
    text = (README.parent / doc).read_text(encoding="utf-8")
    headings = {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert [a for a in links if a not in headings] == [], doc


@pytest.mark.parametrize("doc", ["README.md", "docs/METHOD.md", "STUDY.md", "BENCHMARKS.md"])
def test_every_file_a_document_links_to_or_shows_exists(doc):
    """A figure regenerated under another name, or a document moved, leaves a broken image or link on GitHub."""
    path = README.parent / doc
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    local = [t for t in targets if "://" not in t and not t.startswith("mailto:")]
    assert [t for t in local if not (path.parent / t).exists()] == [], doc


def test_trainer_accepts_snake_case_spellings_of_the_reference_flags():
    parse = train_options.get_args_parser().parse_args
    reference = parse(["--batchSize", "6", "--nEpochs", "3"])
    for argv in (["--batch_size", "6", "--n_epochs", "3"], ["--batch-size", "6", "--epochs", "3"]):
        args = parse(argv)
        assert (args.batchSize, args.nEpochs) == (reference.batchSize, reference.nEpochs) == (6, 3)


# --------------------------------------------------------------------------- the commands run

def _tree_snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def readme_layout(tmp_path_factory):
    """Tiny copies of the layout the README's commands expect, relative to the repository root, one for the
    trainers (training sets with the reference's id lists in ``data_dir/``, the test sets for validation, no
    runs yet) and one for the tester (the five test sets under ``data/test``, the checkpoints its commands name
    as tiny BaryNet weights carrying their configuration, PromptIR's official format, the user's photos)."""
    roots = {"train": tmp_path_factory.mktemp("readme_train"), "test": tmp_path_factory.mktemp("readme_test")}
    train = make_train_tree(roots["train"] / "data", five_d=True, size=160, id_lists=True)
    train["data_file_dir"].rename(roots["train"] / "data_dir")
    for root in roots.values():
        make_test_tree(root / "data" / "test", size=40)
    for root, side in ((roots["train"] / "data" / "Train", 160), (roots["test"] / "data" / "test", 40)):
        for i in range(3):  # a degradation of the user's own, in the training layout (the tester reads it too)
            clean = np.full((side, side, 3), 40 * i + 60, np.uint8)
            write_image(root / "single" / "target" / f"{i}.png", clean)
            write_image(root / "single" / "degraded" / f"{i}.png", clean // 2)
    root = roots["test"]
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny")
    ckpt = {"model": model.state_dict(), "model_config": model.config, "backbone": "BaryNet", "epoch": 1}
    for path in ("checkpoint/BaryNet_paper_3D_p128/epoch_001.pth", "checkpoint/BaryNet_paper_5D_p128_ddp/epoch_001.pth",
                 "checkpoint/BaryNet_paper_1D_p128/epoch_001.pth", "ckpt.pth"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, root / path)
    promptir = build_model("PromptIR", "paper")  # the official release's configuration, as a Lightning file
    torch.save({"state_dict": {f"net.{k}": v for k, v in promptir.state_dict().items()}, "epoch": 1},
               root / "promptir.ckpt")
    photo = read_image(root / "data" / "test" / "denoise" / "bsd68" / "test000.png")
    write_image(root / "my_photos" / "a.png", photo)
    write_image(root / "huge_4k.png", photo)
    return roots


def _run(script: str, argv: list[str]):
    """Run a script's ``main`` in this process as its command line would: ``(exit status, returned value)``."""
    if script == "tester_bary.py":
        try:
            return 0, tester_bary.main(tester_bary.get_args_parser().parse_args(argv))
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_status, str(exc)
    parser = train_options.get_args_parser(**({"threads_default": 4, "objective": "ddp"}
                                              if script == "trainer_bary_ddp.py" else {}))
    return engine.run_cli(parser.parse_args(argv)), None


@pytest.mark.slow
@pytest.mark.parametrize("cmd", COMMANDS, ids=range(len(COMMANDS)))
def test_readme_command_runs_its_first_lines(cmd, readme_layout, monkeypatch, capsys):
    """Each command runs as written (flags as shown, paths relative to the repository root) on a tiny layout,
    through every start-up step — flags, data, checkpoint, networks, memory — and stops before the work with
    --dry-run (--check-data commands run whole); nothing is written. A command naming the authors' own
    --resume file fails as the README says until that file exists, and runs without it."""
    script, argv = _script_args(cmd)
    if script in ("utils.demo", "utils.analysis"):
        pytest.skip(f"{script} runs in tests/test_{'demo' if script == 'utils.demo' else 'analysis_cli'}.py")
    argv = [a.replace("$NODE_RANK", "0").replace("$MASTER_HOST", "localhost") for a in argv]
    root = readme_layout["test" if script == "tester_bary.py" else "train"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))  # --gpus sets it
    monkeypatch.setattr(run_checks, "available_bytes", lambda device: 2**40)  # memory is tested in test_memory
    for key, n in {"denoise/bsd68": 3, "derain/rain100l": 3, "dehaze": 3, "deblur": 3, "lowlight": 3}.items():
        monkeypatch.setitem(doctor.TEST_EXPECTED, key, n)  # the tiny layout's counts
    if "--check-data" not in argv:
        argv = argv + ["--dry-run"]
    before = _tree_snapshot(root)
    own = next((a for a in argv if a.startswith("--resume=") and a != "--resume=auto"), None)
    if own is not None:
        status, _ = _run(script, argv)
        assert status == 1 and f"{own.split('=', 1)[1]}" in capsys.readouterr().err
        argv = [a for a in argv if a != own]
    status, value = _run(script, argv)
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "error:" not in out.err
    if "--check-data" not in argv:
        assert "=> dry run:" in out.out
    if script == "tester_bary.py" and "--check-data" not in argv:
        assert value["images"] > 0
    assert _tree_snapshot(root) == before


def test_the_from_python_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's Python snippet (load_model on checkpoint/demo, restore, a forward pass and its loss) runs on a
    tiny checkpoint with the x and target its comments describe, and gives what they say: no test ran it."""
    text = README.read_text()
    snippet = re.search(r"### From Python\n.*?```python\n(.*?)```", text, flags=re.S).group(1)
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny")
    (tmp_path / "checkpoint" / "demo").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "model_config": model.config, "backbone": "BaryNet", "epoch": 1},
               tmp_path / "checkpoint" / "demo" / "epoch_001.pth")
    monkeypatch.chdir(tmp_path)
    x, target = torch.rand(2, 3, 24, 40), torch.rand(2, 3, 24, 40)  # H, W multiples of 8, as model(x) needs
    scope = {"x": x, "target": target}
    exec(compile(snippet, "README.md (From Python)", "exec"), scope)
    assert scope["info"]["backbone"] == "BaryNet"
    assert scope["y"].shape == x.shape and scope["y"].dtype == torch.float32
    torch.testing.assert_close(scope["y"], scope["out"].restored.detach(), rtol=0, atol=1e-5)
    assert scope["loss"].ndim == 0 and torch.isfinite(scope["loss"])


def test_the_readmes_test_commands_name_folders_its_training_commands_write():
    """The 5D test command named checkpoint/BaryNet_paper_5D_p144, a folder only the authors' earlier example
    writes, while the README points at the patch-128 commands as the ones behind the released weights."""
    from utils.dataset_utils import check_de_types, num_sources
    written = {}
    for cmd in COMMANDS:
        script, argv = _script_args(cmd)
        if script.startswith("trainer_bary"):  # each script with its own defaults (the DDP one's objective)
            parser = train_options.get_args_parser(**({"threads_default": 4, "objective": "ddp"}
                                                      if script == "trainer_bary_ddp.py" else {}))
            args = parser.parse_args(argv)
            written[cmd] = train_options.run_dir(args, num_sources(check_de_types(args.de_type)))
    named = {a for cmd in COMMANDS if _script_args(cmd)[0] == "tester_bary.py"
             for a in _script_args(cmd)[1] if a.startswith("checkpoint/BaryNet_")}
    assert named and named <= set(written.values()), named - set(written.values())
    # the 5D run tested is the one the README calls the likeliest source of the released weights
    [released] = [folder for cmd, folder in written.items() if "--nEpochs=61" in cmd]
    assert released in named


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target, script", [("demo", "-m utils.demo"), ("app", "-m utils.app"),
                                            ("bench", "bench/bench_inference.py")])
def test_make_targets_that_run_a_script_pass_args_on(target, script):
    """`make demo ARGS=--quick` ran the full demo (about 8 minutes) without a word: only `make app` passed
    ARGS on, though the three targets run one script each with flags of its own."""
    shown = subprocess.run(["make", "-n", "-C", str(README.parent), target, "ARGS=--flag-passed-on"],
                           capture_output=True, text=True, check=True).stdout
    [line] = [ln for ln in shown.splitlines() if script in ln]
    assert line.endswith(f"{script} --flag-passed-on"), line


def test_the_parameter_counts_in_the_readme_and_method_tables_are_the_models():
    """The README said two test files pinned its backbone table, but they pinned 3 of its 8 numbers (the
    Restormer and tiny PromptIR counts were pinned nowhere); docs/METHOD.md §1.5 repeats them with tensor counts."""
    readme = README.read_text()
    rows = re.findall(r"^\| `(\w+)`[^|]*\|[^|]*\| ([\d,]+) \| ([\d,]+) \|$", readme, flags=re.M)
    method = (README.parent / "docs" / "METHOD.md").read_text()
    method_rows = re.findall(r"^\| (\w+) \| ([\d,]+) \((\d+)\) \| ([\d,]+) \((\d+)\) \|$", method, flags=re.M)
    assert {r[0] for r in rows} == {r[0] for r in method_rows} == {"BaryNet", "BaryPromptIR", "PromptIR", "Restormer"}
    built = {}
    for backbone in ("BaryNet", "BaryPromptIR", "PromptIR", "Restormer"):
        for preset in ("paper", "tiny"):
            model = build_model(backbone, preset)
            built[backbone, preset] = (sum(p.numel() for p in model.parameters()), len(model.state_dict()))
            del model
    as_int = lambda text: int(text.replace(",", ""))  # noqa: E731
    for backbone, paper, tiny in rows:
        assert (as_int(paper), as_int(tiny)) == (built[backbone, "paper"][0], built[backbone, "tiny"][0]), backbone
    for backbone, paper, paper_tensors, tiny, tiny_tensors in method_rows:
        assert (as_int(paper), int(paper_tensors)) == built[backbone, "paper"], backbone
        assert (as_int(tiny), int(tiny_tensors)) == built[backbone, "tiny"], backbone


def test_the_published_numbers_and_set_sizes_in_the_readme_are_the_testers():
    """The README's table of published BaryIR results and its list of the paper's set sizes are what
    --compare-paper compares with and what marks a column "not comparable" (utils/eval/paper.py)."""
    from utils.eval import paper
    readme = README.read_text()
    header = re.search(r"^\| setting \|(.*)\|$", readme, flags=re.M).group(1)
    columns = [c.strip() for c in header.split("|")]
    shown = {}
    for setting, cells in re.findall(r"^\| (3D|5D) \|(.*)\|$", readme, flags=re.M):
        values = [c.strip() for c in cells.split("|")]
        shown[setting.lower()] = {col: tuple(map(float, v.split("/"))) for col, v in zip(columns, values) if v}
    assert shown == paper.PUBLISHED
    sizes = re.search(r"\(SOTS outdoor (\d+), Rain100L (\d+), BSD68 (\d+),\s+GoPro (\d+), LOL (\d+)\)", readme)
    assert sizes is not None
    assert dict(zip(("SOTS", "Rain100L", "BSD68", "GoPro", "LOL"), map(int, sizes.groups()))) == paper.SET_SIZES
