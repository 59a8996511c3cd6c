"""What the command modules share: the consoles and summary tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def table(title: str, columns: list[str], rows) -> Table:
    """A rich table; every column after the first is right-aligned (counts)."""
    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        t.add_row(*(str(v) for v in row))
    return t
