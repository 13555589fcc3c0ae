"""``detrkit data convert``: any readable layout -> COCO or YOLO, and datasets ready to train on.

``to coco`` writes ``OUT/<split>.json`` with ``file_name`` relative to the split's image folder
(images stay where they are; the summary says which ``--images`` folder goes with each file).
``to yolo`` writes an Ultralytics dataset (:func:`detrkit.data.formats.yolo.write_yolo`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detrkit.data.formats.layout import Layout, Split, detect_layout
from detrkit.data.formats.yolo import write_yolo
from detrkit.errors import ConfigError, DataError

TARGETS: tuple[str, ...] = ("coco", "yolo")


@dataclass
class Converted:
    """What :func:`convert` wrote: per split the annotation file and its images folder."""

    layout: Layout
    splits: dict[str, Split]
    outputs: dict[str, tuple[Path, Path]]  # split -> (annotation file or data.yaml, images folder)


def convert(
    src: str | Path,
    out: str | Path,
    *,
    to: str,
    source_format: str | None = None,
    images: str | Path | None = None,
    segments: bool = False,
    link: bool = True,
) -> Converted:
    """Read ``src`` (any layout; ``source_format`` must match the detected one when given), write ``out``."""
    if to not in TARGETS:
        raise ConfigError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    layout = detect_layout(src, images=images)
    same = source_format in (None, layout.format) or (source_format, layout.format) == ("coco", "roboflow")
    if not same:
        raise DataError(f"{src}: --from {source_format} but the folder is a {layout.format} layout")
    splits = layout.load()
    if not splits:
        raise DataError(f"{src}: no split found")
    out = Path(out)
    outputs: dict[str, tuple[Path, Path]] = {}
    if to == "coco":
        for name, s in splits.items():
            outputs[name] = (s.index.save(out / f"{name}.json"), s.images)
    else:
        yaml_path = write_yolo(
            {n: (s.index, s.images) for n, s in splits.items()}, out, segments=segments, link=link
        )
        outputs = {n: (yaml_path, out / "images" / n) for n in splits}
    return Converted(layout, splits, outputs)


def prepare_training_data(
    path: str | Path, out: str | Path, *, images: str | Path | None = None
) -> tuple[Converted, dict[str, str]]:
    """Detect and read ``path``, write its splits as COCO files into ``out``; returns the ``data.*``
    paths (``train_ann``, ``train_images``, ``val_ann``, ``val_images``) to train on.

    Raises:
        DataError: no training split, or no validation split (``val``, else ``test``).
    """
    conv = convert(path, out, to="coco", images=images)
    names = list(conv.outputs)
    if "train" not in conv.outputs:
        raise DataError(f"{path}: no train split (found {', '.join(names)})")
    val = "val" if "val" in conv.outputs else "test" if "test" in conv.outputs else None
    if val is None:
        raise DataError(
            f"{path}: no val or test split (found {', '.join(names)}); "
            "make one with `detrkit data split --ann FILE.json --out-dir DIR`, then train with "
            "`--data DIR --images IMAGES`"
        )
    (train_ann, train_images), (val_ann, val_images) = conv.outputs["train"], conv.outputs[val]
    return conv, {
        "train_ann": str(train_ann),
        "train_images": str(train_images),
        "val_ann": str(val_ann),
        "val_images": str(val_images),
    }
