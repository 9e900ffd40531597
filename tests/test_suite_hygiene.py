"""What the test suite leaves behind on the machine that runs it."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def test_temporary_files_of_the_suite_and_its_processes_go_under_pytests_folder(tmp_path_factory):
    """Each ``make test`` left about 33 folders in the system's /tmp (torchrun's logs, gradio_client's downloads,
    Chromium's profile); temporary files now go under pytest's folder, which pytest prunes. Inductor's cache is
    not moved there: compiled kernels stay shared between runs."""
    base = tmp_path_factory.getbasetemp()
    with tempfile.TemporaryDirectory() as made_here:
        assert Path(made_here).is_relative_to(base)
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.mkdtemp(prefix='child-'))"],
                           capture_output=True, text=True, check=True, timeout=60)
    made_by_child = Path(child.stdout.strip())
    assert made_by_child.is_dir() and made_by_child.is_relative_to(base)
    assert not Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).is_relative_to(base)
