"""What every error message of the project shares: long lists cut to a readable length."""
from __future__ import annotations

from typing import Iterable

LIST_LIMIT = 20


def listing(items: Iterable, limit: int = LIST_LIMIT, sep: str = "\n    ", lead: str | None = None) -> str:
    """``items`` as text for an error message: the first ``limit``, then '... and N more'.

    Each item follows ``sep``; the whole starts with ``lead`` (default ``sep``, so a message can
    end with ``:`` and the list continues one item per indented line).
    """
    items = [str(i) for i in items]
    more = f"{sep}... and {len(items) - limit} more" if len(items) > limit else ""
    return (sep if lead is None else lead) + sep.join(items[:limit]) + more
