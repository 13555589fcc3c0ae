"""What a dataset reader found: problem kinds with counts and examples, and one-line notices.

Readers of every layout fill a :class:`ReadReport` with the same :class:`~detrkit.data.check.Problem`
records that ``detrkit data check`` prints, so nothing a reader skips is skipped silently: a label
line with an unknown class index is left out *and* counted with its file and line, an empty label
file is kept as a negative image *and* counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detrkit.data.check import Problem

#: the kinds only readers report (``data check`` adds its own, :data:`detrkit.data.check.PROBLEM_KINDS`).
READER_KINDS: dict[str, str] = {
    "unknown_class_index": "label lines whose class index is not in the names (line left out)",
    "malformed_label_line": "label lines that are not 'class cx cy w h' or a polygon (line left out)",
    "label_without_image": "label/XML files whose image does not exist (left out)",
    "empty_label_file": "empty label files: negative images, kept (notice)",
    "no_label_file": "images without a label file: negative images, kept (notice)",
    "missing_annotation_file": "images listed in a split file without their annotation file (left out)",
    "unknown_class_name": "objects whose class name is not in the given names (left out)",
}


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
