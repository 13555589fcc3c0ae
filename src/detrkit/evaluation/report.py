"""``report.html``: one self-contained file (inline CSS, figures as base64 PNG data URIs, no network).

Sections (each has an ``id``): ``summary``, ``classes``, ``errors``, ``curves``, ``confusion``,
``sizes``, ``training``, ``galleries``, ``config``, ``environment``.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from detrkit.evaluation import plots
from detrkit.evaluation.analysis import AnalysisResult
from detrkit.evaluation.errors import DESCRIPTIONS, ERROR_TYPES, FP_TYPES, TIDE_NAMES
from detrkit.evaluation.galleries import ClassGallery

SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("classes", "Per class"),
    ("errors", "Error analysis"),
    ("curves", "PR and F1 curves"),
    ("confusion", "Confusion matrix"),
    ("sizes", "AP by size"),
    ("training", "Training curves"),
    ("galleries", "Galleries"),
    ("config", "Config"),
    ("environment", "Environment"),
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#d0d7de;font-size:13px;word-break:break-all}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #d0d7de;padding:8px 32px;z-index:2}
nav a{margin-right:14px;color:#0969da;text-decoration:none;font-size:14px}
main{padding:8px 32px 40px;max-width:1400px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 20px;margin:18px 0}
h2{font-size:18px;margin:4px 0 12px}h3{font-size:15px;margin:16px 0 8px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:right;white-space:nowrap}
th{background:#f6f8fa}td:first-child,th:first-child,td.l{text-align:left}
tr:nth-child(even) td{background:#fbfcfd}
.scroll{overflow-x:auto}.note{color:#57606a;font-size:13px;margin:4px 0 10px}
.bad{color:#cf222e;font-weight:600}
img.fig{max-width:100%;height:auto;display:block;margin:8px 0}img.wide{max-width:none}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:6px 0 12px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;min-width:110px;background:#f6f8fa}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#57606a}
.cls{display:flex;flex-wrap:wrap;gap:28px;border-top:1px solid #d0d7de;padding-top:4px}
.gallery{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:8px}h4{margin:6px 0;font-size:13px;color:#57606a}
figure{margin:0;width:320px}figure img{width:320px;height:auto;border:1px solid #d0d7de;border-radius:4px}
figcaption{font-size:12px;color:#57606a;word-break:break-all}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:10px;font-size:12px;overflow-x:auto}
"""


@dataclass(frozen=True)
class RunInfo:
    """What the report shows about the run that produced the predictions (all optional)."""

    run_dir: Path | None = None
    config_text: str | None = None
    env: dict[str, Any] | None = None
    metrics_rows: list[dict[str, Any]] = field(default_factory=list)


def _img(png: bytes | None, alt: str, cls: str = "fig") -> str:
    if png is None:
        return ""
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, float | np.floating):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _td(c: Any, digits: int) -> str:
    text = isinstance(c, str) and len(c) > 1 and c != "–"
    return f'<td class="l">{_fmt(c, digits)}</td>' if text else f"<td>{_fmt(c, digits)}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(c, digits) for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _coco_value(v: float | None) -> float | None:
    return None if v is None or v < 0 else float(v)


def _summary(result: AnalysisResult) -> str:
    e, d = result.errors, result.data
    cards = [
        ("images", d.num_images),
        ("GT boxes", int((~d.gt_crowd).sum())),
        ("predictions", len(d.dt_score)),
    ]
    if result.coco is not None:
        cards += [(k, f"{result.coco.stats[k]:.3f}") for k in ("AP", "AP50", "AP75")]
    cards.append((f"TIDE AP{round(e.pos_thresh * 100)} (%)", f"{e.ap:.1f}"))
    out = (
        '<div class="cards">'
        + "".join(f"<div class='card'><b>{_fmt(v)}</b><span>{html.escape(k)}</span></div>" for k, v in cards)
        + "</div>"
    )
    if result.coco is not None:
        s = result.coco.stats
        out += _table(list(s), [[_coco_value(v) for v in s.values()]])
        out += '<p class="note">COCO metrics (faster-coco-eval, max 100 detections per image).</p>'
    else:
        out += '<p class="note">COCO metrics not computed.</p>'
    return out


def _per_class(result: AnalysisResult) -> str:
    e, c, d = result.errors, result.curves, result.data
    coco = {m.name: m for m in result.coco.per_class} if result.coco is not None else {}
    n_gt = np.bincount(d.gt_label[~d.gt_crowd], minlength=d.num_classes)
    n_dt = np.bincount(d.dt_label, minlength=d.num_classes)
    header = (
        ["class", "GT", "pred", "AP", "AP50", "AP75", "best conf", "F1", "P", "R"]
        + [f"FP {TIDE_NAMES[t]}" for t in FP_TYPES]
        + ["FN miss", "FN loc", "FN cls"]
    )
    rows = []
    for k, name in enumerate(d.class_names):
        m = coco.get(name)
        rows.append(
            [
                name,
                int(n_gt[k]),
                int(n_dt[k]),
                _coco_value(m.AP) if m else None,
                _coco_value(m.AP50) if m else None,
                _coco_value(m.AP75) if m else None,
                c.best_threshold[k],
                c.best_f1[k],
                c.best_precision[k],
                c.best_recall[k],
            ]
            + [int(e.fp_counts_per_class[t][k]) for t in FP_TYPES]
            + [int(e.fn_counts_per_class[t][k]) for t in ("miss", "loc", "cls")]
        )
    note = (
        '<p class="note">best conf: the confidence that maximises F1 at IoU '
        f"{c.iou_thresholds[0]:.2f} (P, R at that confidence). FP/FN columns: TIDE error counts "
        "(see Error analysis).</p>"
    )
    return _table(header, rows) + note


