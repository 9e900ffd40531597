"""A run of several sets says, after each, how many rows are done and about how long the rest will take: at the
benchmarks' scale (3,500 images, GoPro's 1280x720 last) each set's own bar said nothing of the hours after it."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from net.presets import build_model
from utils.data.image_io import write_image
from utils.eval.evaluation import evaluate_sets
from utils.eval.tasks import find_task_sets

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_run_of_several_sets_says_how_far_it_got_and_the_time_left(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for k in range(2):
        write_image(tmp_path / "derain" / "input" / f"rain-{k}.png", rng.integers(0, 256, (16, 24, 3), np.uint8))
        write_image(tmp_path / "derain" / "target" / f"norain-{k}.png", rng.integers(0, 256, (16, 24, 3), np.uint8))
    write_image(tmp_path / "lowlight" / "low" / "a.png", rng.integers(0, 256, (32, 48, 3), np.uint8))
    write_image(tmp_path / "lowlight" / "high" / "a.png", rng.integers(0, 256, (32, 48, 3), np.uint8))
    torch.manual_seed(0)
    sets = find_task_sets(["derain", "lowlight"], tmp_path)
    evaluate_sets(build_model("BaryNet", "tiny"), sets, device="cpu", progress=True)
    said = capsys.readouterr()
    assert "[1/2] derain" in said.err and "[2/2] lowlight" in said.err  # which row of how many
    line = re.search(r"=> 1 of 2 rows done in \S+; about (\S+) left for 1 image in 1 row", said.out)
    assert line, said.out
