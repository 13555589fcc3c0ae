"""``detrkit models``: the registered models, their size, input size, packaged recipe and Hub weights."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the ``models`` command to the root app."""
    app.command("models")(models_cmd)


def _num_params(name: str) -> int | None:
    """Parameters of ``name`` built for 80 classes on the meta device (no memory, no download)."""
    import torch

    from detrkit.models.registry import build_model

    try:
        with torch.device("meta"):
            model = build_model(name, num_classes=80)
    except Exception:  # noqa: BLE001 - a builder that cannot run on meta: leave the column empty
        return None
    return sum(p.numel() for p in model.parameters())


def _input_size(recipe: str | None) -> str:
    """The validation input size of a packaged recipe: ``SxS`` (``light`` preset) or ``short/long``
    (shorter side resized to ``short``, longer side at most ``long``; DETR's default 800/1333)."""
    if recipe is None:
        return "800/1333"
    from detrkit.config import load_config

    cfg = load_config(recipe)
    size = cfg.data.transform_args.get("size")
    if cfg.data.val_preset == "light":
        return f"{size or 512}x{size or 512}"
    return f"{size or 800}/{cfg.data.transform_args.get('max_size', 1333)}"


def models_cmd(
    pattern: str | None = typer.Argument(None, help="Only names containing this text."),
    params: bool = typer.Option(True, "--params/--no-params", help="Count parameters (80 classes)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the registered models (use a name with `detrkit train --data PATH --model NAME`)."""
    from detrkit.engine.quickstart import recipe_for_model
    from detrkit.models.registry import list_models, model_info

    rows: list[dict[str, Any]] = []
    for name in list_models(pattern):
        info = model_info(name)
        recipe = recipe_for_model(name)
        rows.append(
            {
                "name": name,
                "family": info.info.get("family", ""),
                "params": _num_params(name) if params else None,
                "input_size": _input_size(recipe),
                "config": recipe,
                "hub_weights": info.info.get("hf_id"),
                "description": info.description,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="registered models (detrkit train --data PATH --model NAME)")
    for col in ("name", "family", "params", "input size", "packaged config", "Hub weights"):
        table.add_column(col, justify="right" if col == "params" else "left", no_wrap=col == "name")
    for r in rows:
        n = r["params"]
        table.add_row(
            r["name"],
            r["family"],
            "-" if n is None else f"{n / 1e6:.1f}M",
            r["input_size"],
            r["config"] or "-",
            r["hub_weights"] or "-",
        )
    Console().print(table)
