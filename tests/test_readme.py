"""Every command the README shows parses with the argument parser of the script it runs."""
import re
import shlex
from pathlib import Path

import pytest

import tester_bary
from utils.demo import run as demo
from utils.train import options as train_options

README = Path(__file__).resolve().parents[1] / "README.md"
PARSERS = {
    "trainer_bary.py": train_options.get_args_parser,
    "trainer_bary_ddp.py": train_options.get_args_parser,
    "tester_bary.py": tester_bary.get_args_parser,
    "utils.demo": demo.get_args_parser,
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


def test_trainer_accepts_snake_case_spellings_of_the_reference_flags():
    parse = train_options.get_args_parser().parse_args
    reference = parse(["--batchSize", "6", "--nEpochs", "3"])
    for argv in (["--batch_size", "6", "--n_epochs", "3"], ["--batch-size", "6", "--epochs", "3"]):
        args = parse(argv)
        assert (args.batchSize, args.nEpochs) == (reference.batchSize, reference.nEpochs) == (6, 3)
