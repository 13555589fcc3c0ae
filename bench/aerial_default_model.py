"""Build the shipped default aerial model from a training run: export, GSD calibration, model card.

    python bench/aerial_default_model.py --run runs/tiny_real \
        [--out src/detrkit/aerial/weights/unet_tiny_real.pt] [--spacenet /tmp/sn_folder]

The run is the last stage of ``detrkit aerial train --config tiny-real-s1`` ... ``-s5`` (docs/aerial.md).
Steps: export ``best.pt`` in fp16; fit the GSD calibration on generated tiles (seed 1, 18 tiles);
measure the held-out Accra tiles (``bench/aerial_real.py``'s split, at 0.15 / 0.3 / 0.5 m), the
generated held-out tiles (seed 100) and, when given, a SpaceNet folder; write the model card with
these numbers into the file (``aerial predict``, ``summary.json`` and the app show it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

from detrkit.aerial.default_model import calibrate_gsd, export_inference_checkpoint
from detrkit.aerial.gsd import GsdCalibration
from detrkit.aerial.predict import AerialPredictor
from detrkit.aerial.sources import SourceSpec, list_source_tiles
from detrkit.aerial.synth import SynthSpec, generate_aerial
from detrkit.runs.checkpoint import read_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from aerial_real import evaluate  # noqa: E402


def _short(r: dict) -> dict:
    keys = (
        "gsd_m",
        "tiles",
        "iou_mean",
        "iou_pooled",
        "total_area_error_pct",
        "median_abs_tile_area_error_pct",
        "iou_mean_near",
        "total_area_error_near_pct",
        "count_error_pct",
    )
    return {k: (round(r[k], 3) if isinstance(r[k], float) else r[k]) for k in keys}


def _gsd_errors(result: dict, calibration: GsdCalibration) -> dict:
    """Raw and calibrated GSD errors of the model head on tiles of known GSD, and interval coverage."""
    rows, heads = [], []
    for r in result["rows"]:
        est = calibration.estimate(r["tile_log_gsd"], building_pixels=r.get("building_pixels"))
        raw = math.exp(statistics.mean(r["tile_log_gsd"]))
        head = calibration.estimate(r["tile_log_gsd"]).metres_per_pixel  # without building sizes
        rows.append((abs(raw / r["gsd_m"] - 1), abs(est.metres_per_pixel / r["gsd_m"] - 1), est.uncertainty))
        heads.append(abs(head / r["gsd_m"] - 1))
    return {
        "tiles": len(rows),
        "head_only_calibrated_median_abs_error_pct": round(100 * statistics.median(heads), 1),
        "raw_median_abs_error_pct": round(100 * statistics.median(a for a, _, _ in rows), 1),
        "calibrated_median_abs_error_pct": round(100 * statistics.median(b for _, b, _ in rows), 1),
        "calibrated_mean_abs_error_pct": round(100 * statistics.mean(b for _, b, _ in rows), 1),
        "reported_uncertainty_pct": round(100 * statistics.median(u for _, _, u in rows), 1),
        "interval_coverage": round(statistics.mean(b <= u for _, b, u in rows), 2),
    }


def _real_log_error(results: list[dict], calibration: GsdCalibration) -> float:
    """Median ``|log(estimate / true)|`` of the calibrated GSD over every tile of ``results``.

    The Accra tiles' GSD is nominal (resized from ~0.1 m, itself an estimate from object sizes, so
    good to about ±20 %): enough to size an error of the order of 100 %, not to fit a calibration.
    """
    errs = [
        abs(
            math.log(
                calibration.estimate(r["tile_log_gsd"], r["building_pixels"]).metres_per_pixel / r["gsd_m"]
            )
        )
        for res in results
        for r in res["rows"]
    ]
    return float(statistics.median(errs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/tiny_real")
    ap.add_argument("--out", default="src/detrkit/aerial/weights/unet_tiny_real.pt")
    ap.add_argument("--accra", default="data/aerial_real/opencities_accra")
    ap.add_argument("--spacenet", default=None, help="folder layout made by `detrkit aerial rasterize`")
    ap.add_argument("--json", default="bench/aerial_default_model.json")
    ap.add_argument(
        "--calibration-tiles", type=int, default=6, help="generated tiles per city (3 cities) for the GSD fit"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = export_inference_checkpoint(args.run, Path(tmp) / "model.pt")
        calibration = calibrate_gsd(plain, tiles_per_city=args.calibration_tiles, seed=1)
        pred = AerialPredictor.from_checkpoint(plain, device="cpu")
        accra = list_source_tiles(SourceSpec(args.accra), "val")
        accra_evals = [evaluate(pred, accra, 0.1, g) for g in (0.15, 0.3, 0.5)]
        acc = {"accra_heldout": [_short(r) for r in accra_evals]}
        generate_aerial(Path(tmp) / "gen", SynthSpec(tiles_per_city=4, seed=100))
        gen = list_source_tiles(SourceSpec(str(Path(tmp) / "gen")), "all")
        gen_eval = evaluate(pred, gen, None, None)
        acc["generated_heldout"] = [_short(gen_eval)]
        real_evals, real_names = (
            list(accra_evals),
            ["44 held-out Accra tiles at 0.15/0.3/0.5 m (GSD nominal)"],
        )
        if args.spacenet:
            sn = list_source_tiles(SourceSpec(args.spacenet), "all")
            sn_eval = evaluate(pred, sn, None, None)
            acc["spacenet_sample"] = [_short(sn_eval)]
            real_evals.append(sn_eval)
            real_names.append("the SpaceNet sample tile")
        # the fits are on generated scenes: the error on real tiles joins every estimate's uncertainty
        calibration = dataclasses.replace(
            calibration,
            real_log_error=_real_log_error(real_evals, calibration),
            real_data=" and ".join(real_names),
        )
        acc["generated_heldout_gsd"] = _gsd_errors(gen_eval, calibration)
        for name, r in zip(("0.15", "0.3", "0.5"), accra_evals, strict=True):
            acc[f"accra_heldout_gsd_{name}m_nominal"] = _gsd_errors(r, calibration)
        if args.spacenet:
            acc["spacenet_sample_gsd"] = _gsd_errors(sn_eval, calibration)
    _, best = read_checkpoint(args.run, "best")
    epochs = (best.get("config") or {}).get("epochs")
    card = {
        "name": "detrkit unet-tiny-real v2",
        "checkpoint": f"best.pt of the run: epoch {best.get('epoch', -1) + 1} of {epochs} (the last stage)",
        "architecture": "unet-tiny (ResNet-18-like encoder, widths 24-160, ASPP, U-Net decoder, GSD head)",
        "trained_on": (
            "Open Cities AI Accra drone tiles (CC BY 4.0; 184 training tiles, rows < 24576 of the scene "
            "grid, rescaled to 0.15-0.5 m) + 21 generated scenes (detrkit aerial synth, seed 0, 0.15-2 m); "
            "five stages from scratch: Accra only (4 epochs); + generated scenes and augmentations "
            "(14 epochs); the same at a lower learning rate (10); with 10 and then 16 crops per generated "
            "scene (6 and 16 epochs)"
        ),
        "accuracy": acc,
        "accuracy_note": (
            "held-out Accra tiles are from the same city and sensor as the training tiles (another area); "
            "IoU is the mean over tiles; area errors with the GSD given. The Accra masks are incomplete "
            "(unlabelled roofs outside the annotated areas count as false positives); *_near scores only "
            "pixels within 5 m of a labelled building"
        ),
        "gsd": (
            f"calibrated on {calibration.data}; GSD head alone: residual sd {calibration.residual_sd:.3f} (log)"
            + (
                f"; head + median building size in pixels (images with >= 5 buildings of >= 20 px): "
                f"residual sd {calibration.size_residual_sd:.3f} over {calibration.size_images} images"
                if calibration.size_coef is not None
                else ""
            )
            + (
                f"; on real tiles ({calibration.real_data}) the calibrated GSD was off by a median "
                f"{100 * (math.exp(calibration.real_log_error) - 1):.0f}%, which every reported uncertainty includes"
                if calibration.real_log_error is not None
                else ""
            )
        ),
        "reproduce": "detrkit aerial synth --out data/aerial_synth; for s in s1 s2 s3 s4 s5; do detrkit aerial "
        "train --config tiny-real-$s run_dir=runs/tiny_real_$s; done; "
        "python bench/aerial_default_model.py --run runs/tiny_real_s5 --calibration-tiles 12",
    }
    export_inference_checkpoint(
        args.run, args.out, extra={"card": card, "gsd_calibration": calibration.to_dict()}
    )
    Path(args.json).write_text(json.dumps({"card": card, "gsd_calibration": calibration.to_dict()}, indent=1))
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
