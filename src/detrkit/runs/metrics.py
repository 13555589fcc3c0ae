"""A run's metrics files: ``metrics.csv`` (one row per epoch) and ``metrics.json`` (final).

``metrics.csv`` is written whole each time (a temp file + :func:`os.replace`), with the union of
the rows' keys as its header, so a column that appears later (``val/AP`` after the first
validation) widens the file instead of misaligning it. Reading parses numbers back to ``int`` /
``float`` and leaves the cells a row did not have out of its dict.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"


def _parse(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def read_metrics_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.csv`` with numbers parsed; ``[]`` when the file does not exist.

    Empty cells (a key the row did not have) are left out of the row's dict.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: _parse(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def write_metrics_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``rows`` atomically (header: every key, in first-seen order);
    no rows removes the file."""
    path = Path(path)
    if not rows:
        path.unlink(missing_ok=True)
        return
    header: list[str] = []
    for r in rows:
        header += [k for k in r if k not in header]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
