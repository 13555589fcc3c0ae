"""``detrkit synth``: synthetic training images for rare classes (copy-paste, augment, diffusion,
controlnet).

Thin front over :func:`detrkit.synth.generate.synthesize`: parse, call, print a table (or JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from detrkit.cli.tables import titled_table
from detrkit.errors import DataError

_out = Console()
_err = Console(stderr=True)


def extra_override(ann: str | Path, images: str | Path) -> str:
    """The ``detrkit train`` argument that adds a synthetic dataset, quoted for a POSIX shell:
    ``'data.extra=[{ann: "synth/annotations.json", images: "synth/images"}]'``."""
    import shlex

    return shlex.quote(f"data.extra=[{{ann: {json.dumps(str(ann))}, images: {json.dumps(str(images))}}}]")


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to the root app."""
    app.command("synth")(synth_cmd)


def _pair(text: str, option: str, cast: type = float) -> tuple:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = tuple(cast(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] > values[1]:
        raise typer.BadParameter(f"expected LOW,HIGH (e.g. 0.6,1.4), got {text!r}", param_hint=option)
    return values


def synth_cmd(
    data: Path = typer.Option(..., "--data", help="COCO instances JSON of the training set."),
    images: Path = typer.Option(..., "--images", help="Image folder (file_name is relative to it)."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (images/, annotations.json, metadata.json, samples.png)."
    ),
    class_args: list[str] = typer.Argument(
        None, metavar="[CLASS]...", help="More class names (after --classes)."
    ),
    classes: list[str] = typer.Option(
        None, "--classes", help="Classes to synthesize: --classes train,cat or --classes train cat."
    ),
    rare_k: int | None = typer.Option(None, "--rare-k", min=1, help="Synthesize the k rarest classes."),
    rare_fraction: float | None = typer.Option(
        None,
        "--rare-fraction",
        min=0.0,
        max=1.0,
        help="Synthesize classes rarer than this (as `detrkit data stats` marks them).",
    ),
    per_class: int = typer.Option(100, "--per-class", min=1, help="Images per class."),
    method: str = typer.Option(
        "copy-paste", "--method", help="copy-paste | augment | diffusion | controlnet."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
    image_format: str = typer.Option("jpg", "--format", help="jpg | png."),
    instances: str = typer.Option(
        "1,3", "--instances", help="copy-paste: instances pasted per image, MIN,MAX."
    ),
    scale: str = typer.Option("0.6,1.4", "--scale", help="copy-paste: scale jitter, LOW,HIGH."),
    feather: int = typer.Option(
        2, "--feather", min=0, help="copy-paste: edge blending width in pixels (0: hard)."
    ),
    max_cover: float = typer.Option(
        0.3, "--max-cover", min=0.0, max=1.0, help="Paste where it hides at most this fraction of any object."
    ),
    drop_occluded: float = typer.Option(
        0.7,
        "--drop-occluded",
        min=0.0,
        max=1.0,
        help="Drop objects hidden over this fraction; shrink the others.",
    ),
    model: str | None = typer.Option(
        None, "--model", help="diffusion, controlnet: inpainting model, Hub id or local folder."
    ),
    controlnet: str | None = typer.Option(
        None,
        "--controlnet",
        help="controlnet: ControlNetModel, Hub id or local folder (default: a canny/seg SD 1.5 ControlNet per --control).",
    ),
    control: str = typer.Option(
        "edges",
        "--control",
        help="controlnet: condition on the placed instance's edges | mask, or the scene layout.",
    ),
    control_scale: float = typer.Option(
        1.0, "--control-scale", min=0.0, help="controlnet: conditioning scale."
    ),
    prompt: str = typer.Option(
        "a photo of a {class}", "--prompt", help="diffusion: prompt; {class} is the class name."
    ),
    steps: int = typer.Option(30, "--steps", min=1, help="diffusion: denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", min=0.0, help="diffusion: guidance scale."),
    resolution: int = typer.Option(
        512, "--resolution", min=8, help="diffusion: model resolution (multiple of 8)."
    ),
    device: str | None = typer.Option(
        None, "--device", help="diffusion: cuda | cpu (default: cuda when available)."
    ),
    filter_model: Path | None = typer.Option(
        None,
        "--filter-model",
        help="Quality filter: keep an image only if this detector (run folder or checkpoint) finds "
        "the class in every new instance's box.",
    ),
    filter_score: float = typer.Option(
        0.3, "--filter-score", min=0.0, max=1.0, help="Quality filter: minimum score."
    ),
    filter_iou: float = typer.Option(
        0.5, "--filter-iou", min=0.0, max=1.0, help="Quality filter: minimum IoU with the box."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Write synthetic images of rare classes as a COCO dataset to train on next to the real one."""
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from detrkit.data.coco import CocoIndex
    from detrkit.synth.controlnet import CONTROLS, ControlParams
    from detrkit.synth.copy_paste import PasteParams
    from detrkit.synth.diffusion import DiffusionParams, load_inpaint_pipeline
    from detrkit.synth.generate import METHODS, SynthOptions, choose_classes, synthesize

    if method not in METHODS:
        raise typer.BadParameter(f"choose one of {', '.join(METHODS)}", param_hint="--method")
    if control not in CONTROLS:
        raise typer.BadParameter(f"choose one of {', '.join(CONTROLS)}", param_hint="--control")
    if image_format not in ("jpg", "png"):
        raise typer.BadParameter("choose jpg or png", param_hint="--format")
    if not images.is_dir():
        raise DataError(f"{images}: images folder not found", path=images)
    names = [n for item in (classes or []) for n in item.split(",") if n] + list(class_args or [])
    index = CocoIndex.load(data)
    chosen = choose_classes(index, classes=names, rare_k=rare_k, rare_fraction=rare_fraction)
    lo, hi = _pair(instances, "--instances", int)
    diffusion = DiffusionParams(prompt=prompt, steps=steps, guidance=guidance, resolution=resolution)
    if model:
        diffusion = replace(diffusion, model=model)
    options = SynthOptions(
        method=method,
        per_class=per_class,
        seed=seed,
        image_format=image_format,
        instances_per_image=(lo, hi),
        paste=PasteParams(
            scale_range=_pair(scale, "--scale"),
            feather=feather,
            max_cover=max_cover,
            drop_occluded=drop_occluded,
        ),
        diffusion=diffusion,
        control=ControlParams(controlnet=controlnet, control=control, conditioning_scale=control_scale),
    )
    pipeline = None
    if method in ("diffusion", "controlnet"):
        net = options.control.model_id() if method == "controlnet" else None
        pipeline = load_inpaint_pipeline(diffusion.model, device=device, controlnet=net)
    quality = None
    if filter_model is not None:
        from detrkit.synth.quality import DetectorFilter, FilterParams

        params = FilterParams(model=str(filter_model), score=filter_score, iou=filter_iou)
        quality = DetectorFilter.from_model(params, device=device)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_err, transient=True, disable=as_json or not _err.is_terminal) as bar:
        task = bar.add_task(f"synth {method}", total=per_class * len(chosen))
        summary = synthesize(
            index,
            images,
            out,
            classes=chosen,
            options=options,
            pipeline=pipeline,
            quality=quality,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    summary["classes"] = chosen
    summary["method"] = method
    if quality is not None:
        summary["filter"] = json.loads((Path(out) / "metadata.json").read_text())["filter"]
    summary["override"] = extra_override(summary["annotations"], Path(out) / "images")
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = titled_table(f"synth {method}: {out}")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name in chosen:
        table.add_row(name, str(summary["per_class"].get(name, 0)))
    _out.print(table)
    _out.print(
        f"{summary['images']} images, {summary['instances']} annotations -> {summary['annotations']}",
        highlight=False,
    )
    if quality is not None:
        f = summary["filter"]
        _out.print(
            f"quality filter: kept {f['kept_images']} images ({f['kept_instances']} instances), "
            f"rejected {f['rejected_images']} images ({f['rejected_instances']} instances)",
            highlight=False,
        )
    if summary["samples"]:
        _out.print(f"samples: {summary['samples']}", highlight=False)
    _out.print(
        f"train on it next to the real data with: {extra_override(summary['annotations'], Path(out) / 'images')}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
