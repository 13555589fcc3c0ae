"""``make demo`` / ``python -m detrkit.demo``: the whole product in a few minutes on a CPU.

1. generates the built-in shapes dataset (COCO format) under ``data/shapes``;
2. trains a tiny two-stage Deformable DETR from scratch with ``configs/demo.yaml`` (preflight, run folder, TensorBoard,
   checkpoints, metrics);
3. evaluates the best checkpoint with COCO metrics (overall and per class);
4. analyses its errors (``detrkit analyze``: TIDE table, ``report.html``);
5. predicts on a few validation images and draws them (ground truth green, predictions red, at the
   best-F1 confidence);
6. prints where everything is.

Options: ``python -m detrkit.demo [--out runs] [--data data/shapes] [key=value ...]`` (overrides
of the demo config, e.g. ``train.epochs=2`` for a quick look).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from detrkit.errors import DetrkitError


def _draw_examples(
    run_dir: Path, val_ann: Path, val_images: Path, threshold: float, count: int = 6
) -> list[Path]:
    import torch
    from PIL import Image

    from detrkit.boxes import box_xywh_to_xyxy
    from detrkit.data.coco import CocoIndex
    from detrkit.data.visualize import draw_detections
    from detrkit.inference.predictor import Predictor

    predictor = Predictor.from_run(run_dir, checkpoint="best", device="cpu")
    index = CocoIndex.load(val_ann)
    out_dir = run_dir / "predictions"
    out_dir.mkdir(exist_ok=True)
    written = []
    for info in index.images[:count]:
        path = val_images / info.file_name
        det = predictor.predict(path, threshold=threshold)[0]
        anns = index.anns_by_image(info.id)
        gt = box_xywh_to_xyxy(torch.tensor([a.bbox_xywh for a in anns], dtype=torch.float32).reshape(-1, 4))
        drawn = draw_detections(
            Image.open(path),
            gt_boxes_xyxy=gt,
            gt_labels=[index.cat_id_to_label[a.category_id] for a in anns],
            pred_boxes_xyxy=det.boxes_xyxy,
            pred_labels=det.labels,
            pred_scores=det.scores,
            class_names=predictor.class_names,
        )
        target = out_dir / f"{Path(info.file_name).stem}.png"
        drawn.resize((drawn.width * 2, drawn.height * 2), Image.NEAREST).save(target)
        written.append(target)
    return written


def _analyze(run_dir: Path, val_ann: Path, val_images: Path) -> float:
    """The analysis of ``detrkit analyze --run RUN`` (TIDE table, report.html); returns the best-F1
    confidence.

    A model trained for minutes is rarely confident: its detections seldom reach a fixed 0.5, so the
    drawings use the confidence that maximises F1 on the val set (at least 0.05).
    """
    from detrkit.workflows.analyze import analyze_run, print_analysis

    console = Console()
    outcome = analyze_run(
        run=run_dir, data=val_ann, images=val_images, device="cpu", batch_size=16, status=console.status
    )
    print_analysis(outcome, console)
    return max(float(outcome.summary["confusion"]["score_thresh"]), 0.05)


def run_demo(
    out_root: str = "runs", data_dir: str = "data/shapes", overrides: list[str] | None = None
) -> dict:
    """Run the demo; returns the training summary plus the evaluation and drawn images."""
    from detrkit.config import load_config
    from detrkit.engine.evaluate_run import evaluate_run
    from detrkit.engine.trainer import Trainer

    console = Console()
    t0 = time.perf_counter()
    cfg = load_config("demo", [f"output.root={out_root}", f"data.shapes.out={data_dir}", *(overrides or [])])
    console.print(
        f"[bold]detrkit demo[/bold]: {cfg.model.name} from scratch on the built-in shapes dataset ({data_dir})"
    )
    summary = Trainer(cfg, console=console).fit()
    run_dir = Path(summary["run_dir"])
    t_train = time.perf_counter() - t0
    result = evaluate_run(run_dir, checkpoint="best")
    m = result["metrics"]
    table = Table(title=f"COCO metrics of {result['checkpoint']} ({result['num_images']} val images)")
    for col in ("class", "AP", "AP50", "AP75"):
        table.add_column(col, justify="left" if col == "class" else "right")
    table.add_row("[bold]all[/bold]", f"{m['AP']:.3f}", f"{m['AP50']:.3f}", f"{m['AP75']:.3f}")
    for c in m.get("per_class", []):
        fmt = lambda v: "-" if v < 0 else f"{v:.3f}"  # noqa: E731
        table.add_row(c["name"], fmt(c["AP"]), fmt(c["AP50"]), fmt(c["AP75"]))
    console.print(table)
    val_ann, val_images = (
        Path(cfg.data.shapes.out) / "annotations" / "val.json",
        Path(cfg.data.shapes.out) / "val",
    )
    threshold = _analyze(run_dir, val_ann, val_images)
    drawn = _draw_examples(run_dir, val_ann, val_images, threshold)
    wall = time.perf_counter() - t0
    console.print(
        f"AP50 {m['AP50']:.3f}, AP {m['AP']:.3f}; data + training {t_train:.0f}s, total {wall:.0f}s\n"
        f"run folder:   {run_dir}\n"
        f"predictions:  {drawn[0].parent} ({len(drawn)} drawn images: ground truth green, predictions red"
        f" at confidence >= {threshold:.2f}, the best-F1 confidence)\n"
        f"analysis:     {run_dir / 'report.html'} (errors, PR/F1 curves, confusion matrix, galleries)\n"
        f"TensorBoard:  tensorboard --logdir {run_dir / 'tb'}\n"
        f"next:         detrkit val --run {run_dir}   |   detrkit predict --run {run_dir} --source IMAGES"
    )
    return {**summary, "eval": result, "drawn": [str(p) for p in drawn], "total_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detrkit.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs", help="folder of run folders (default: runs)")
    parser.add_argument("--data", default="data/shapes", help="where the shapes dataset is generated")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml")
    args = parser.parse_args(argv)
    try:
        run_demo(args.out, args.data, args.overrides)
    except DetrkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