def _errors(result: AnalysisResult) -> str:
    e = result.errors
    out = _img(plots.tide_bars(e), "TIDE dAP bars")
    out += _table(
        ["type", "dAP", "FP count", "FN count", "meaning"],
        [
            [
                TIDE_NAMES[t],
                e.dap[t],
                e.fp_counts.get(t, "–") if t != "miss" else "–",
                e.fn_counts.get(t, "–"),
                DESCRIPTIONS[t],
            ]
            for t in ERROR_TYPES
        ],
        digits=2,
    )
    out += (
        f'<p class="note">TIDE at IoU {e.pos_thresh} (background {e.bg_thresh}), its own AP '
        f"({e.ap:.2f}: 101-point, classes with GT or predictions, max {e.max_dets} detections per image). "
        f"dAP: AP points gained if an oracle fixed every error of the type. {e.num_tp} true positives, "
        f"{e.num_ignored} predictions ignored on crowd regions. FalsePos / FalseNeg: "
        f"{e.special_dap['false_pos']:.2f} / {e.special_dap['false_neg']:.2f}.</p>"
    )
    rows = [
        [n, e.ap_per_class[k]] + [e.dap_per_class[t][k] for t in ERROR_TYPES]
        for k, n in enumerate(e.class_names)
    ]
    out += "<h3>dAP per class</h3>" + _table(["class", "AP"] + [TIDE_NAMES[t] for t in ERROR_TYPES], rows, 2)
    return out


def _galleries(galleries: list[ClassGallery] | None, note: str | None) -> str:
    if not galleries:
        return f'<p class="note">{html.escape(note or "No galleries.")}</p>'
    out = (
        '<p class="note">Ground truth in green, predictions in red (those above the report\'s '
        "confidence threshold, plus the one in question); the box in question is outlined in yellow. "
        "False positives: the highest-scoring non-TP predictions; misses: the largest unmatched GT. "
        "One tile per image.</p>"
    )
    for g in galleries:
        out += f'<h3>{html.escape(g.class_name)}</h3><div class="cls">'
        for title, tiles in (("Worst false positives", g.false_positives), ("Worst misses", g.misses)):
            figs = (
                "".join(
                    f"<figure>{_img(t.png, t.caption, 'tile')}<figcaption>{html.escape(t.caption)}"
                    "</figcaption></figure>"
                    for t in tiles
                )
                or '<p class="note">none</p>'
            )
            out += f'<div><h4>{title}</h4><div class="gallery">{figs}</div></div>'
        out += "</div>"
        if g.skipped:
            out += f'<p class="note bad">{g.skipped} image(s) could not be read.</p>'
    return out


def _environment(info: RunInfo) -> str:
    here = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for dist in ("detrkit", "numpy", "faster-coco-eval", "matplotlib", "torch"):
        try:
            here[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            here[dist] = None
    out = "<h3>This analysis</h3><pre>" + html.escape(json.dumps(here, indent=2)) + "</pre>"
    if info.env is not None:
        out += (
            "<h3>Training run (env.json)</h3><pre>" + html.escape(json.dumps(info.env, indent=2)) + "</pre>"
        )
    return out


def build_report(
    result: AnalysisResult,
    *,
    info: RunInfo | None = None,
    galleries: list[ClassGallery] | None = None,
    gallery_note: str | None = None,
    title: str = "detrkit analysis",
) -> str:
    """The whole report as one HTML string."""
    info = info or RunInfo()
    body: dict[str, str] = {
        "summary": _summary(result),
        "classes": _per_class(result),
        "errors": _errors(result),
        "curves": _img(plots.pr_curves(result.curves), "PR curves")
        + _img(plots.f1_curves(result.curves), "F1 curves"),
        "confusion": '<div class="scroll">'
        + _img(
            plots.confusion_plot(result.confusion),
            "confusion matrix",
            "fig wide" if result.data.num_classes > 25 else "fig",
        )
        + "</div>"
        + '<p class="note">Rows: ground truth; columns: prediction; background collects false positives '
        "(column) and missed objects (row). Same-class matches first, then leftovers of any class.</p>",
    }
    size_ap = result.size_ap()
    if size_ap:
        body["sizes"] = _img(plots.size_bars(size_ap), "AP by size") + _table(
            ["", "small", "medium", "large"],
            [[g, v["small"], v["medium"], v["large"]] for g, v in size_ap.items()],
        )
    else:
        body["sizes"] = '<p class="note">COCO metrics were not computed.</p>'
    train_png = plots.training_curves(info.metrics_rows)
    body["training"] = (
        _img(train_png, "training curves")
        if train_png
        else '<p class="note">No metrics.csv (the predictions do not come from a detrkit run).</p>'
    )
    body["galleries"] = _galleries(galleries, gallery_note)
    body["config"] = (
        ("<pre>" + html.escape(info.config_text) + "</pre>")
        if info.config_text
        else '<p class="note">No config.yaml.</p>'
    )
    body["environment"] = _environment(info)

    sources = [f"ground truth: {result.data.gt_source}", f"predictions: {result.data.dt_source}"]
    if info.run_dir is not None:
        sources.insert(0, f"run: {info.run_dir}")
    nav = "".join(f'<a href="#{sid}">{name}</a>' for sid, name in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{name}</h2>{body[sid]}</section>' for sid, name in SECTIONS)
    head = "".join(f"<p>{html.escape(s)}</p>" for s in sources)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body><header><h1>{html.escape(title)}</h1>{head}</header><nav>{nav}</nav>"
        f"<main>{sections}</main></body></html>\n"
    )


def write_report(path: str | Path, report_html: str) -> Path:
    """Write the HTML (UTF-8) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html, encoding="utf-8")
    return path
