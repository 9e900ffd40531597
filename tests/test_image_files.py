"""Listing the images and sets of a folder (utils/data/image_files.py)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.data.image_files import UnreadableEntryError, list_images, visible_subfolders
from utils.data.image_io import write_image

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.zeros((8, 8, 3), np.uint8))
    return path


def test_a_link_to_an_image_that_is_gone_is_an_error_not_an_image_left_out(tmp_path):
    """A dangling link (an unmounted disk) was skipped by is_file(): a benchmark's mean or a training set quietly
    lost its images."""
    _png(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone" / "b.png")
    with pytest.raises(UnreadableEntryError, match=r"b\.png is a symbolic link to .*gone/b\.png, which does not exist"):
        list_images(tmp_path)
    (tmp_path / "b.png").unlink()
    (tmp_path / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not an image: nothing is left out
    (tmp_path / ".hidden.png").symlink_to(tmp_path / "gone.png")  # hidden: never read
    assert list_images(tmp_path) == [tmp_path / "a.png"]


def test_a_linked_folder_that_is_gone_stops_a_recursive_listing_and_a_listing_of_sets(tmp_path):
    """synthetic/part2 -> /bigdisk/... with the disk unmounted trained on part1 alone; a test set linked from
    another disk was a missing row."""
    data, bigdisk = tmp_path / "synthetic", tmp_path / "bigdisk"
    _png(data / "part1" / "x.png")
    (data / "part2").symlink_to(bigdisk / "part2", target_is_directory=True)
    with pytest.raises(UnreadableEntryError, match="part2 is a symbolic link"):
        list_images(data, recursive=True)
    assert list_images(data) == []  # read without subfolders, a link that was a folder is no image
    with pytest.raises(UnreadableEntryError, match="mount or restore it, or remove the link"):
        visible_subfolders(data)
    _png(bigdisk / "part2" / "y.png")  # the disk is back
    assert visible_subfolders(data) == [data / "part1", data / "part2"]
    assert list_images(data, recursive=True) == [data / "part1" / "x.png", data / "part2" / "y.png"]


def test_the_tester_names_a_dangling_image_link_in_one_error_line(tmp_path):
    deg, tar = tmp_path / "input", tmp_path / "target"
    for folder in (deg, tar):
        _png(folder / "a.png")
    _png(tar / "b.png")
    (deg / "b.png").symlink_to(tmp_path / "unmounted" / "b.png")
    run = subprocess.run([sys.executable, str(ROOT / "tester_bary.py"), "--degset", str(deg), "--tarset", str(tar),
                          "--check-data"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and lines[-1].startswith("error: ") and "b.png is a symbolic link" in lines[-1], \
        run.stderr
    assert "Traceback" not in run.stderr


def test_a_caller_that_names_dangling_links_itself_may_list_without_them(tmp_path):
    """The tester's --input restores the rest of a photo folder and says in a note what it left out."""
    _png(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    assert list_images(tmp_path, unreadable_ok=True) == [tmp_path / "a.png"]


def test_an_image_name_that_is_a_named_pipe_is_an_error_not_an_image_left_out(tmp_path):
    """A FIFO called fifo.png in a benchmark folder was left out: the mean covered 5 of 6 images and --check-data
    said ok."""
    _png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(UnreadableEntryError, match=r"fifo\.png is not a regular file \(a named pipe"):
        list_images(tmp_path)
    with pytest.raises(UnreadableEntryError, match=r"fifo\.png is not a regular file"):
        list_images(tmp_path, recursive=True)
    assert list_images(tmp_path, unreadable_ok=True) == [tmp_path / "a.png"]
    (tmp_path / "x.png").mkdir()  # a folder of that name is no image either, and nothing to read: it is a folder
    os.unlink(tmp_path / "fifo.png")
    assert list_images(tmp_path) == [tmp_path / "a.png"]
