"""What the data doctor found (:mod:`utils.data.doctor`), and how it is printed: a problem (:class:`Problem`: an
error or a warning, with one fix), a set's row (:class:`SetReport`: images found against the count expected), the
whole report (:class:`DataReport`) and its table (:func:`format_report`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from utils.errors import counted

ERROR, WARNING = "error", "warning"
EXAMPLES = 3            # problems shown per kind and set before "... and N more"


@dataclass(frozen=True)
class Expected:
    """A training family's expected image count; ``also`` are other counts that are right too."""
    count: int
    also: tuple[int, ...] = ()
    note: str = ""

    def matches(self, n: int) -> bool:
        return n == self.count or n in self.also

    def __str__(self) -> str:
        return f"{self.count:,}" + "".join(f" ({a:,})" for a in self.also)


@dataclass
class Problem:
    """One thing wrong with a set: ``file`` is the file or folder it is about, ``fix`` what to do."""
    kind: str
    file: str
    detail: str
    fix: str
    severity: str = ERROR

    def line(self) -> str:
        return f"{self.detail.rstrip('.')}. Fix: {self.fix}" if self.fix else self.detail


@dataclass
class SetReport:
    """One row: a set's name, its folder, the images found, the count expected (None: no expectation)."""
    name: str
    folder: str
    found: int = 0
    expected: int | Expected | None = None
    used_by: tuple[str, ...] = ()
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def status(self) -> str:
        return "FAIL" if self.errors else "warn" if self.warnings else "ok"

    def add(self, kind: str, file: object, detail: str, fix: str, severity: str = ERROR) -> None:
        self.problems.append(Problem(kind, str(file), detail, fix, severity))


@dataclass
class DataReport:
    """What ``--check-data`` found: the sets (rows), problems that belong to no set, files read, time taken."""
    title: str
    sets: list[SetReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files_read: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems) and not any(s.errors for s in self.sets)

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1

    def all_problems(self) -> list[Problem]:
        return [*self.problems, *(p for s in self.sets for p in s.problems)]


def count_problem(row: SetReport, what: str, severity: str = ERROR, fix: str | None = None) -> None:
    """Add a "count" problem to ``row`` when it holds another number of images than expected; ``what`` is a plural
    noun (``"clean images"``)."""
    exp = row.expected
    if exp is None or row.found == 0:
        return
    ok = exp.matches(row.found) if isinstance(exp, Expected) else row.found == exp
    if ok:
        return
    n = exp.count if isinstance(exp, Expected) else exp
    note = f" ({exp.note})" if isinstance(exp, Expected) and exp.note else ""
    one = what.removesuffix("s")
    if not fix and row.found < n:
        fix = f"{counted(n - row.found, one, what)} missing: complete the download into {row.folder}"
    elif not fix:
        fix = (f"{counted(row.found - n, one, what)} more than the paper's set: remove what is not part of it from "
               f"{row.folder}")
    row.add("count", row.folder, f"found {counted(row.found, one, what)}, expected {n:,}{note}", fix, severity)


def expected_cell(expected: int | Expected | None) -> str:
    return "-" if expected is None else str(expected) if isinstance(expected, Expected) else f"{expected:,}"


def format_report(report: DataReport, examples: int = EXAMPLES) -> str:
    """The report as text: a title, one row per set (set, found, expected, status, folder), under each row
    its problems grouped by kind (the first ``examples`` of each, then "... and N more"), and a verdict."""
    lines = [f"{report.title}: {counted(len(report.sets), 'set')}, {counted(report.files_read, 'file')} read in "
             f"{report.seconds:.2f} s"]
    head = ("set", "found", "expected", "status", "folder")
    rows = [(s.name, f"{s.found:,}", expected_cell(s.expected), s.status, s.folder) for s in report.sets]
    width = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    right = {1, 2}

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                         for c, (cell, w) in enumerate(zip(r, width))).rstrip()

    if rows:
        lines.append(fmt(head))
    for s, r in zip(report.sets, rows):
        lines.append(fmt(r))
        lines += _problem_lines(s.problems, examples)
    lines += _problem_lines(report.problems, examples)
    errors = [p for p in report.all_problems() if p.severity == ERROR]
    warns = [p for p in report.all_problems() if p.severity == WARNING]
    if not report.sets and not report.problems:
        lines.append("nothing to check")
    if errors:
        failing = sum(1 for s in report.sets if s.errors) + (1 if any(p.severity == ERROR for p in report.problems)
                                                               else 0)
        lines.append(f"=> {counted(len(errors), 'error')} in {counted(failing, 'place')}: fix them and run "
                     f"--check-data again"
                     + (f"; {counted(len(warns), 'warning')}" if warns else ""))
    else:
        lines.append("=> everything needed is present and well-formed"
                     + (f" ({counted(len(warns), 'warning')}: the run goes on, see above)" if warns else ""))
    return "\n".join(lines)


def _problem_lines(problems: Sequence[Problem], examples: int) -> list[str]:
    by_kind: dict[tuple[str, str], list[Problem]] = {}
    for p in problems:
        by_kind.setdefault((p.severity, p.kind), []).append(p)
    out = []
    for (severity, kind), items in by_kind.items():
        out.append(f"    {kind} ({severity}, {len(items):,}):")
        out += [f"      - {p.line()}" for p in items[:examples]]
        if len(items) > examples:
            out.append(f"      ... and {len(items) - examples:,} more")
    return out
