"""What a dataset reader found: problem kinds with counts and examples, and one-line notices.

Readers of every layout fill a :class:`ReadReport` with the same :class:`~detrkit.data.check.Problem`
records that ``detrkit data check`` prints, so nothing a reader skips is skipped silently: a label
line with an unknown class index is left out *and* counted with its file and line, an empty label
file is kept as a negative image *and* counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detrkit.data.check import READER_KINDS, Problem

__all__ = ["READER_KINDS", "ReadReport"]


@dataclass
class ReadReport:
    """Per-kind problems and free-form notes of one split read by a reader."""

    source: str
    problems: dict[str, Problem] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    max_examples: int = 5

    def add(self, kind: str, ident: int, detail: str) -> None:
        """Count one occurrence of ``kind`` (a key of :data:`READER_KINDS`)."""
        self.problems.setdefault(kind, Problem()).add(ident, detail, self.max_examples)

    def note(self, line: str) -> None:
        self.notes.append(line)

    def count(self, kind: str) -> int:
        p = self.problems.get(kind)
        return 0 if p is None else p.count
