"""Reading the Markdown tables the tester prints and the docs hold, one row at a time."""


def cells(line: str) -> list[str]:
    """The cells of one table row, stripped: ``"| a | 1.00 |"`` -> ``["a", "1.00"]``."""
    return [c.strip() for c in line.strip().strip("|").split("|")]
