"""One spelling style: every command accepts kebab-case and snake_case (and the reference's own
spelling), and its help shows each flag once, in kebab-case."""
import argparse
import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import tester_bary
from utils.cli import kebab
from utils.demo import run as demo
from utils.streams import PIPE_CLOSED_STATUS
from utils.train import options as train_options

REPO = Path(__file__).resolve().parents[1]
PARSERS = {"trainer": train_options.get_args_parser, "tester": tester_bary.get_args_parser,
           "demo": demo.get_args_parser}
# Case-sensitive pairs of the reference, two flags whose kebab-case spellings would coincide.
KEPT_AS_DECLARED = {"--Sigma"}


@pytest.mark.parametrize("name", PARSERS)
def test_help_shows_each_flag_once_in_kebab_case(name):
    text = PARSERS[name]().format_help()
    shown = re.findall(r"^  (-\S+)", text.split("options:", 1)[1], flags=re.M)
    longs = [s.split(", ")[-1].rstrip(",") for s in shown]
    assert len(longs) > 10
    bad = [f for f in longs if f.startswith("--") and f != kebab(f) and f not in KEPT_AS_DECLARED]
    assert not bad, f"{name} --help shows flags not in kebab-case: {bad}"
    assert len(set(longs)) == len(longs)


@pytest.mark.parametrize("name", [*PARSERS, "app"])
def test_help_says_each_default_once(name):
    """argparse added "(default: None)" after help that already said "(default: the checkpoint's, else
    BaryNet)", and "(default: False)" to switches."""
    if name == "app":
        from utils.app.main import get_args_parser
    else:
        get_args_parser = PARSERS[name]
    text = " ".join(get_args_parser().format_help().split())
    helps = re.split(r" (?=--?[a-z][\w-]* )", text.split("options:", 1)[1])
    assert len(helps) > 10
    twice = [h for h in helps if h.lower().count("(default") > 1]
    assert not twice, f"{name} --help says a default twice: {twice}"
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("name", PARSERS)
def test_every_flag_takes_kebab_and_snake_case(name):
    parser = PARSERS[name]()
    by_string = parser._option_string_actions
    for action in parser._actions:
        if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x: spelt as declared
            continue
        for flag in (o for o in action.option_strings if o.startswith("--") and o not in KEPT_AS_DECLARED):
            if flag.startswith("--no-") or flag == "--help":
                continue
            for spelling in (kebab(flag), "--" + kebab(flag)[2:].replace("-", "_")):
                assert by_string.get(spelling) is action, f"{name}: {spelling} is not {flag}"


def test_spellings_parse_to_the_same_values():
    trainer = train_options.get_args_parser().parse_args
    for argv in (["--patch_size", "64", "--de_type", "derain"], ["--patch-size", "64", "--de-type", "derain"]):
        args = trainer(argv)
        assert (args.patch_size, args.de_type) == (64, ["derain"])
    assert trainer(["--Sigma", "5", "--sigma", "2"]).Sigma == 5.0  # two reference flags, kept apart
    tester = tester_bary.get_args_parser().parse_args
    assert tester(["--data_root", "x"]).data_root == tester(["--data-root", "x"]).data_root == "x"
    d = demo.get_args_parser().parse_args(["--batchSize", "2", "--nEpochs", "3"])
    assert (d.batch_size, d.epochs) == (2, 3)


FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
# The programs' own messages and help: every Python file of these scripts and packages.
MESSAGE_SOURCES = ["trainer_bary.py", "trainer_bary_ddp.py", "tester_bary.py",
                   *sorted(str(p.relative_to(REPO)) for d in ("utils", "net") for p in (REPO / d).rglob("*.py"))]
# Strings outside docstrings that name a flag by another spelling on purpose ("path:line": why); none now.
VERBATIM: dict[str, str] = {}


def _spellings() -> tuple[set[str], set[str]]:
    """The flag spellings every command's --help shows, and those it accepts without showing them."""
    from utils.app.main import get_args_parser as app_parser
    shown, hidden = set(), set()
    for make in (*PARSERS.values(), app_parser):
        parser = make()
        formatter = parser._get_formatter()
        for action in parser._actions:
            said = set(FLAG.findall(formatter._format_action_invocation(action)))
            shown |= said
            hidden |= set(action.option_strings) - said
    return shown, hidden - shown


