"""The table writers every report shares: markdown pipe tables, rich tables for the terminal,
and JSON of numpy numbers. One of each, so that every report escapes, aligns and rounds alike."""

from __future__ import annotations

import re

import numpy as np

_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def markdown_cell(text: str) -> str:
    """Escape the one character that breaks a markdown table cell (once: an escaped pipe stays)."""
    return _UNESCAPED_PIPE.sub(r"\\|", text)


def markdown_table(
    header: list[str], rows: list[list[str]], right_from: int, right_to: int | None = None
) -> list[str]:
    """A pipe table, one line per row; columns right_from..right_to-1 right-aligned (numbers)."""
    right_to = len(header) if right_to is None else right_to
    align = ["---:" if right_from <= i < right_to else "---" for i in range(len(header))]
    cells = [[markdown_cell(cell) for cell in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(cells[0]) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in cells[1:]]


def rich_table(header, rows, title, right_from, right_to=None) -> object:
    """A plain rich table; columns right_from..right_to-1 right-aligned (numbers)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title=title, title_justify="left")
    right_to = len(header) if right_to is None else right_to
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if right_from <= i < right_to else "left")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def json_default(value):
    """``json.dumps(default=...)`` for numpy numbers."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
