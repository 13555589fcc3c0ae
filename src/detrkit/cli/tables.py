"""The one way the commands build their summary tables.

Rich wraps a table's title to the table's width, so a title naming a path broke in the middle of
the path even at 120 columns; a table here is at least as wide as its title (the console still
folds it when the terminal is narrower than the title).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table


def titled_table(title: str, **kwargs: Any) -> Table:
    """``rich.table.Table(title=title, **kwargs)`` no narrower than ``title``."""
    kwargs.setdefault("min_width", len(title) + 2)
    return Table(title=title, **kwargs)
