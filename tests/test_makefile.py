"""The Makefile's set-up as a new machine meets it, run for real on a copy of the Makefile with a stand-in Python
(a shell script that logs what it is asked and makes a "venv" of itself, as --clear does): nothing is installed."""
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

# A Python of the given version: `-c` is the Makefile's version check, `-m venv` makes .venv/bin/python a link to
# this script (as a venv links to its interpreter, installed long before), after FAKE_VENV_SECONDS; every call is
# logged to calls.log, and -m utils.demo or a bench script take a second.
FAKE_PYTHON = """#!/bin/sh
echo "start $*" >> calls.log
case "$1" in
  -c) [ "{ok}" = yes ] || exit 1 ;;
  --version) echo "Python {version}" ;;
esac
case "$*" in
  "-m venv --clear .venv") sleep "${FAKE_VENV_SECONDS:-0}"; rm -rf .venv && mkdir -p .venv/bin
                           touch .venv/pyvenv.cfg && ln -s "$0" .venv/bin/python ;;
  "-m utils.demo"*|"bench/bench_inference.py"*) sleep 1 ;;
esac
echo "end $*" >> calls.log
"""


def fake_python(path: Path, version: str = "3.11.7") -> Path:
    ok = "yes" if tuple(int(v) for v in version.split(".")[:2]) >= (3, 10) else "no"
    path.write_text(FAKE_PYTHON.replace("{ok}", ok).replace("{version}", version))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    os.utime(path, (946684800, 946684800))  # installed in 2000: older than any stamp
    return path


def project(tmp_path: Path) -> Path:
    """A folder with the Makefile and the files its installs depend on (empty: the stand-in pip reads nothing)."""
    shutil.copy(MAKEFILE, tmp_path / "Makefile")
    for name in ("requirements.txt", "requirements-app.txt", "pyproject.toml"):
        (tmp_path / name).touch()
    return tmp_path


# what an outer make puts in its recipes' environment: its flags, and the variables given on its command line (`make
# test ARGS="-k x"` exports ARGS, which the Makefile under test then read as its own)
OUTER_MAKE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ARGS", "PYTHON", "WORKERS", "ASKED")


def make_env(**extra: str) -> dict[str, str]:
    """The environment without an outer make's flags and variables (the suite may run under one), with ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k not in OUTER_MAKE}, **extra}


def make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=folder, capture_output=True, text=True,
                          env=make_env(), timeout=60)


def calls(folder: Path) -> list[str]:
    return (folder / "calls.log").read_text().splitlines()


def test_a_venv_whose_python_is_gone_is_made_again_and_filled(tmp_path):
    """A .venv whose python linked to an interpreter since removed (pyenv uninstall, a Homebrew upgrade), its
    stamp newer than the requirements: `make demo` ran .venv/bin/python and stopped at 'No such file or
    directory', the fix left to guess (rm -rf .venv)."""
    folder = project(tmp_path)
    (folder / ".venv" / "bin").mkdir(parents=True)
    (folder / ".venv" / "bin" / "python").symlink_to("/nonexistent/python3.9")
    (folder / ".venv" / ".requirements-installed").touch()
    python = fake_python(tmp_path / "python3")
    done = make(folder, "demo", f"PYTHON={python}")
    assert done.returncode == 0, done.stdout + done.stderr
    started = [c for c in calls(folder) if c.startswith("start")]
    assert f"making .venv with {python} (Python 3.11.7)" in done.stdout.splitlines()  # not a silent wait
    install = "start -m pip install -q --disable-pip-version-check -r requirements.txt"
    assert started.index("start -m venv --clear .venv") < started.index(install) < started.index("start -m utils.demo")


