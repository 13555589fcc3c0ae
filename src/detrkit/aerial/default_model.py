"""The default aerial model: a ``unet-tiny`` trained on real drone tiles (Open Cities Accra) and generated scenes.

Used by ``detrkit app`` and ``detrkit aerial predict`` when no run is given, so that a fresh
install works offline. :func:`default_model_path` returns, in order: ``$DETRKIT_AERIAL_MODEL``; the
file shipped in the package (``detrkit/aerial/weights/unet_tiny_real.pt``, fp16, ~4.5 MB, with its
model card and GSD calibration; ``bench/aerial_default_model.py`` rebuilds it); a cached copy
(``~/.cache/detrkit/aerial/unet_tiny_synth.pt``); and otherwise trains one on first use (generated
data only, the ``tiny-synth`` preset, a few minutes on CPU) and caches it.
``weights/unet_tiny_synth.pt`` (the generated-data model) is kept: the real model starts from it.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from detrkit.aerial.config import load_aerial_config
from detrkit.aerial.gsd import GsdCalibration
from detrkit.errors import CheckpointError
from detrkit.runs.checkpoint import atomic_save, read_checkpoint

SHIPPED = Path(__file__).parent / "weights" / "unet_tiny_real.pt"
FILE_NAME = "unet_tiny_synth.pt"


def cache_dir() -> Path:
    """``$DETRKIT_CACHE`` or ``$XDG_CACHE_HOME/detrkit`` or ``~/.cache/detrkit``, plus ``/aerial``."""
    base = os.environ.get("DETRKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "detrkit"
    )
    return Path(base) / "aerial"


def export_inference_checkpoint(
    run_or_file: str | Path, dest: str | Path, *, extra: dict[str, object] | None = None
) -> Path:
    """Copy the inference part of a run's best checkpoint to ``dest``, weights in fp16 (half the size).

    ``extra`` adds keys, e.g. ``card`` (name, training data, measured accuracy: what ``aerial
    predict``, ``summary.json`` and the app show) and ``gsd_calibration``
    (:class:`detrkit.aerial.gsd.GsdCalibration` as a dict).
    """
    _, ckpt = read_checkpoint(run_or_file, "best")
    keep = {
        k: ckpt[k]
        for k in (
            "kind",
            "model_name",
            "model_kwargs",
            "classes",
            "tile",
            "gsd_range_m",
            "config",
            "metrics",
            "epoch",
            "card",
            "gsd_calibration",
        )
        if k in ckpt
    }
    keep.update(extra or {})
    keep["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    return atomic_save(keep, dest)


def train_default_model(dest: str | Path, *, epochs: int = 12, quiet: bool = True) -> Path:
    """Generate synthetic data, train ``tiny-synth`` and export it to ``dest`` (minutes on CPU)."""
    from detrkit.aerial.synth import SynthSpec, generate_aerial
    from detrkit.aerial.train import train_aerial

    with tempfile.TemporaryDirectory(prefix="detrkit-aerial-") as tmp:
        generate_aerial(Path(tmp) / "data", SynthSpec(seed=0))
        cfg = load_aerial_config(
            "tiny-synth", [f"data={tmp}/data", f"out={tmp}/runs", f"epochs={epochs}", "tensorboard=false"]
        )
        run = train_aerial(cfg, quiet=quiet)
        return export_inference_checkpoint(run, dest)


def default_model_path(*, train_if_missing: bool = True) -> Path:
    """Where the default model is (see the module docstring), training it once when nowhere to be found."""
    env = os.environ.get("DETRKIT_AERIAL_MODEL")
    if env:
        if not Path(env).exists():
            raise CheckpointError("DETRKIT_AERIAL_MODEL points to a missing file", path=env)
        return Path(env)
    if SHIPPED.is_file():
        return SHIPPED
    cached = cache_dir() / FILE_NAME
    if cached.is_file():
        return cached
    if not train_if_missing:
        raise CheckpointError(f"no default aerial model at {SHIPPED} or {cached}")
    torch.manual_seed(0)
    return train_default_model(cached)


def calibrate_gsd(
    model_file: str | Path, *, tiles_per_city: int = 6, size: int = 512, seed: int = 1
) -> GsdCalibration:
    """Fit :class:`GsdCalibration` of a model's GSD head on freshly generated tiles (3 cities).

    ``seed`` must differ from the training data's (0) and from the held-out benchmark's (100).
    Each tile is predicted like a user image (tiled, the checkpoint's tile size) and its tiles'
    mean log-GSD is regressed on the true log-GSD; with the buildings of the predicted mask (at
    the checkpoint's threshold, split as :class:`~detrkit.aerial.area.StripMeasurer` splits them)
    the combined fit with their median pixel size too (:meth:`GsdCalibration.fit`).
    """
    import numpy as np
    import rasterio

    from detrkit.aerial.model import AERIAL
    from detrkit.aerial.synth import SynthSpec, generate_aerial
    from detrkit.aerial.tiling import predict_array
    from detrkit.runs.restore import restore

    restored = restore(model_file, kind=AERIAL)
    model = restored.model.to("cpu").eval()
    tile = max(256, int(restored.checkpoint.get("tile", 512)))  # as AerialPredictor.from_checkpoint
    from detrkit.aerial.area import label_buildings
    from detrkit.aerial.gsd import building_size_feature

    threshold = float(restored.checkpoint.get("threshold", 0.5))
    xs, ys, sizes = [], [], []
    with tempfile.TemporaryDirectory(prefix="detrkit-gsd-") as tmp:
        truth = generate_aerial(Path(tmp), SynthSpec(tiles_per_city=tiles_per_city, size=size, seed=seed))
        for rel, t in truth["tiles"].items():
            with rasterio.open(Path(tmp) / rel) as src:
                image = src.read()
            logs: list[float] = []
            prob, _, _ = predict_array(
                model, image, tile=tile, overlap=tile // 4, device="cpu", tile_log_gsd=logs
            )
            xs.append(float(np.mean(logs)))
            ys.append(math.log(t["gsd_m"]))
            labels = label_buildings(prob >= threshold)
            sizes.append(building_size_feature(np.bincount(labels.ravel())[1:]))
    return GsdCalibration.fit(
        np.array(xs),
        np.array(ys),
        size_log=sizes,
        data=f"detrkit aerial synth seed {seed}, {len(xs)} tiles of {size} px",
    )
