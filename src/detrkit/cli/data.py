"""``detrkit data ...``: check, stats, convert, subset, merge, split and the built-in shapes dataset.

Thin front over :mod:`detrkit.data`: parse, call, print a rich table (or JSON with ``--json``).
``data check`` exits 1 when it found problems, 0 when the dataset is clean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from detrkit.cli.data_convert import convert_cmd
from detrkit.cli.tables import titled_table
from detrkit.errors import ConfigError, DataError

data_app = typer.Typer(help="Check, describe, subset, merge and split COCO datasets.", no_args_is_help=True)
_out = Console(soft_wrap=True)  # paths in one piece, copyable
_err = Console(stderr=True, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``data`` group to the root app."""
    app.add_typer(data_app, name="data")


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def _sources(
    ann: Path | None, data: Path | None, images: Path | None
) -> list[tuple[str, Any, Path | None, Any]]:
    """``[(title, index, images_dir, reader report or None)]`` of ``--ann`` or every split of ``--data``."""
    from detrkit.data.coco import CocoIndex

    if (ann is None) == (data is None):
        raise ConfigError("give --ann FILE.json (with --images DIR) or --data PATH (any layout), not both")
    if ann is not None:
        if images is not None and not images.is_dir():
            raise DataError(f"{images}: images folder not found", path=images)
        return [(str(ann), CocoIndex.load(ann), images, None)]
    from detrkit.data.formats import load_dataset

    layout, splits = load_dataset(data, images=images)  # type: ignore[arg-type]
    _err.print(f"{layout.path}: {layout.format} layout, splits {', '.join(splits)}", highlight=False)
    for s in splits.values():
        for line in s.report.notes:
            _err.print(line, highlight=False, markup=False, soft_wrap=True)
    return [
        (f"{layout.format} {name}: {s.report.source}", s.index, s.images, s.report)
        for name, s in splits.items()
    ]


