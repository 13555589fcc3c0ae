"""The files of ``detrkit benchmark``: Markdown, CSV, JSON, an AP-vs-latency plot and an HTML page."""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "table_rows", "write_report"]

#: (header, row attribute or metric name, format)
COLUMNS = [
    ("model", "name", "{}"), ("source", "source", "{}"),
    ("AP", "AP", "{:.4f}"), ("AP50", "AP50", "{:.4f}"), ("AP75", "AP75", "{:.4f}"),
    ("APs", "APs", "{:.4f}"), ("APm", "APm", "{:.4f}"), ("APl", "APl", "{:.4f}"),
    ("params (M)", "params_m", "{:.2f}"), ("train img/s", "train_images_per_s", "{:.1f}"),
    ("latency (ms)", "latency_ms", "{:.1f}"), ("peak memory (MB)", "peak_memory_mb", "{:.0f}"),
]  # fmt: skip


def _value(row: Any, key: str) -> Any:
    return row.metrics.get(key) if key in row.metrics else getattr(row, key)


def table_rows(rows: Sequence[Any]) -> list[list[str]]:
    """The main table as strings (``-`` where not measured; AP ``-1`` is COCO's "no such boxes")."""
    out = []
    for row in sorted(rows, key=lambda r: -r.metrics["AP"]):
        cells = []
        for _, key, fmt in COLUMNS:
            v = _value(row, key)
            cells.append("-" if v is None or (isinstance(v, float) and v < 0) else fmt.format(v))
        out.append(cells)
    return out


def _per_class(rows: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    classes = sorted({c for r in rows for c in r.per_class})
    body = [
        [c] + [("-" if r.per_class.get(c, -1) < 0 else f"{r.per_class[c]:.4f}") for r in rows]
        for c in classes
    ]
    return ["class", *(r.name for r in rows)], body


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"


def _plot(rows: Sequence[Any], path: Path) -> bool:
    timed = [r for r in rows if r.latency_ms is not None]
    if not timed:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in timed:
        ax.scatter(r.latency_ms, r.metrics["AP"])
        ax.annotate(r.name, (r.latency_ms, r.metrics["AP"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("inference latency per image (ms, batch 1)")
    ax.set_ylabel("AP (COCO, val)")
    ax.set_title("AP vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(rows: Sequence[Any], out: Path, *, val_ann: Path) -> dict[str, Path]:
    """Write ``benchmark.{md,csv,json}``, ``benchmark_per_class.csv``, ``ap_vs_latency.png`` (when any row was timed) and
    ``index.html`` into ``out``; returns their paths by kind."""
    header = [h for h, _, _ in COLUMNS]
    body = table_rows(rows)
    pc_header, pc_body = _per_class(rows)
    memory_kinds = sorted({r.peak_memory_kind for r in rows if r.peak_memory_kind})
    note = (
        f"Validation set: `{val_ann}`. Latency: median of single-image forward + postprocess. "
        f"Peak memory: training preflight step ({', '.join(memory_kinds) or 'not measured'})."
    )
    md = f"# Benchmark\n\n{note}\n\n{_markdown(header, body)}\n## AP per class\n\n{_markdown(pc_header, pc_body)}"
    paths = {"md": out / "benchmark.md", "csv": out / "benchmark.csv", "json": out / "benchmark.json"}
    paths["md"].write_text(md)
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(body)
    paths["per_class_csv"] = out / "benchmark_per_class.csv"
    with paths["per_class_csv"].open("w", newline="") as f:
        csv.writer(f).writerows([pc_header, *pc_body])
    paths["json"].write_text(
        json.dumps({"val_ann": str(val_ann), "rows": [asdict(r) for r in rows]}, indent=1)
    )
    plot = out / "ap_vs_latency.png"
    if _plot(rows, plot):
        paths["plot"] = plot

    def table(h: Sequence[str], b: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{html.escape(x)}</th>" for x in h)
        rows_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>"

    img = '<p><img src="ap_vs_latency.png" alt="AP vs latency"></p>' if "plot" in paths else ""
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>detrkit benchmark</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
        f"</style></head><body><h1>Benchmark</h1><p>{html.escape(note)}</p>{table(header, body)}{img}"
        f"<h2>AP per class</h2>{table(pc_header, pc_body)}"
        "<p>Files: benchmark.md, benchmark.csv, benchmark.json</p></body></html>"
    )
    paths["html"] = out / "index.html"
    paths["html"].write_text(page)
    return paths
