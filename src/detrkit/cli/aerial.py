"""``detrkit aerial ...``: synthetic data, training, prediction and area measurement for buildings.

Thin front over :mod:`detrkit.aerial`: parse, call, print a rich table (or JSON with ``--json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from detrkit.cli.tables import titled_table
from detrkit.errors import DataError, ImageError

aerial_app = typer.Typer(
    help="Buildings, GSD and built-up area (m²) from aerial and satellite images.", no_args_is_help=True
)
_out = Console()
_err = Console(stderr=True)
IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".vrt"}


def register(app: typer.Typer) -> None:
    """Add the ``aerial`` group to the root app."""
    app.add_typer(aerial_app, name="aerial")


def _fmt(v: Any, digits: int = 2) -> str:
    return "-" if v is None else (f"{v:,.{digits}f}" if isinstance(v, float) else str(v))


def coordinate_digits(crs: str | None) -> int:
    """Decimals of a centroid in ``crs`` units: 6 for degrees (0.1 m), 2 for metres, 1 for pixels."""
    if not crs:
        return 1
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return 6 if CRS.from_user_input(crs).is_geographic else 2
    except CRSError:
        return 2


def _print_report(title: str, d: dict[str, Any], buildings: list[dict[str, Any]] | None, limit: int) -> None:
    table = titled_table(title, show_header=False)
    gsd = d.get("gsd") or {}
    unc = gsd.get("uncertainty") if gsd else None
    rows = {
        "size (px)": f"{d['width']} x {d['height']}",
        "GSD (m/px)": f"{gsd.get('metres_per_pixel', float('nan')):.4g} from {gsd.get('source', 'nowhere')}"
        + (f" (±{100 * unc:.0f}%)" if unc is not None else "")
        if gsd
        else "unknown (give --gsd or --zoom/--lat)",
        "built-up area (m²)": _fmt(d["built_area_m2"]),
        "built-up (%)": _fmt(d["built_percent"], 3),
        "buildings": str(d["building_count"]),
        "specks dropped": str(d["speck_count"]),
    }
    for k, v in rows.items():
        table.add_row(k, v)
    _out.print(table)
    if buildings:
        bt = titled_table(f"buildings (first {min(limit, len(buildings))} of {len(buildings)})")
        digits = coordinate_digits(d.get("crs"))  # type: ignore[arg-type]
        for col in ("id", "area m²", "perimeter m", "centroid x", "centroid y"):
            bt.add_column(col, justify="right")
        for b in buildings[:limit]:
            bt.add_row(
                str(b["id"]),
                _fmt(b["area_m2"]),
                _fmt(b["perimeter_m"]),
                _fmt(b["centroid_x"], digits),
                _fmt(b["centroid_y"], digits),
            )
        _out.print(bt)


@aerial_app.command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder (Inria layout + ground_truth.json)."),
    cities: int = typer.Option(
        3, "--cities", min=1, max=4, help="Number of cities (each with its own UTM CRS)."
    ),
    tiles_per_city: int = typer.Option(
        12, "--tiles-per-city", min=1, help="Tiles per city; 1-5 are validation."
    ),
    size: int = typer.Option(512, "--size", min=64, help="Tile size in pixels."),
    gsd_min: float = typer.Option(0.15, "--gsd-min", min=0.001, help="Smallest GSD (m/px)."),
    gsd_max: float = typer.Option(2.0, "--gsd-max", min=0.001, help="Largest GSD (m/px)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a summary."),
) -> None:
    """Generate an aerial-like dataset with exactly known building areas (GeoTIFFs in UTM)."""
    from detrkit.aerial.synth import CITY_CRS, SynthSpec, generate_aerial

    if not 0 < gsd_min <= gsd_max:
        raise DataError(f"--gsd-min {gsd_min} / --gsd-max {gsd_max}: need 0 < min <= max")
    spec = SynthSpec(tuple(list(CITY_CRS)[:cities]), tiles_per_city, size, gsd_min, gsd_max, seed)
    with _err.status("generating tiles"):
        truth = generate_aerial(out, spec)
    n_b = sum(len(t["buildings"]) for t in truth["tiles"].values())
    summary = {
        "out": str(out),
        "tiles": len(truth["tiles"]),
        "buildings": n_b,
        "ground_truth": str(out / "ground_truth.json"),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _out.print(
            f"wrote {summary['tiles']} tiles with {n_b} buildings to {out} (truth: {summary['ground_truth']})"
        )


@aerial_app.command("train")
def train_cmd(
    config: str = typer.Option(
        "tiny-synth", "--config", help="Preset (tiny-synth, tiny-real, r34-inria) or YAML file."
    ),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. epochs=5 data=DIR."),
    resume: Path | None = typer.Option(None, "--resume", help="Run folder to continue from its last.pt."),
    data: list[str] = typer.Option(
        None,
        "--data",
        help="Tile folder (Inria train/images+train/gt, or images/+masks/); repeat to mix sources. "
        "Replaces the config's data.",
    ),
    encoder_weights: str | None = typer.Option(
        None, "--encoder-weights", help="imagenet (torchvision's, needs internet) or a local ResNet .pth."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train the U-Net + ASPP + GSD-head model; writes a run folder."""
    from detrkit.aerial.config import load_aerial_config
    from detrkit.aerial.train import train_aerial

    extra = list(overrides or [])
    if data:
        extra.append("data=" + json.dumps(data if len(data) > 1 else data[0]))
    if encoder_weights:
        extra.append(f"encoder_weights={encoder_weights}")
    cfg = load_aerial_config(config, extra)
    run = train_aerial(cfg, resume=resume, quiet=quiet)
    _out.print(f"run folder: {run}")


