"""The paper's columns, its average over exactly them, and the comparison with the published numbers."""
import re
from pathlib import Path

import pytest
from _markdown import cells

from utils.eval.paper import PUBLISHED, SETTINGS, comparison_lines, paper_averages, paper_column
from utils.eval.report import summary_table


def row(psnr, ssim, count=68):
    return {"count": count, "psnr": psnr, "ssim": ssim, "images": [], "seconds_per_image": 0.1}


def three_d(extra=True):
    """The 3D rows with the paper's set sizes (BSD68 68, Kodak24 24, Rain100L 100, SOTS 500)."""
    tasks = {"denoise_15/bsd68": row(34.0, 0.93), "denoise_15/kodak24": row(35.0, 0.92, 24),
             "denoise_25/bsd68": row(31.5, 0.89), "denoise_25/kodak24": row(32.5, 0.88, 24),
             "denoise_50/bsd68": row(28.0, 0.80), "denoise_50/kodak24": row(29.0, 0.79, 24),
             "derain/Rain100L": row(39.0, 0.98, 100), "dehaze": row(31.0, 0.97, 500)}
    if not extra:
        tasks = {k: v for k, v in tasks.items() if "kodak" not in k}
    return tasks


@pytest.mark.parametrize("name, column", [("dehaze", "SOTS"), ("dehaze/SOTS-outdoor", "SOTS"), ("dehaze/ITS", None),
                                          ("derain", "Rain100L"), ("derain/Rain100L", "Rain100L"),
                                          ("derain/Rain100H", None), ("denoise_25/bsd68", "BSD68 σ25"),
                                          ("denoise_25/BSD68", "BSD68 σ25"), ("denoise_25/kodak24", None),
                                          ("deblur", "GoPro"), ("lowlight/LOL", "LOL"), ("jpeg", None),
                                          ("lowlight/eval15", "LOL"), ("denoise_25/CBSD68", "BSD68 σ25"),
                                          ("dehaze/outdoor", "SOTS"), ("lowlight/our485", None),
                                          ("dehaze/SOTS_indoor", None), ("lowlight/LOLv2_real", None),
                                          ("lowlight/LOL-v2", None)])
def test_rows_fill_the_paper_columns(name, column):
    assert paper_column(name) == column


def test_paper_average_is_over_exactly_its_five_columns():
    tasks = three_d()
    averages = paper_averages(tasks)
    assert list(averages) == ["3d"]  # 5D lacks GoPro and LOL
    assert averages["3d"]["psnr"] == pytest.approx((34.0 + 31.5 + 28.0 + 39.0 + 31.0) / 5)
    assert averages["3d"]["ssim"] == pytest.approx((0.93 + 0.89 + 0.80 + 0.98 + 0.97) / 5)
    assert set(averages["3d"]["rows"]) == set(SETTINGS["3d"])
    # The tester's own average counts every row (Kodak24 too); the table says which is which.
    table = summary_table({"tasks": tasks, "average": {"psnr": 33.0, "ssim": 0.9, "rows": 8}})
    assert "Average: the mean over the 8 rows above with scored images" in table
    assert f"Paper 3D average over its columns (SOTS, Rain100L, BSD68 σ15, BSD68 σ25, BSD68 σ50): " \
           f"{averages['3d']['psnr']:.2f}/{averages['3d']['ssim']:.3f}" in table


def test_comparison_with_the_published_numbers():
    lines = comparison_lines(three_d(extra=False), "3d")
    sots = next(line for line in lines if line.startswith("| SOTS |"))
    assert sots == "| SOTS | dehaze | 31.00/0.970 | 31.40/0.980 | -0.40 | -0.010 |"
    published = PUBLISHED["3d"]
    mean = sum(p for p, _ in published.values()) / 5
    assert lines[-1].startswith("| Average | |") and f"{mean:.2f}" in lines[-1]
    five = comparison_lines(three_d(), "5d")  # GoPro, LOL absent: said, and left out of the average
    assert "| GoPro | (not evaluated) | | 29.51/0.889 | | |" in five
    assert [line for line in five if line.startswith("|")][-1].startswith("| Average of the 3 columns present |")
    assert five[-1] == ("Left out, having a number only in the 3D table (--compare-paper 3d): denoise_15/bsd68 "
                        "(BSD68 σ15), denoise_50/bsd68 (BSD68 σ50).")  # rows the 5D table has no number for
    one = comparison_lines({"dehaze": row(31.0, 0.97, 500)}, "3d")  # said "Average of the 1 columns present"
    assert one[-1].startswith("| Average of the 1 column present |"), one[-1]


def test_rows_not_scored_as_the_papers_are_flagged_wherever_compared():
    """A 5-image subset (--max-images), a stopped row or tiled restorations were compared with the published
    columns, and entered the paper's average, with no word that they are not the paper's protocol."""
    tasks = three_d(extra=False)
    tasks["dehaze"] = {**row(31.0, 0.97, 5), "partial": True}
    tasks["derain/Rain100L"] = {**row(39.0, 0.98, 100), "notes": ["note: tiled 512x512"]}
    lines = comparison_lines(tasks, "3d")
    assert "| SOTS | dehaze (not comparable: 5 of the paper's 500 images, stopped partway) | 31.00/0.970 |" in \
        "\n".join(lines)
    assert "| Rain100L | derain/Rain100L (not comparable: restored in tiles) |" in "\n".join(lines)
    assert lines[-1].startswith("Not scored as the paper's: SOTS, Rain100L")
    table = summary_table({"tasks": tasks, "average": {"psnr": 33.0, "ssim": 0.9, "rows": 5}})
    assert "— not comparable with the paper's (SOTS: 5 of the paper's 500 images, stopped partway; Rain100L: " \
           "restored in tiles)" in table
    assert "not comparable" not in "\n".join(comparison_lines(three_d(), "3d"))  # full sets: no flag