def _message_strings(path: Path):
    """``(line, text)`` of the string literals of ``path`` (f-strings' literal parts included) but its
    docstrings (which may quote the reference's commands) and the option strings given to add_argument."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            skip.add(id(node.body[0].value))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            skip.update(id(a) for a in node.args)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def test_messages_and_help_name_flags_as_help_shows_them():
    """Errors, warnings and advice named flags by the reference's spellings ("a smaller --batchSize or
    --patch_size", "--de_type is empty"), which --help does not show (it lists --batch-size, --patch-size,
    --de-type): every flag a message or help text names is spelt as some command's --help shows it."""
    shown, hidden = _spellings()
    assert {"--batch-size", "--patch-size", "--de-type", "--Sigma", "--sigma"} <= shown
    assert {"--batchSize", "--patch_size", "--de_type", "--nEpochs", "--workers", "--num_sources"} <= hidden
    assert len(MESSAGE_SOURCES) > 50
    bad = [f"{name}:{line}: {flag} ({text.strip()[:70]!r})" for name in MESSAGE_SOURCES
           for line, text in _message_strings(REPO / name) for flag in FLAG.findall(text)
           if flag in hidden and f"{name}:{line}" not in VERBATIM]
    assert not bad, "messages that name a flag by a spelling --help does not show:\n" + "\n".join(bad)


def test_errors_built_at_run_time_name_flags_as_help_shows_them(tmp_path):
    """The same for messages whose flag names are built from the parsed names (``f"--{name}"``), which a
    look at the source cannot check: a batch or epoch count of 0, a bad patch size, a K that --de-type
    contradicts, a missing training folder, a checkpoint of other settings, running out of memory."""
    from utils.dataset_utils import DatasetError, collect_samples
    from utils.errors import failure_message
    from utils.train.options import ConfigError
    from utils.train.resuming import check_same_run
    from utils.train.run_checks import check_args
    parse = train_options.get_args_parser().parse_args
    shown, _ = _spellings()
    messages = []
    for argv in (["--batchSize", "0"], ["--nEpochs", "0"], ["--patch_size", "20"], ["--de_type", "derain", "fog"],
                 ["--de_type", "derain", "dehaze", "--num_sources", "3"], ["--repeat", "deblur=2"]):
        with pytest.raises(ConfigError) as err:
            check_args(parse(argv))
        messages.append(str(err.value))
    with pytest.raises(DatasetError) as err:
        collect_samples(["derain"], {"derain": tmp_path / "none"}, log=lambda line: None)
    messages.append(str(err.value))
    with pytest.raises(ConfigError) as err:
        check_same_run(parse([]), {"args": {"patch_size": 32, "Sigma": 1.0, "reg_weight": 0.5}}, tmp_path / "x.pth")
    messages.append(str(err.value))
    messages.append(failure_message(MemoryError())[0])
    for message in messages:
        named = set(FLAG.findall(message))
        assert named and named <= shown, message
    assert {"--batch-size", "--epochs", "--patch-size", "--de-type", "--num-sources", "--derain-dir",
            "--Sigma", "--reg-weight"} <= {f for m in messages for f in FLAG.findall(m)}


