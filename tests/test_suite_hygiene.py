"""What the test suite leaves behind on the machine that runs it."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import temporary_folder_of_the_suite


def test_temporary_files_of_the_suite_and_its_processes_go_into_its_own_folder(suite_temporary_folder):
    """Each ``make test`` left about 33 folders in the system's /tmp (torchrun's logs, gradio_client's downloads,
    Chromium's profile); temporary files now go into the suite's folder, removed at its end. Inductor's cache is
    not moved there: compiled kernels stay shared between runs."""
    with tempfile.TemporaryDirectory() as made_here:
        assert Path(made_here).parent == suite_temporary_folder
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.mkdtemp(prefix='child-'))"],
                           capture_output=True, text=True, check=True, timeout=60)
    made_by_child = Path(child.stdout.strip())
    assert made_by_child.is_dir() and made_by_child.parent == suite_temporary_folder
    assert not Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).is_relative_to(suite_temporary_folder)


def test_the_suites_temporary_folder_is_removed_and_the_environment_restored(monkeypatch, tmp_path):
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with temporary_folder_of_the_suite() as folder:
        (folder / "left.txt").write_text("x")
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else" and os.environ["TMPDIR"] == str(folder)
        assert tempfile.tempdir == str(folder)
    assert folder.parent == tmp_path and not folder.exists()
    assert "TMPDIR" not in os.environ and tempfile.tempdir == str(tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else"