@data_app.command("check")
def check_cmd(
    ann: Path | None = typer.Option(None, "--ann", help="COCO instances JSON."),
    data: Path | None = typer.Option(
        None, "--data", help="A dataset in any layout (COCO, Roboflow, YOLO data.yaml, VOC); every split."
    ),
    images: Path | None = typer.Option(None, "--images", help="Image folder (file_name is relative to it)."),
    decode: bool = typer.Option(
        True, "--decode/--no-decode", help="Fully decode images (slower, finds truncation)."
    ),
    workers: int = typer.Option(0, "--workers", min=0, help="Decoding threads (0: automatic)."),
    max_examples: int = typer.Option(5, "--max-examples", min=0, help="Offending ids listed per problem."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Validate annotations (and image files with --images or --data); exit 1 when problems are found.

    Notices (boxes within 1 px of the border, empty label files, a placeholder category) are
    listed but do not fail the check.
    """
    from rich.progress import Progress

    from detrkit.data.check import NOTICE_KINDS, check_dataset, describe

    reports = []
    for title, index, images_dir, read in _sources(ann, data, images):
        with Progress(console=_err, transient=True, disable=as_json or not _err.is_terminal) as bar:
            task = bar.add_task("checking images", total=len(index.images) if images_dir is not None else 0)
            report = check_dataset(
                index,
                images_dir,
                decode=decode,
                workers=workers or None,
                max_examples=max_examples,
                progress=lambda n, task=task, bar=bar: bar.advance(task, n),
            )
        if read is not None:
            report.problems.update(read.problems)
        reports.append((title, report))
    if as_json:
        dicts = [r.to_dict() for _, r in reports]
        _echo_json(dicts[0] if ann is not None else {"splits": dicts})
    for title, report in [] if as_json else reports:
        found = [(k, p) for k, p in report.problems.items() if p.count]
        if found:
            table = titled_table(f"data check: {title}")
            for col in ("problem", "count", "first ids", "description"):
                table.add_column(col, overflow="fold")
            for kind, p in found:
                table.add_row(kind, str(p.count), ", ".join(map(str, p.ids)), describe(kind))
            _out.print(table)
            for kind, p in found:
                for d in p.details[:max_examples]:
                    _out.print(f"  {kind}: {d}", highlight=False, markup=False, soft_wrap=True)
        checked = f", {report.images_checked} image files checked" if report.images_checked else ""
        verdict = "OK" if report.ok else f"{report.num_problems} problem(s)"
        if report.num_notices:
            verdict += (
                f", {report.num_notices} notice(s) ({', '.join(k for k, p in found if k in NOTICE_KINDS)})"
            )
        _out.print(
            f"{title}: {report.num_images} images, {report.num_annotations} annotations, "
            f"{report.num_categories} categories{checked}: {verdict}",
            highlight=False,
            markup=False,
        )
    if not all(r.ok for _, r in reports):
        raise typer.Exit(1)


@data_app.command("stats")
def stats_cmd(
    ann: Path | None = typer.Option(None, "--ann", help="COCO instances JSON."),
    data: Path | None = typer.Option(None, "--data", help="A dataset in any layout; every split."),
    images: Path | None = typer.Option(None, "--images", help="Image folder of a plain COCO --data file."),
    plots: Path | None = typer.Option(None, "--plots", help="Folder for PNG plots."),
    rare_fraction: float = typer.Option(
        0.05,
        "--rare-fraction",
        min=0.0,
        max=1.0,
        help="Rare: image count below this fraction of the most frequent class.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per-class instances/images, boxes per image, COCO size buckets, rare classes."""
    sources = _sources(ann, data, images)
    out = []
    for title, index, _, _ in sources:
        split_plots = plots if plots is None or len(sources) == 1 else plots / title.split()[1].rstrip(":")
        out.append(_stats_one(title, index, split_plots, rare_fraction, as_json))
    if as_json:
        _echo_json(
            out[0] if ann is not None else {"splits": dict(zip([t for t, *_ in sources], out, strict=True))}
        )


def _stats_one(
    title: str, index: Any, plots: Path | None, rare_fraction: float, as_json: bool
) -> dict[str, Any]:
    from detrkit.data.stats import compute_stats, save_plots

    stats = compute_stats(index, rare_fraction=rare_fraction)
    written = save_plots(stats, index, plots) if plots is not None else []
    if as_json:
        d = stats.to_dict()
        d["plots"] = [str(p) for p in written]
        return d
    table = titled_table(f"data stats: {title}")
    for col in ("id", "class", "instances", "images", "small", "medium", "large", "rare"):
        table.add_column(col, justify="right" if col not in ("class", "rare") else "left")
    for c in stats.classes:
        table.add_row(
            str(c.category_id),
            c.name,
            str(c.instances),
            str(c.images),
            str(c.small),
            str(c.medium),
            str(c.large),
            "rare" if c.rare else "",
        )
    table.add_section()
    table.add_row(
        "",
        "all",
        str(stats.num_annotations),
        str(stats.num_images),
        str(stats.small),
        str(stats.medium),
        str(stats.large),
        f"{len(stats.rare_classes)} rare",
    )
    _out.print(table)
    _out.print(
        f"boxes per image: mean {stats.boxes_per_image_mean:.2f}, median {stats.boxes_per_image_median:g}, "
        f"max {stats.boxes_per_image_max}; {stats.num_empty_images} images without boxes; "
        f"{stats.num_crowd} crowd annotations",
        highlight=False,
    )
    for p in written:
        _out.print(f"wrote {p}", highlight=False)
    return {}


def _split_names(values: list[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


@data_app.command("subset")
def subset_cmd(
    ann: Path = typer.Option(..., "--ann", help="COCO instances JSON."),
    classes: list[str] = typer.Option(
        ..., "--classes", help="Class names to keep, in order: --classes person car dog"
    ),
    more_classes: list[str] | None = typer.Argument(None, hidden=True),
    max_images: int | None = typer.Option(None, "--max-images", min=1, help="Keep at most this many images."),
    negatives: float = typer.Option(
        0.0, "--negatives", min=0.0, max=1.0, help="Fraction of output images without kept boxes."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: Path = typer.Option(..., "--out", help="Output JSON."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a summary."),
) -> None:
    """Keep some classes (renumbered 1..K in the given order) and the images that show them."""
    from detrkit.data.coco import CocoIndex
    from detrkit.data.ops import class_image_counts, subset

    names = _split_names(list(classes) + list(more_classes or []))
    result = subset(CocoIndex.load(ann), names, max_images=max_images, negatives=negatives, seed=seed)
    result.save(out)
    counts = class_image_counts(result)
    summary = {
        "out": str(out),
        "images": len(result.images),
        "annotations": len(result.annotations),
        "classes": [{"id": c.id, "name": c.name, "images": counts[c.name]} for c in result.categories],
    }
    if as_json:
        _echo_json(summary)
        return
    _print_written_classes("data subset", out, summary)


def _print_written_classes(command: str, out: Path, summary: dict[str, Any]) -> None:
    """The per-class table and the one-line total that subset and merge print."""
    table = titled_table(f"{command} -> {out}")
    for col in ("id", "class", "images"):
        table.add_column(col)
    for c in summary["classes"]:
        table.add_row(str(c["id"]), c["name"], str(c["images"]))
    _out.print(table)
    _out.print(
        f"{summary['images']} images, {summary['annotations']} annotations written to {out}", highlight=False
    )


def _read_mapping(path: Path) -> dict[str, str | None]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: class map not found", path=path) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})", path=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in data.items()
    ):
        raise ConfigError(
            f"{path}: expected 'source name: unified name' lines (or 'name: null'/'drop')", path=path
        )
    return data


@data_app.command("merge")
def merge_cmd(
    sources: list[Path] = typer.Argument(..., help="COCO files to merge, in order."),
    class_map: Path | None = typer.Option(
        None, "--map", help="YAML: source class name -> unified name | null."
    ),
    out: Path = typer.Option(..., "--out", help="Output JSON."),
    tags: list[str] | None = typer.Option(
        None, "--tag", help="Per-source file_name prefix (default: file stem)."
    ),
    images: list[Path] | None = typer.Option(None, "--images", help="Per-source image folder, in order."),
    images_out: Path | None = typer.Option(
        None, "--images-out", help="Folder of per-tag symlinks to --images (default: <out stem>_images)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a summary."),
) -> None:
    """Merge COCO files with a unified class list; file_name becomes <tag>/<file_name>."""
    from detrkit.data.coco import CocoIndex
    from detrkit.data.ops import class_image_counts, link_image_roots, merge, source_tags

    if len(sources) < 2:
        raise DataError("merge needs at least two annotation files")
    tag_list = list(tags) if tags else source_tags(sources)
    if len(tag_list) != len(sources):
        raise DataError(f"got {len(tag_list)} --tag values for {len(sources)} annotation files")
    if images and len(images) != len(sources):
        raise DataError(f"got {len(images)} --images folders for {len(sources)} annotation files")
    mapping = _read_mapping(class_map) if class_map is not None else {}
    result = merge([CocoIndex.load(p) for p in sources], mapping=mapping, tags=tag_list)
    link_dir = None
    if images:
        link_dir = link_image_roots(images_out or out.with_name(f"{out.stem}_images"), tag_list, images)
    result.save(out)
    counts = class_image_counts(result)
    summary = {
        "out": str(out),
        "images": len(result.images),
        "annotations": len(result.annotations),
        "tags": tag_list,
        "images_dir": None if link_dir is None else str(link_dir),
        "classes": [{"id": c.id, "name": c.name, "images": counts[c.name]} for c in result.categories],
    }
    if as_json:
        _echo_json(summary)
        return
    _print_written_classes("data merge", out, summary)
    if link_dir is not None:
        _out.print(f"images: use --images {link_dir} (links: {', '.join(tag_list)})", highlight=False)


@data_app.command("split")
def split_cmd(
    ann: Path = typer.Option(..., "--ann", help="COCO instances JSON."),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", min=0.0, max=1.0, help="Fraction of images for validation."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Writes train.json and val.json here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Split by image, stratified so that rare classes appear in both parts."""
    from detrkit.data.coco import CocoIndex
    from detrkit.data.ops import class_image_counts, split

    train, val = split(CocoIndex.load(ann), val_fraction=val_fraction, seed=seed)
    paths = {"train": train.save(out_dir / "train.json"), "val": val.save(out_dir / "val.json")}
    ct, cv = class_image_counts(train), class_image_counts(val)
    summary = {
        "train": {
            "path": str(paths["train"]),
            "images": len(train.images),
            "annotations": len(train.annotations),
        },
        "val": {"path": str(paths["val"]), "images": len(val.images), "annotations": len(val.annotations)},
        "classes": [{"name": n, "train_images": ct[n], "val_images": cv[n]} for n in ct],
    }
    if as_json:
        _echo_json(summary)
        return
    table = titled_table(f"data split: {ann}")
    for col in ("class", "train images", "val images"):
        table.add_column(col)
    for c in summary["classes"]:
        table.add_row(c["name"], str(c["train_images"]), str(c["val_images"]))
    _out.print(table)
    for part in ("train", "val"):
        s = summary[part]
        _out.print(
            f"{part}: {s['images']} images, {s['annotations']} annotations -> {s['path']}", highlight=False
        )


def _class_counts(values: list[str], option: str) -> dict[str, int] | None:
    """``["star=30,cross=20"]`` -> ``{"star": 30, "cross": 20}`` (None when empty)."""
    counts: dict[str, int] = {}
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        name, _, number = item.partition("=")
        try:
            if not name.strip():
                raise ValueError
            counts[name.strip()] = int(number)
        except ValueError:
            raise DataError(f"{option} {item!r}: expected CLASS=N with an integer N") from None
    return counts or None


@data_app.command("shapes")
def shapes_cmd(
    out: Path = typer.Option(Path("data/shapes"), "--out", help="Output folder."),
    train: int = typer.Option(2000, "--train", min=1, help="Training images."),
    val: int = typer.Option(300, "--val", min=1, help="Validation images."),
    size: int = typer.Option(256, "--size", min=64, help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    rare: list[str] = typer.Option(
        [],
        "--rare",
        "--class-counts",
        help="Long-tailed variant: CLASS=N gives the train split exactly N instances of CLASS "
        "(repeat it, or comma-separate: star=30,cross=30).",
    ),
    val_rare: list[str] = typer.Option(
        [], "--val-rare", help="The same for the val split (e.g. star=300,cross=300)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a summary."),
) -> None:
    """Generate the built-in COCO-format shapes dataset."""
    from detrkit.data.shapes import generate_shapes

    counts = _class_counts(rare, "--rare")
    val_counts = _class_counts(val_rare, "--val-rare")
    paths = generate_shapes(
        out, train=train, val=val, size=size, seed=seed, class_counts=counts, val_class_counts=val_counts
    )
    summary = {
        "root": str(paths.root),
        "train_images": str(paths.train_images),
        "val_images": str(paths.val_images),
        "train_ann": str(paths.train_ann),
        "val_ann": str(paths.val_ann),
        "classes": list(paths.class_names),
        "class_counts": counts,
        "val_class_counts": val_counts,
    }
    if as_json:
        _echo_json(summary)
        return
    _out.print(f"shapes dataset ({train} train, {val} val, {size}px) in {paths.root}", highlight=False)
    _out.print(f"  train: --ann {paths.train_ann} --images {paths.train_images}", highlight=False)
    _out.print(f"  val:   --ann {paths.val_ann} --images {paths.val_images}", highlight=False)
    _out.print(f"  classes: {', '.join(paths.class_names)}", highlight=False)
    for label, c in (("train", counts), ("val", val_counts)):
        if c:
            exact = ", ".join(f"{k} {v}" for k, v in c.items())
            _out.print(f"  {label}: exactly {exact} instances", highlight=False)


data_app.command("convert")(convert_cmd)
