"""One Markdown table writer for every results table (``analysis.md``, ``summary.md``, README)."""

from __future__ import annotations

from typing import Sequence


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(headers: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table, without a trailing newline.

    ``| h1 | h2 |`` / ``|---|---|`` / ``| a | b |`` ...; cells are converted with ``str`` and not
    escaped (callers format numbers themselves). Every row must have as many cells as ``headers``.

    Raises:
        ValueError: no headers, or a row of the wrong length.
    """
    if not headers:
        raise ValueError("a table needs at least one column")
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells for {len(headers)} columns: {list(row)!r}")
    lines = [_row(headers), "|" + "|".join(["---"] * len(headers)) + "|"]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)