@pytest.mark.parametrize("flags, why", [({"metric_space": "y"}, "y-channel PSNR/SSIM"),
                                        ({"protocol": "pad"}, "--protocol pad"),
                                        ({"ssim": "gaussian"}, "gaussian SSIM"),
                                        ({"crop_border": 4}, "--crop-border 4"),
                                        ({"precision": "bf16"}, "bf16 inference"),
                                        ({"tile": 256}, "restored in 256x256 tiles (--tile 256)")])
def test_a_run_scored_by_other_rules_is_flagged_in_every_column(flags, why):
    """Y-channel scores run 1-2 dB above RGB ones; they were compared with the paper's RGB numbers unflagged."""
    protocol = {"protocol": "reference", "metric_space": "rgb", "ssim": "skimage", "crop_border": 0,
                "precision": "fp32", "tile": "automatic: ..."}
    assert "not comparable" not in "\n".join(comparison_lines(three_d(), "3d", protocol))
    assert "caveats" not in paper_averages(three_d(), protocol)["3d"]
    for lenient in ({"tile": 0}, {"compile": "default"}):
        assert "not comparable" not in "\n".join(comparison_lines(three_d(), "3d", protocol | lenient))
    other = protocol | flags
    lines = comparison_lines(three_d(), "3d", other)
    flagged = [line for line in lines if line.startswith("| ") and "(not comparable: " + why + ")" in line]
    assert len(flagged) == 5, lines
    caveats = paper_averages(three_d(), other)["3d"]["caveats"]
    assert set(caveats) == set(SETTINGS["3d"]) and all(why in c for c in caveats.values())
    table = summary_table({"tasks": three_d(), "protocol": other, "average": {"psnr": 33.0, "ssim": 0.9, "rows": 8}})
    assert "— not comparable with the paper's (SOTS: " + why in table


def test_a_set_larger_than_the_papers_is_flagged():
    """SOTS indoor+outdoor (1000 images) under dehaze/ passed as the paper's 500-image SOTS outdoor."""
    tasks = three_d(extra=False) | {"dehaze": row(31.0, 0.97, 1000)}
    assert "| SOTS | dehaze (not comparable: 1000 images where the paper's set has 500) |" in \
        "\n".join(comparison_lines(tasks, "3d"))


@pytest.mark.parametrize("doc", ["docs/METHOD.md", "README.md"])
def test_published_numbers_are_the_docs_table(doc):
    """PUBLISHED is what every comparison subtracts from; it must be docs/METHOD.md §4's table and the README's
    copy of it, cell for cell (a mistyped LOL 23.73 or σ50 SSIM 0.820 passed every test, and the README's copy
    was checked by none)."""
    text = (Path(__file__).resolve().parents[1] / doc).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("| setting |") or line.startswith("| 3D |")
             or line.startswith("| 5D |")]
    assert len(lines) == 3, lines  # one table of published numbers in each
    header = cells(lines[0])[1:]
    table = {}
    for line in lines[1:]:
        row = cells(line)
        table[row[0].lower()] = {col: tuple(float(v) for v in cell.split("/")) for col, cell in zip(header, row[1:])
                                 if cell}
    assert table == PUBLISHED
    assert {s: set(v) for s, v in table.items()} == {s: set(c) for s, c in SETTINGS.items()}


def test_full_paper_sets_are_not_flagged_and_one_image_short_is():
    """The paper's set sizes (SOTS outdoor 500, Rain100L 100, BSD68 68, GoPro test 1111, LOL eval15 15): a row of
    exactly that many images compares unflagged, one image fewer is flagged."""
    sizes = {"dehaze": 500, "derain": 100, "denoise_25/bsd68": 68, "deblur": 1111, "lowlight": 15}
    full = {name: row(30.0, 0.9, n) for name, n in sizes.items()}
    assert "caveats" not in paper_averages(full)["5d"]
    for name, n in sizes.items():
        short = full | {name: row(30.0, 0.9, n - 1)}
        caveats = paper_averages(short)["5d"]["caveats"]
        assert list(caveats.values()) == [f"{n - 1} of the paper's {n} images"], name


def test_a_row_without_scores_fills_no_column_and_the_first_row_of_a_column_wins():
    """A row that scored nothing (count 0, psnr None) left out of the paper's columns, not averaged as None; of two
    rows for one column (derain and derain/Rain100L) the first fills it, as documented."""
    tasks = three_d(extra=False)
    tasks["dehaze"] = {"count": 0, "psnr": None, "ssim": None, "images": []}
    assert paper_averages(tasks) == {}
    assert "| SOTS | (not evaluated) | | 31.40/0.980 | | |" in comparison_lines(tasks, "3d")
    two = {"derain": row(38.0, 0.97, 100), **three_d(extra=False)}
    assert paper_averages(two)["3d"]["rows"]["Rain100L"] == "derain"
    assert paper_averages(two)["3d"]["psnr"] == pytest.approx((34.0 + 31.5 + 28.0 + 38.0 + 31.0) / 5)


def test_a_bar_in_a_row_name_stays_in_its_cell_of_the_comparison():
    """A set folder named with a ``|`` (legal on Linux) ended its Row cell in --compare-paper's table."""
    tasks = {"derain/Rain100L|x": row(38.0, 0.98, 100)}
    [line] = [line for line in comparison_lines(tasks, "3d") if "Rain" in line]
    assert line.startswith("| Rain100L | derain/Rain100L\\|x |") and len(re.split(r"(?<!\\)\|", line)) == 8, line