def test_a_working_venv_whose_requirements_changed_is_kept_and_updated(tmp_path):
    """requirements.txt newer than the stamp (a pull that changed a pin): pip installs into the venv as it is;
    it is not made again (which would install every package anew)."""
    folder = project(tmp_path)
    (folder / ".venv" / "bin").mkdir(parents=True)
    fake_python(folder / ".venv" / "bin" / "python")
    (folder / ".venv" / "pyvenv.cfg").touch()
    (folder / ".venv" / ".requirements-installed").touch()
    os.utime(folder / ".venv" / ".requirements-installed", (1e9, 1e9))  # installed before the pin changed
    done = make(folder, "demo", f"PYTHON={fake_python(tmp_path / 'python3')}")
    assert done.returncode == 0, done.stdout + done.stderr
    started = [c for c in calls(folder) if c.startswith("start")]
    assert "start -m venv --clear .venv" not in started
    assert "start -m pip install -q --disable-pip-version-check -r requirements.txt" in started


@pytest.mark.parametrize("version", ["3.8.10", None])
def test_a_python_too_old_or_missing_is_one_error_line_before_anything_is_made(tmp_path, version):
    """PYTHON (python3 by default) a 3.8 or 3.9: the venv was made and pip then failed on torch with 'No
    matching distribution found'; no python3 at all: '/bin/sh: 1: python3: not found'."""
    folder = project(tmp_path)
    python = fake_python(tmp_path / "python3", version) if version else tmp_path / "no-python-here"
    done = make(folder, "demo", f"PYTHON={python}")
    assert done.returncode != 0
    [line] = [ln for ln in done.stderr.splitlines() if not ln.startswith("make:")]
    assert line == (f"error: PYTHON={python} is {'Python ' + version if version else 'not found'}; BaryIR needs "
                    f"Python 3.10 or newer: install one and name it, e.g. make demo PYTHON=python3.11")
    assert not (folder / ".venv").exists()
    if version:
        assert "start -m venv --clear .venv" not in calls(folder)


def test_make_j_runs_one_recipe_at_a_time(tmp_path):
    """Under make -j2 (or MAKEFLAGS=-j in the environment) two goals ran at once: `make clean-demo demo`
    deleted what the demo was writing, `make demo app` installed into .venv while the demo ran from it."""
    folder = project(tmp_path)
    (folder / ".venv" / "bin").mkdir(parents=True)
    fake_python(folder / ".venv" / "bin" / "python")
    (folder / ".venv" / "pyvenv.cfg").touch()
    (folder / ".venv" / ".requirements-installed").touch()
    done = make(folder, "-j2", "demo", "bench")
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls(folder) == ["start -m utils.demo", "end -m utils.demo",
                             "start bench/bench_inference.py", "end bench/bench_inference.py"]


def test_the_makes_under_test_ignore_the_variables_of_the_make_that_runs_the_suite(tmp_path, monkeypatch):
    """`make test ARGS=--durations=0` failed four of these tests: the outer make exports the variables on its command
    line, and the Makefile under test passed that ARGS on to its own goals (`-m utils.demo --durations=0`)."""
    for name, value in (("ARGS", "--durations=0"), ("WORKERS", "7"), ("PYTHON", "/nonexistent/python"),
                        ("MAKEOVERRIDES", "ARGS=--durations=0")):
        monkeypatch.setenv(name, value)
    folder = project(tmp_path)
    (folder / ".venv" / "bin").mkdir(parents=True)
    fake_python(folder / ".venv" / "bin" / "python")
    (folder / ".venv" / "pyvenv.cfg").touch()
    (folder / ".venv" / ".requirements-installed").touch()
    for goal in ("demo", "test-quick"):
        done = make(folder, goal)
        assert done.returncode == 0, done.stdout + done.stderr
    assert [c for c in calls(folder) if c.startswith("start")] == [
        "start -m utils.demo", "start -m pytest -q -n 2 -m not slow tests"]