@pytest.mark.parametrize("command", ["trainer", "tester"])
def test_gpus_that_name_no_gpu_are_one_error_line(command, tmp_path, monkeypatch, capsys):
    """--gpus abc (or 0;1) set CUDA_VISIBLE_DEVICES=abc: CUDA saw no GPU, and --device auto went on on the CPU
    without a word."""
    from utils.train import engine
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))  # restored after
    for gpus in ("abc", "0;1"):
        if command == "trainer":
            status = engine.run_cli(train_options.get_args_parser().parse_args(["--gpus", gpus, "--dry-run"]))
        else:
            args = tester_bary.get_args_parser().parse_args(["--gpus", gpus, "--input", str(tmp_path)])
            status = tester_bary.run_main(tester_bary.main, args)
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and err[0].startswith(f"error: --gpus '{gpus}': give GPU indices"), err
        assert os.environ["CUDA_VISIBLE_DEVICES"] != gpus
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="asks for a GPU this machine must lack")
def test_a_device_this_machine_lacks_is_one_error_line(tmp_path, monkeypatch, capsys):
    """--cuda / --device cuda without a GPU used to end the trainer and the demo in a traceback (the tester
    already said it in one line); bad demo flags printed argparse's usage block."""
    from utils.train import engine
    monkeypatch.chdir(tmp_path)  # nothing may be written, anywhere
    status = engine.run_cli(train_options.get_args_parser().parse_args(["--cuda", "--dry-run"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err == ["error: --cuda asks for a CUDA GPU, but none is visible "
                                   "(check --gpus / CUDA_VISIBLE_DEVICES, or use --device cpu)"], err
    assert demo.cli(["--device", "cuda", "--root", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the demo has no --gpus: its error must not send you there
    assert err == ["error: --device cuda asks for a CUDA GPU, but none is visible "
                   "(check CUDA_VISIBLE_DEVICES, or use --device cpu)"] and not (tmp_path / "d").exists()
    with pytest.raises(SystemExit) as stop:
        demo.cli(["--epochs", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == ["error: argument --epochs: invalid int value: 'x' "
                                            "(see python -m utils.demo --help)"]
    assert list(tmp_path.iterdir()) == []


def test_the_references_cuda_flag_and_device_cpu_are_refused_together_by_the_trainer(tmp_path, monkeypatch, capsys):
    """`trainer_bary.py --device cpu --cuda` trained on the GPU (--cuda overwrote --device); the tester
    refused the pair. Both now ask for one of them."""
    from utils.train import engine
    monkeypatch.chdir(tmp_path)
    status = engine.run_cli(train_options.get_args_parser().parse_args(["--cuda", "--device", "cpu", "--dry-run"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err == ["error: --cuda asks for the GPU but --device cpu for the CPU; pass one of them"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["trainer_bary.py"], ["trainer_bary_ddp.py"], ["tester_bary.py"],
                                     ["-m", "utils.demo"], ["-m", "utils.app"],
                                     *([f"bench/{name}.py"] for name in ("bench_blocks", "bench_fast_path",
                                       "bench_inference", "bench_loader", "bench_train", "profile_train", "study"))])
def test_ctrl_c_while_torch_loads_is_one_line(command, tmp_path):
    """Ctrl-C in the seconds a script spends importing torch printed a traceback through the import
    machinery. A stand-in torch that raises KeyboardInterrupt on import puts the Ctrl-C exactly there."""
    (tmp_path / "torch.py").write_text("raise KeyboardInterrupt\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    done = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "error: interrupted while starting; nothing was written\n" and done.stdout == ""


_HALF_LOADED = """import os, signal, time
try:  # scikit-image's lazy loader: a Ctrl-C inside an import became an ImportError (numpy's: a RecursionError)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
except KeyboardInterrupt:
    raise ImportError("cannot import name 'structural_similarity'")
"""


@pytest.mark.parametrize("second", [False, True])
def test_ctrl_c_while_a_library_loads_is_held_until_the_imports_end(second, tmp_path):
    """A Ctrl-C that landed inside a library's import left it half loaded, and what the library raised next
    (ImportError, RecursionError) was printed as a traceback with status 1. The Ctrl-C is now held until the
    imports end, then ends the script with the one line; a second Ctrl-C ends it at once, without waiting."""
    twice = "import os, signal, time\n" + "os.kill(os.getpid(), signal.SIGINT)\n" * 2 + "time.sleep(60)\n"
    code = twice if second else _HALF_LOADED
    (tmp_path / "torch.py").write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    # Ctrl-C as a terminal delivers it: a process started in the background (nohup, `cmd &`, some CI runners)
    # inherits SIGINT ignored, and an ignored SIGINT stays ignored (the test below)
    interruptible = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                     "runpy.run_path('tester_bary.py', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", interruptible], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "error: interrupted while starting; nothing was written\n" and done.stdout == ""


def test_a_ctrl_c_the_process_ignores_stays_ignored_while_it_starts():
    """A script started with SIGINT ignored (nohup, a background job) is not made interruptible by holding
    Ctrl-C during its imports, and gets its handler back as it was."""
    code = ("import os, signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "from utils.errors import stopped_while_starting\n"
            "with stopped_while_starting():\n    os.kill(os.getpid(), signal.SIGINT)\n"
            "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "True\n", "")


def test_a_gpu_index_this_machine_lacks_is_named_when_auto_falls_back_to_the_cpu(monkeypatch):
    """--gpus 5 on a machine with 2 GPUs hides both: --device auto then trained on the CPU saying only "no CUDA GPU
    visible", which did not point at the flag."""
    from utils.runtime import apply_gpus_flag, pick_device
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))  # restored after
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what CUDA says of a hidden index
    assert apply_gpus_flag("5") is None
    said = []
    assert pick_device("auto", log=said.append) == torch.device("cpu")
    assert said == ["=> --device auto: using the CPU (no CUDA GPU visible with CUDA_VISIBLE_DEVICES=5)"]


def test_a_busy_or_misnamed_gpu_is_a_device_error_naming_the_flag(tmp_path, monkeypatch, capsys):
    """A GPU that CUDA refuses (exclusive-process mode, held by another run) raised CUDA's RuntimeError from
    torch.cuda.set_device: a traceback in the trainers, and --device cuda:x raised int()'s ValueError."""
    from utils.runtime import DeviceError, pick_device
    from utils.train import engine

    def busy(index):
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable\nCUDA kernel errors ...")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", busy)
    monkeypatch.chdir(tmp_path)  # nothing may be written, anywhere
    with pytest.raises(DeviceError) as refused:
        pick_device("cuda:1")
    assert str(refused.value) == ("--device cuda:1: CUDA GPU 1 cannot be used (CUDA error: all CUDA-capable devices "
                                  "are busy or unavailable); wait for the process holding it (nvidia-smi lists it), "
                                  "pick another GPU, or use --device cpu")
    with pytest.raises(DeviceError, match=r"^--device cuda:x: the GPU index must be a number, e\.g\. --device cuda:0$"):
        pick_device("cuda:x")
    with pytest.raises(DeviceError, match=r"^--device cuda:2: 2 CUDA devices visible, numbered from cuda:0$"):
        pick_device("cuda:2")
    status = engine.run_cli(train_options.get_args_parser().parse_args(["--device", "cuda", "--dry-run"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: --device cuda: CUDA GPU 0 cannot be used ("), err
    assert list(tmp_path.iterdir()) == []


def test_under_torchrun_only_rank_0_says_what_every_rank_meets_alike(tmp_path, monkeypatch, capsys):
    """Every rank printed the same error line: N copies for a bad flag, a missing folder, --check-data's report.
    A failure one rank meets alone (a checkpoint another node cannot see) is still said by that rank, and so is
    every failure of a rank on another machine than rank 0's."""
    from utils.checkpoints import CheckpointError
    from utils.errors import UsageError
    from utils.train import engine

    def failing(exc):
        def main(args):
            raise exc
        return main
    parser = train_options.get_args_parser()
    args = parser.parse_args([])
    only_here = CheckpointError("rank 1 cannot see epoch_001.pth, the checkpoint rank 0 resumes")
    only_here.met_by_every_rank = False
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, node, said in (("1", "0", False), ("0", "0", True), ("1", "1", True)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("GROUP_RANK", node)
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(["--batchSize", "abc"])
        assert stop.value.code == 2 and bool(capsys.readouterr().err) == said
        monkeypatch.setattr(engine, "main", failing(UsageError("--lr must be ...")))
        assert engine.run_cli(args) == 2 and bool(capsys.readouterr().err) == said
        monkeypatch.setattr(engine, "main", failing(only_here))
        assert engine.run_cli(args) == 1 and capsys.readouterr().err == f"error: {only_here}\n"  # every rank says it
        monkeypatch.chdir(tmp_path)  # the data doctor on a layout with nothing in it: a report, status 1
        assert engine.run_cli(parser.parse_args(["--check-data", "--data_file_dir", ""])) == 1
        out = capsys.readouterr()
        assert bool(out.out) == said and ("" if said else out.err) == ""
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # RANK exported by a job script for another tool silences nothing
    monkeypatch.setenv("GROUP_RANK", "0")
    with pytest.raises(SystemExit):
        parser.parse_args(["--batchSize", "abc"])
    assert capsys.readouterr().err
    from utils.data.image_io import ImageReadError
    assert not engine.met_by_every_rank(ImageReadError("one rank's loader could not read x.png"))


@pytest.mark.parametrize("flush", [True, False])
def test_output_to_a_pipe_whose_reader_went_ends_quietly(flush):
    """``tester_bary.py ... | head``: the first write after head has gone raised BrokenPipeError, a traceback
    (and Python's "Exception ignored" at exit). A script now ends at once, quietly, with the shell's status
    for a write to a closed pipe; so does one whose last lines, still buffered, met the closed pipe only when
    Python flushed them at exit (status 120 and "Exception ignored ... BrokenPipeError")."""
    code = textwrap.dedent(f"""
        import sys
        from utils.errors import run_main
        def main(_):
            sys.stdin.read()  # until the test has closed the pipe's far end
            for i in range(3):
                print("line", i, flush={flush})
            if {flush}:
                raise AssertionError("the output went nowhere and the script went on")
        sys.exit(run_main(main, None))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # standard output buffered, as usual
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    proc.stdin.close()
    assert proc.wait(timeout=60) == PIPE_CLOSED_STATUS
    assert proc.stderr.read() == ""


class _ClosedStdout:
    """Standard output into a pipe whose reader has gone (``| head``); standard error is still read."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass

    def fileno(self):  # nothing to point at /dev/null
        raise ValueError("no descriptor")


@pytest.mark.parametrize("debug", [False, True])
def test_a_failure_met_while_a_closed_pipe_is_handled_is_still_said(debug, monkeypatch, capsys):
    """``tester_bary.py ... | head``: stdout's reader gone, stderr still on the terminal. A failure raised while
    the closed pipe was being handled (the partial results.json could not be written, or a bug there) has the
    OutputClosed only as its context; run_main took it for the closed pipe itself: status 141, nothing said on
    the terminal, the traceback hidden even under --debug."""
    from utils.errors import UserError, run_main

    def main(_):
        try:
            print("the table")  # OutputClosed
        except OSError:
            if debug:
                raise RuntimeError("a bug in the handler")
            raise UserError("cannot write results.json: disk full")

    monkeypatch.setattr(sys, "stdout", _ClosedStdout())
    if debug:
        with pytest.raises(RuntimeError, match="a bug in the handler"):
            run_main(main, None, debug=True)
    else:
        assert run_main(main, None) == 1
        assert capsys.readouterr().err == "error: cannot write results.json: disk full\n"


def test_a_failure_after_output_into_a_closed_pipe_keeps_its_status_and_line():
    """``tester_bary.py ... | head``, a run that ends in an error after printing (a bad image after the partial
    table, "none of the images could be used"): the printed lines, still buffered, met the closed pipe only in
    Python's exit: "Exception ignored ... BrokenPipeError" under the error line, and status 120 instead of 1."""
    code = textwrap.dedent("""
        import sys
        from utils.errors import UserError, run_main
        def main(_):
            sys.stdin.read()  # until the test has closed the pipe's far end
            print("the table")  # buffered: standard output is a pipe
            raise UserError("none of the 3 image(s) could be used")
        sys.exit(run_main(main, None))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    proc.stdin.close()
    assert proc.wait(timeout=60) == 1
    assert proc.stderr.read() == "error: none of the 3 image(s) could be used\n"


def test_a_run_that_went_on_past_a_closed_pipe_does_not_end_with_0(monkeypatch):
    """Python's warnings, logging and tqdm swallow an OSError from their own writes, and the tester's closing note
    and the trainer's stop go on past the closed pipe on purpose: the run ended with status 0, as if everything it
    said had been read."""
    from utils.errors import run_main

    def main(_):
        try:
            print("a warning")  # OutputClosed, swallowed as a library does
        except OSError:
            pass
        print("the rest")  # to /dev/null now
    monkeypatch.setattr(sys, "stdout", _ClosedStdout())
    assert run_main(main, None) == PIPE_CLOSED_STATUS
    monkeypatch.setattr(sys, "stdout", _ClosedStdout())
    assert run_main(lambda _: 3, None) == 3  # a status of the run's own stands


@pytest.mark.parametrize("argv, value", [(["--input", "-photos", "--save", "out"], "-photos"),
                                         (["--input", "a.png", "--save", "-out"], "-out"),
                                         (["--input", "a.png", "--save_dir", "-out"], None)])
def test_a_path_starting_with_a_dash_is_said_with_the_fix(argv, value, capsys):
    """`--save -out` (a folder called -out) said only "argument --save: expected one argument": the value read as
    a flag, and the fix (./-out), were left for the user to guess."""
    with pytest.raises(SystemExit) as end:
        tester_bary.get_args_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert end.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    if value is None:  # another failure: no hint
        assert "starts with '-'" not in err
    else:
        assert f"{value} starts with '-' and is read as a flag: for a path write ./{value}" in err


def test_deterministic_chooses_reproducible_kernels_before_cuda_starts(monkeypatch):
    """--deterministic: bench/gpu_guarantees.py compares an eager resumed run with a straight one bit for bit,
    which cuDNN's autotuning (the trainer's default on GPUs) and non-deterministic kernels would not allow."""
    from utils.train import engine
    calls = []
    monkeypatch.setattr(engine, "use_deterministic_kernels", lambda: calls.append(torch.cuda.is_initialized()))
    monkeypatch.setattr(engine, "train", lambda args, info: 0)
    for flags, expected in ((["--device", "cpu"], []), (["--device", "cpu", "--deterministic"], [False])):
        calls.clear()
        assert engine.main(train_options.get_args_parser().parse_args(flags)) == 0
        assert calls == expected  # once, before CUDA started
    probe = ("import os, torch; from utils.runtime import use_deterministic_kernels; use_deterministic_kernels(); "
             "print(os.environ['CUBLAS_WORKSPACE_CONFIG'], torch.are_deterministic_algorithms_enabled(), "
             "torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark, "
             "torch.backends.cudnn.deterministic)")
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == [":4096:8", "True", "True", "False", "True"], done.stderr


@pytest.mark.parametrize("parser, argv, said", [
    (lambda: train_options.get_args_parser(), ["--de-type", "derain", "dehaze", "--de_type", "deblur", "lowlight"],
     "--de-type was given 2 times (--de-type derain dehaze; --de-type deblur lowlight), and only the last would "
     "count: give it once with every value, --de-type derain dehaze deblur lowlight"),
    (lambda: train_options.get_args_parser(), ["--repeat=derain=3", "--preset", "tiny", "--repeat", "dehaze=2"],
     "--repeat was given 2 times (--repeat derain=3; --repeat dehaze=2), and only the last would count: give it "
     "once with every value, --repeat derain=3 dehaze=2"),
    (lambda: train_options.get_args_parser(), ["--de-type", "denoise_15", "--de-typ", "dehaze"],  # abbreviated
     "--de-type was given 2 times (--de-type denoise_15; --de-type dehaze), and only the last would count: give it "
     "once with every value, --de-type denoise_15 dehaze"),
    (lambda: tester_bary.get_args_parser(), ["--tasks", "derain", "--tasks", "lowlight"],
     "--tasks was given 2 times (--tasks derain; --tasks lowlight), and only the last would count: give it once "
     "with every value, --tasks derain lowlight")])
def test_a_list_flag_given_twice_is_refused_not_cut_to_its_last(parser, argv, said, capsys):
    """--de-type added to the authors' command that already has --de_type trained only the second list (K=2, no
    warning); --tasks given twice evaluated the last set alone."""
    with pytest.raises(SystemExit) as stop:
        parser().parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {said} (see "), err


def test_a_list_flag_once_parses_and_a_scalar_flag_keeps_its_last(capsys):
    args = train_options.get_args_parser().parse_args(["--de-type", "derain", "dehaze", "--seed", "1", "--seed", "2"])
    assert args.de_type == ["derain", "dehaze"] and args.seed == 2
    with pytest.raises(SystemExit):  # a list flag without values: argparse's own words, not "given 2 times"
        tester_bary.get_args_parser().parse_args(["--tasks", "derain", "--tasks"])
    assert "argument --tasks: expected at least one argument" in capsys.readouterr().err


@pytest.mark.parametrize("argv, dest, value", [
    (["--batch", "3"], "batchSize", 3), (["--patch", "144"], "patch_size", 144), (["--start", "59"], "start_epoch", 59),
    (["--num_s", "5"], "num_sources", 5), (["--derain", "d/"], "derain_dir", "d/"),
    (["--lowlight=l/"], "lowlight_dir", "l/"), (["--local", "0"], "local_rank", 0)])
def test_an_abbreviation_the_references_parser_takes_names_one_flag_not_its_spellings(argv, dest, value, capsys):
    """The authors' argparse takes an unambiguous beginning of a flag (``--batch 3`` for ``--batchSize 3``); here
    it was "ambiguous option: --batch could match --batchSize, --batch_size, --batch-size", three spellings of
    one flag."""
    args = train_options.get_args_parser().parse_args(argv)
    assert getattr(args, dest) == value
    with pytest.raises(SystemExit):  # two flags that begin alike stay ambiguous
        train_options.get_args_parser().parse_args(["--de", "derain"])
    assert "ambiguous option: --de could match" in capsys.readouterr().err


@pytest.mark.parametrize("parser, argv, said", [
    (lambda: train_options.get_args_parser(), ["--cuda", "True"], "unrecognized arguments: True"),
    (lambda: train_options.get_args_parser(), ["--cuda=True", "--lr", "1e-4"], "argument --cuda: ignored explicit "
                                                                                 "argument 'True'"),
    (lambda: tester_bary.get_args_parser(), ["--tasks", "derain", "--dry-run", "yes"], "unrecognized arguments: yes")])
def test_a_value_given_to_a_switch_is_refused_with_how_to_write_it(parser, argv, said, capsys):
    """The reference trainers' --cuda takes a value (--cuda True); here it is a switch, and "unrecognized arguments:
    True" did not say which flag or what to write instead."""
    flag = argv[-2] if said.endswith("yes") else "--cuda"
    with pytest.raises(SystemExit) as stop:
        parser().parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == [f"error: {said}; {flag} is a switch and takes no value: give {flag} "
                                            f"alone to turn it on, or leave it out (see {parser().prog} --help)"], err


@pytest.mark.parametrize("name", ["RCNet", "MRCNet"])
@pytest.mark.parametrize("script", ["trainer", "tester"])
def test_the_references_own_backbone_names_point_at_the_nearest_network_here(name, script, capsys):
    """--backbone=RCNet (the reference trainers' default) listed this project's four choices without a word on
    which of them it is, in the trainers and in the tester (whose flags the app and the analysis take)."""
    parser = train_options.get_args_parser() if script == "trainer" else tester_bary.get_args_parser()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--backbone", name])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and line.startswith(f"error: argument --backbone: {name} is the reference's name for ")
    assert "pass --backbone PromptIR for the PromptIR baseline" in line


def test_a_trainer_on_a_cpu_that_other_processes_keep_busy_says_so_at_its_start(tmp_path, monkeypatch, capsys):
    """Training on a CPU whose cores other processes keep busy ran several times slower without a word (torch's
    threads wait on each other at every operation); the study said so, the trainers did not."""
    from _train_data import make_train_tree, train_flags

    from utils.train import engine, start
    cores = os.cpu_count() or 1
    args = train_options.get_args_parser().parse_args(
        train_flags(make_train_tree(tmp_path / "data"), tmp_path / "run") + ["--dry-run"])
    monkeypatch.setattr(start.torch, "get_num_threads", lambda: 2)
    for load, said in ((cores + 0.5, True), (cores - 0.5, False)):
        monkeypatch.setattr(start, "load_average", lambda: load)
        assert engine.run_cli(args) == 0
        notes = [line for line in capsys.readouterr().out.splitlines() if "busy" in line]
        assert notes == ([f"=> note: this machine's {cores} cores are busy (load average {load:.1f}) and torch runs 2 "
                          f"threads, which then wait on each other: OMP_NUM_THREADS=1 (set before the command) can be "
                          f"several times faster here"] if said else []), notes
    monkeypatch.setattr(start.torch, "get_num_threads", lambda: 1)  # one thread waits on no other
    assert engine.run_cli(args) == 0 and "busy" not in capsys.readouterr().out


@pytest.mark.parametrize("parser", ["tester", "app", "analysis"])
def test_an_empty_model_flag_is_refused_not_read_as_no_model_given(parser, capsys):
    """--model "$CKPT" with CKPT unset evaluated the default checkpoint (the authors', else the newest under
    checkpoint/) with one "no --model given" line: another network's numbers under the user's label."""
    from utils.analysis import own_photos
    from utils.app import main as app_main
    build = {"tester": tester_bary.get_args_parser, "app": app_main.get_args_parser,
             "analysis": own_photos.get_args_parser}[parser]
    with pytest.raises(SystemExit) as exc:
        build().parse_args(["--model", ""])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --model: an empty path") and err.count("\n") == 1


def test_a_dry_run_says_the_memory_checks_out_only_when_its_estimate_fits(tmp_path, monkeypatch, capsys):
    """--dry-run --no-memory-check said "the data, the networks and the memory check out" right under the warning
    that the estimate did not fit: the run it promised would go out of memory."""
    from _train_data import make_train_tree, train_flags

    from utils.train import engine, run_checks
    flags = train_flags(make_train_tree(tmp_path / "data"), tmp_path / "run") + ["--dry-run"]
    for free, no_check, said in ((64 * 2**30, [], "the data, the networks and the memory check out;"),
                                 (2**20, ["--no-memory-check"], "the data and the networks check out (but not the "
                                                                "memory estimate: see the warning above);"),
                                 (None, [], "the data and the networks check out (the free memory is not known "
                                            "here: not checked);")):
        monkeypatch.setattr(run_checks, "available_bytes", lambda device: free)
        monkeypatch.setattr(run_checks, "resident_bytes", lambda: 0)  # this test process's size: none of the need
        assert engine.run_cli(train_options.get_args_parser().parse_args(flags + no_check)) == 0
        [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("=> dry run:")]
        assert line.startswith("=> dry run: " + said), line


ENTRY_POINTS = [("path", "trainer_bary.py"), ("path", "trainer_bary_ddp.py"), ("path", "tester_bary.py"),
                ("module", "utils.demo"), ("module", "utils.analysis")]


def test_every_entry_point_freezes_what_is_alive_before_the_interpreter_shuts_down():
    """Python's shutdown ran full garbage collections over every object torch's modules hold: about a second
    after the run had ended, in every trainer, rank and tester process. Each of these entry points (the ones tests,
    torchrun and make demo start by the dozen) collects what is garbage then and freezes the rest, on every way out
    (here --help), before the atexit handlers run."""
    probe = textwrap.dedent("""
        import gc, runpy, sys
        for kind, name in ENTRY_POINTS:
            sys.argv = [name, "--help"]
            run = runpy.run_path if kind == "path" else runpy.run_module
            try:
                run(name, run_name="__main__")
            except SystemExit as stop:
                print(name, stop.code, gc.get_freeze_count() > 0, file=sys.stderr)
            gc.unfreeze()
    """).replace("ENTRY_POINTS", repr(ENTRY_POINTS))
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    said = done.stderr.splitlines()
    assert done.returncode == 0, done.stderr
    assert said == [f"{name} 0 True" for _, name in ENTRY_POINTS], done.stderr
