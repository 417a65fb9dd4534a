"""What the commands print: aligned tables, JSON, and one-line summaries of values."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ("dumps", "emit", "shorten", "table")


def dumps(value: Any, *, pretty: bool = False) -> str:
    """Return value as JSON (non-ASCII kept, anything else shown as its str)."""
    return json.dumps(value, indent=2 if pretty else None, ensure_ascii=False, default=str,
                      separators=None if pretty else (",", ":"))


def emit(line: str) -> None:
    """Print one line now (a pipe or a test reading live sees it at once)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def shorten(text: str, width: int) -> str:
    """Return text cut to width characters (0: whole), ending in … when cut."""
    return text if width <= 0 or len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return rows under headers in columns wide enough for every cell ("-" for None)."""
    cells = [[str(h) for h in headers], *([("-" if c is None else str(c)) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
