"""Area and GSD accuracy of an aerial model on freshly generated tiles with known truth.

    python bench/aerial_accuracy.py [--model RUN|FILE] [--tiles-per-city 6] [--size 512] [--out bench/aerial_accuracy.json]

Generates a held-out set (seed 100; the default model was trained on seed 0), predicts every tile
twice: with the GeoTIFF georeference (area error of the segmentation alone) and as a plain PNG
(GSD from the model, calibrated when the checkpoint has a calibration: the GSD error, the share of
tiles whose true GSD lies within the reported ± interval, and the end-to-end area error).
Writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

from detrkit.aerial.predict import AerialPredictor
from detrkit.aerial.synth import SynthSpec, generate_aerial


def _match(true: list[dict], pred: list[dict]) -> list[tuple[float, float]]:
    """(true m², predicted m²) of buildings whose centroids are within half a side of each other."""
    if not pred:
        return []
    pc = np.array([[p["centroid_x"], p["centroid_y"]] for p in pred])
    out = []
    for t in true:
        d = np.hypot(*(pc - np.array(t["centroid_xy"])).T)
        j = int(d.argmin())
        if d[j] < 0.5 * math.sqrt(t["area_m2"]):
            out.append((t["area_m2"], pred[j]["area_m2"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tiles-per-city", type=int, default=6)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--out", default="bench/aerial_accuracy.json")
    args = ap.parse_args()
    pred = (
        AerialPredictor.from_checkpoint(args.model, device="cpu")
        if args.model
        else AerialPredictor.default(device="cpu")
    )
    rows, pairs, t0 = [], [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        truth = generate_aerial(
            root / "data", SynthSpec(tiles_per_city=args.tiles_per_city, size=args.size, seed=args.seed)
        )
        for rel, t in truth["tiles"].items():
            tif = root / "data" / rel
            geo = pred.predict_file(tif, root / "geo", min_area_m2=0.0)
            png = root / "plain.png"
            with rasterio.open(tif) as src:
                Image.fromarray(src.read().transpose(1, 2, 0)).save(png)
            plain = pred.predict_file(png, root / "plain", min_area_m2=0.0)
            with (
                rasterio.open(root / "geo" / "mask.tif") as m,
                rasterio.open(str(tif).replace("images", "gt")) as g,
            ):
                p, gt = m.read(1) > 0, g.read(1) > 0
            buildings = json.loads((root / "geo" / "buildings.geojson").read_text())["features"]
            pb = [f["properties"] for f in buildings]
            pairs += _match(t["buildings"], pb)
            rows.append(
                {
                    "tile": rel,
                    "gsd_true": t["gsd_m"],
                    "gsd_model": plain["model_gsd_m"],
                    "gsd_ape_pct": 100 * abs(plain["model_gsd_m"] / t["gsd_m"] - 1),
                    "gsd_uncertainty_pct": None
                    if plain.get("model_gsd_uncertainty") is None
                    else 100 * plain["model_gsd_uncertainty"],
                    "area_true_m2": t["built_area_m2"],
                    "area_pred_m2": geo["built_area_m2"],
                    "area_pred_model_gsd_m2": plain["built_area_m2"],
                    "count_true": len(t["buildings"]),
                    "count_pred": geo["building_count"],
                    "iou": float((p & gt).sum() / max(1, (p | gt).sum())),
                }
            )
    a_true = sum(r["area_true_m2"] for r in rows)
    report = {
        "model": pred.name,
        "tiles": len(rows),
        "seconds": round(time.perf_counter() - t0, 1),
        "total_area_error_pct": 100 * (sum(r["area_pred_m2"] for r in rows) / a_true - 1),
        "mean_abs_tile_area_error_pct": float(
            np.mean(
                [100 * abs(r["area_pred_m2"] / r["area_true_m2"] - 1) for r in rows if r["area_true_m2"] > 0]
            )
        ),
        "total_area_error_model_gsd_pct": 100 * (sum(r["area_pred_model_gsd_m2"] for r in rows) / a_true - 1),
        "gsd_mape_pct": float(np.mean([r["gsd_ape_pct"] for r in rows])),
        "gsd_median_ape_pct": float(np.median([r["gsd_ape_pct"] for r in rows])),
        "gsd_interval_coverage": float(np.mean([r["gsd_ape_pct"] <= r["gsd_uncertainty_pct"] for r in rows]))
        if all(r["gsd_uncertainty_pct"] is not None for r in rows)
        else None,
        "pixel_iou_mean": float(np.mean([r["iou"] for r in rows])),
        "buildings_true": sum(r["count_true"] for r in rows),
        "buildings_pred": sum(r["count_pred"] for r in rows),
        "buildings_matched": len(pairs),
        "matched_building_median_abs_area_error_pct": float(
            np.median([100 * abs(p / t - 1) for t, p in pairs])
        )
        if pairs
        else None,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
