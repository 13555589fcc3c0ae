"""``detrkit data convert``: a dataset in any layout -> COCO files or an Ultralytics dataset.

Thin front over :func:`detrkit.data.formats.convert`; registered on the ``data`` group by
:mod:`detrkit.cli.data`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from detrkit.errors import ConfigError

_out = Console(soft_wrap=True)  # paths in one piece, copyable


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2))


def convert_cmd(
    src: Path = typer.Argument(..., help="Dataset folder or file (COCO, Roboflow, YOLO data.yaml, VOC)."),
    out: Path = typer.Argument(..., help="Output folder."),
    source_format: str | None = typer.Option(
        None, "--from", help="coco, roboflow, yolo or voc (default: detected; an error if it differs)."
    ),
    to: str = typer.Option(..., "--to", help="coco (one JSON per split) or yolo (an Ultralytics dataset)."),
    images: Path | None = typer.Option(None, "--images", help="Image folder of a plain COCO file."),
    segments: bool = typer.Option(False, "--segments", help="YOLO: write polygons as segment lines."),
    copy: bool = typer.Option(False, "--copy", help="YOLO: copy the images (default: symlinks)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a summary."),
) -> None:
    """Convert a dataset between layouts; what readers left out or kept is listed like `data check`."""
    from detrkit.data.check import describe
    from detrkit.data.formats import FORMATS, convert

    if source_format is not None and source_format not in FORMATS:
        raise ConfigError(f"--from must be one of {', '.join(FORMATS)}, got {source_format!r}")
    conv = convert(
        src, out, to=to, source_format=source_format, images=images, segments=segments, link=not copy
    )
    summary = {
        "from": conv.layout.format,
        "to": to,
        "splits": {
            name: {
                "file": str(conv.outputs[name][0]),
                "images": str(conv.outputs[name][1]),
                "num_images": len(s.index.images),
                "num_annotations": len(s.index.annotations),
                "problems": {
                    k: {"count": p.count, "details": p.details} for k, p in s.report.problems.items()
                },
                "notes": s.report.notes,
            }
            for name, s in conv.splits.items()
        },
        "classes": [
            c.name for c in sorted(next(iter(conv.splits.values())).index.categories, key=lambda c: c.id)
        ],
    }
    if as_json:
        _echo_json(summary)
        return
    _out.print(
        f"{conv.layout.path}: {conv.layout.format} -> {to} in {out}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for name, s in conv.splits.items():
        for line in s.report.notes:
            _out.print(line, highlight=False, markup=False, soft_wrap=True)
        for kind, p in s.report.problems.items():
            _out.print(
                f"  {name}: {kind}: {p.count} ({describe(kind)})",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            for d in p.details:
                _out.print(f"    {d}", highlight=False, markup=False, soft_wrap=True)
        f, im = conv.outputs[name]
        _out.print(
            f"  {name}: {len(s.index.images)} images, {len(s.index.annotations)} boxes -> {f} (images: {im})",
            highlight=False,
            markup=False,
        )
    _out.print(f"classes: {', '.join(summary['classes'])}", highlight=False, markup=False, soft_wrap=True)