@pytest.mark.parametrize("target, tail", [("test", "-n 3 tests"), ("test-quick", '-m "not slow" tests')])
def test_make_test_passes_args_on_to_pytest(tmp_path, target, tail):
    """`make test ARGS="-k tiling"` ran the whole suite (about 10 minutes), ARGS dropped without a word."""
    folder = project(tmp_path)
    shown = make(folder, "-n", target, "WORKERS=3", "ARGS=-k tiling -x").stdout
    [line] = [ln for ln in shown.splitlines() if "-m pytest" in ln]
    assert line.endswith(f"{tail} -k tiling -x"), line


def test_make_alone_lists_the_commands_and_installs_nothing(tmp_path):
    """`make` with no goal made .venv (its first rule) and stopped without a word of what to run next."""
    folder = project(tmp_path)
    done = make(folder, f"PYTHON={fake_python(tmp_path / 'python3')}")
    assert done.returncode == 0, done.stderr
    listed = done.stdout.splitlines()
    for goal in ("demo", "test", "test-quick", "app", "bench", "clean-demo"):
        assert any(line.startswith(f"make {goal} ") for line in listed), goal
    assert not (folder / ".venv").exists() and not (folder / "calls.log").exists()


def test_make_f_from_another_folder_runs_in_the_projects_folder(tmp_path):
    """`make -f /path/to/Makefile demo` from another folder made a stray .venv there and stopped at "No rule to make
    target 'requirements.txt'". It runs in the Makefile's folder now, as make -C does."""
    folder, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    project(folder)
    python = fake_python(tmp_path / "python3")
    for makefile in (str(folder / "Makefile"), "../project/Makefile"):
        done = make(elsewhere, "-f", makefile, "demo", f"PYTHON={python}", "ARGS=--quick")
        assert done.returncode == 0, done.stdout + done.stderr
        assert calls(folder)[-2:] == ["start -m utils.demo --quick", "end -m utils.demo --quick"]
    assert calls(folder).count("start -m venv --clear .venv") == 1
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # no .venv, nothing else
    listed = make(elsewhere, "-f", str(folder / "Makefile")).stdout.splitlines()  # no goal: the list
    assert any(line.startswith("make demo ") for line in listed), listed


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) is not installed")
def test_two_makes_started_together_set_the_venv_up_once(tmp_path):
    """`make test` and `make demo` started together on a fresh clone both made .venv (one's --clear deleting what the
    other was installing) and both ran pip into it. The second waits for the first's set-up, saying so, then finds
    it done."""
    folder = project(tmp_path)
    env = make_env(FAKE_VENV_SECONDS="2")
    python = fake_python(tmp_path / "python3")
    command = ["make", "--no-print-directory", f"PYTHON={python}"]
    first = subprocess.Popen([*command, "demo"], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 30
        while "start -m venv --clear .venv" not in ((folder / "calls.log").read_text()
                                                    if (folder / "calls.log").exists() else ""):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run([*command, "test-quick"], cwd=folder, env=env, capture_output=True, text=True,
                                timeout=60)
    finally:
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, (out, err, second.stdout, second.stderr)
    assert "waiting for another make to finish setting up .venv ..." in second.stdout.splitlines()
    log = calls(folder)
    assert log.count("start -m venv --clear .venv") == 1
    assert log.count("start -m pip install -q --disable-pip-version-check -r requirements.txt") == 1
    set_up = log.index("end -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .")
    assert set_up < log.index('start -m pytest -q -n 2 -m not slow tests')


def test_without_flock_the_set_up_runs_as_before(tmp_path):
    """No flock (macOS has none): the set-up runs unlocked, the goal after it."""
    folder = project(tmp_path)
    done = make(folder, "demo", f"PYTHON={fake_python(tmp_path / 'python3')}", "FLOCK=")
    assert done.returncode == 0, done.stdout + done.stderr
    started = [c for c in calls(folder) if c.startswith("start")]
    assert started[-1] == "start -m utils.demo" and "start -m venv --clear .venv" in started