def _sources(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder", path=source)
        return files
    if not source.exists():
        raise DataError("no such image or folder", path=source)
    return [source]


@aerial_app.command("predict")
def predict_cmd(
    source: Path = typer.Option(..., "--source", help="Image (GeoTIFF, PNG, JPEG) or folder of images."),
    out: Path = typer.Option(..., "--out", help="Output folder (one subfolder per image)."),
    model: str | None = typer.Option(
        None, "--model", help="Run folder or checkpoint; default: the built-in tiny model."
    ),
    gsd: float | None = typer.Option(None, "--gsd", min=0.001, help="Metres per pixel (overrides the file)."),
    zoom: float | None = typer.Option(
        None, "--zoom", min=0.0, max=30.0, help="Web Mercator zoom level (with --lat)."
    ),
    lat: float | None = typer.Option(
        None, "--lat", min=-85.06, max=85.06, help="Latitude in degrees (with --zoom)."
    ),
    tile: int | None = typer.Option(
        None, "--tile", min=32, help="Tile size (default: the training crop, >= 256)."
    ),
    overlap: int | None = typer.Option(
        None, "--overlap", min=0, help="Tile overlap in pixels (default tile/4)."
    ),
    batch: int = typer.Option(8, "--batch", min=1, help="Tiles per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1..."),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        min=0.0,
        max=1.0,
        help="Probability threshold for the mask (default: the model's own, else 0.5).",
    ),
    min_area: float = typer.Option(
        2.0, "--min-area", min=0.0, help="Buildings smaller than this (m²) are specks."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summaries as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when an image of the folder cannot be read."),
) -> None:
    """Mask, probability map, overlay, building polygons and areas for each image."""
    from rich.progress import Progress

    from detrkit.aerial.predict import AerialPredictor

    kwargs: dict[str, Any] = {"batch_size": batch, "device": device}
    if threshold is not None:
        kwargs["threshold"] = threshold
    if tile is not None:
        kwargs["tile"] = tile
    if overlap is not None:
        kwargs["overlap"] = overlap
    predictor = (
        AerialPredictor.from_checkpoint(model, **kwargs) if model else AerialPredictor.default(**kwargs)
    )
    files = _sources(source)
    summaries, skipped = [], []
    for f in files:
        dest = out / f.stem if len(files) > 1 else out
        try:
            with Progress(console=_err, transient=True, disable=as_json or not _err.is_terminal) as bar:
                task = bar.add_task(f"{f.name}", total=None)
                s = predictor.predict_file(
                    f,
                    dest,
                    user_gsd=gsd,
                    zoom=zoom,
                    lat=lat,
                    min_area_m2=min_area,
                    progress=lambda d, t, task=task: bar.update(task, completed=d, total=t),
                )
        except ImageError as err:
            if len(files) == 1:
                raise
            skipped.append(str(f))  # one bad image of a folder does not cost the others
            _err.print(f"warning: skipping {err}", highlight=False, markup=False, soft_wrap=True)
            continue
        summaries.append(s)
        if not as_json:
            _print_report(f"{f.name} -> {dest}", s, None, 0)
            _out.print(s["area_text"])
            if s.get("gsd_warning"):
                _err.print(f"[yellow]warning:[/] {s['gsd_warning']}")
    if not as_json:
        card = predictor.card
        _out.print(f"model: {card['name']}; trained on: {card['trained_on']}")
    if as_json:
        typer.echo(json.dumps(summaries if len(files) > 1 else summaries[0], indent=2))
    if skipped:
        _err.print(
            f"{len(summaries)} of {len(files)} images predicted, {len(skipped)} unreadable skipped",
            highlight=False,
        )
        if strict:
            raise typer.Exit(1)


@aerial_app.command("area")
def area_cmd(
    mask: Path = typer.Option(
        ..., "--mask", help="Building mask (GeoTIFF or PNG; pixels > 0 are buildings)."
    ),
    gsd: float | None = typer.Option(None, "--gsd", min=0.001, help="Metres per pixel (overrides the file)."),
    zoom: float | None = typer.Option(
        None, "--zoom", min=0.0, max=30.0, help="Web Mercator zoom level (with --lat)."
    ),
    lat: float | None = typer.Option(
        None, "--lat", min=-85.06, max=85.06, help="Latitude in degrees (with --zoom)."
    ),
    min_area: float = typer.Option(
        2.0, "--min-area", min=0.0, help="Buildings smaller than this (m²) are specks."
    ),
    split: bool = typer.Option(
        True, "--split/--no-split", help="Split buildings touching through a narrow neck."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Also write buildings.geojson and buildings.csv here."
    ),
    limit: int = typer.Option(20, "--limit", min=0, help="Buildings listed in the table."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with every building) instead of tables."),
) -> None:
    """Total built-up area (m², %), building count and per-building table of an existing mask."""
    from detrkit.aerial.gsd import GsdError
    from detrkit.aerial.predict import measure_mask_file
    from detrkit.aerial.vector import write_vectors

    report = measure_mask_file(
        mask, user_gsd=gsd, zoom=zoom, lat=lat, min_area_m2=min_area, split_touching=split
    )
    if report.gsd is None:
        raise GsdError(f"{mask}: no georeference and no GSD given: pass --gsd M or --zoom Z --lat L")
    if out is not None:
        from detrkit.aerial.predict import open_raster

        with open_raster(mask) as ds:
            crs = ds.crs if report.crs else None
        write_vectors(report, out, crs)
    d = report.to_dict()
    if as_json:
        typer.echo(json.dumps(d, indent=2))
    else:
        _print_report(f"area: {mask}", d, d["buildings"], limit)  # type: ignore[arg-type]


@aerial_app.command("rasterize")
def rasterize_cmd(
    image: Path = typer.Option(..., "--image", help="Image tile (GeoTIFF; SpaceNet: the RGB or PAN tile)."),
    labels: Path = typer.Option(
        ..., "--labels", help="Building polygons (GeoJSON; SpaceNet's geojson_buildings)."
    ),
    out: Path = typer.Option(..., "--out", help="Dataset folder: images/ and masks/ are added to it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Add an image and its building polygons to a folder-layout dataset (for ``aerial train --data``)."""
    from detrkit.aerial.vector import rasterize_labels

    if not image.is_file() or not labels.is_file():
        raise DataError("no such file", path=image if not image.is_file() else labels)
    info = rasterize_labels(image, labels, out)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _out.print(f"{info['polygons']} buildings -> {info['mask']}")
