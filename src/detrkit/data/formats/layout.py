"""Recognise a dataset's layout from its path and read every split into COCO indices.

Layouts (:data:`FORMATS`), tried in this order on a folder:

- ``roboflow``: ``<split>/_annotations.coco.json`` with the images beside it (``train``, ``valid``,
  ``test``); also the JSON file itself.
- ``yolo``: ``data.yaml`` (or another ``*.yaml`` with ``names``) in the folder, or the YAML file.
- ``voc``: ``Annotations/`` + ``JPEGImages/`` (also under ``VOCdevkit/VOC20xx``).
- ``coco``: ``annotations/*.json`` with image folders named after the split (``train2017``,
  ``images/train``, ``train``), a folder of ``train.json``/``val.json`` (``detrkit data split``
  output; ``--images`` for their images), or one COCO JSON file (images: ``--images``, default
  its folder).

Split names are normalised: ``valid``/``validation`` -> ``val``. File names containing
``train``/``val``/``test`` give the split of a COCO file (``instances_val2017.json`` -> ``val``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from detrkit.data.coco import CocoIndex
from detrkit.data.formats.coco import read_coco_split
from detrkit.data.formats.report import ReadReport
from detrkit.data.formats.voc import read_voc_split, voc_class_names, voc_root, voc_splits
from detrkit.data.formats.yolo import SPLIT_KEYS, read_data_yaml, read_yolo_split
from detrkit.errors import DataError

FORMATS: tuple[str, ...] = ("coco", "roboflow", "yolo", "voc")
ROBOFLOW_ANN = "_annotations.coco.json"
_SPLIT_ALIASES = {"valid": "val", "validation": "val", "val": "val", "train": "train", "test": "test"}

Reader = Callable[[], tuple[CocoIndex, Path, ReadReport]]


@dataclass
class Split:
    """One split read into COCO: ``index`` (file names relative to ``images``) and what was found."""

    name: str
    index: CocoIndex
    images: Path
    report: ReadReport
    source: Path


@dataclass
class Layout:
    """What :func:`detect_layout` recognised; :meth:`load` reads the splits."""

    format: str
    path: Path
    readers: dict[str, Reader] = field(default_factory=dict)

    def load(self, splits: list[str] | None = None) -> dict[str, Split]:
        """Read the splits (all, or those named), in the order train, val, test, others."""
        order = {"train": 0, "val": 1, "test": 2}
        out = {}
        for name, read in sorted(self.readers.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])):
            if splits is None or name in splits:
                index, images, report = read()
                out[name] = Split(name, index, images, report, self.path)
        return out


def split_name(text: str) -> str | None:
    """``train``/``val``/``test`` from a folder or file name (``valid`` -> ``val``), or None."""
    low = text.lower()
    if low in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[low]
    for word in ("train", "validation", "valid", "val", "test"):
        if re.search(rf"(^|[^a-z]){word}", low):
            return _SPLIT_ALIASES[word]
    return None


def _roboflow(path: Path) -> Layout | None:
    if path.is_file() and path.name == ROBOFLOW_ANN:
        name = split_name(path.parent.name) or "train"
        return Layout("roboflow", path, {name: lambda: read_coco_split(path)})
    files = sorted(path.glob(f"*/{ROBOFLOW_ANN}")) if path.is_dir() else []
    if not files and path.is_dir() and (path / ROBOFLOW_ANN).is_file():
        files = [path / ROBOFLOW_ANN]
    if not files:
        return None
    readers: dict[str, Reader] = {}
    for f in files:
        name = split_name(f.parent.name) or f.parent.name
        readers[name] = lambda f=f: read_coco_split(f)
    return Layout("roboflow", path, readers)


def _yolo(path: Path) -> Layout | None:
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        yaml_path = path
    elif path.is_dir():
        cands = [
            path / "data.yaml",
            path / "data.yml",
            *sorted(path.glob("*.yaml")),
            *sorted(path.glob("*.yml")),
        ]
        found = [c for c in cands if c.is_file() and _has_names(c)]
        if not found:
            return None
        yaml_path = found[0]
    else:
        return None
    data = read_data_yaml(yaml_path)
    readers = {
        _SPLIT_ALIASES[k]: (lambda k=k: read_yolo_split(yaml_path, k, data=data))
        for k in SPLIT_KEYS
        if data.get(k)
    }
    return Layout("yolo", yaml_path, readers)


def _has_names(path: Path) -> bool:
    try:
        return "names" in path.read_text()
    except OSError:
        return False


def _voc(path: Path) -> Layout | None:
    root = voc_root(path) if path.is_dir() else None
    if root is None:
        return None
    names = voc_class_names(root)
    return Layout(
        "voc", root, {s: (lambda s=s: read_voc_split(root, s, names=names)) for s in voc_splits(root)}
    )


def _coco_images(ann: Path, root: Path, split: str | None) -> Path:
    """The image folder of ``annotations/<ann>.json``: named after the file or the split."""
    stem = ann.stem.removeprefix("instances_")
    cands = [root / stem, root / "images" / stem]
    if split is not None:
        cands += [root / "images" / split, root / split]
    cands += [root / "images", root]
    return next(c for c in cands if c.is_dir())


def _coco(path: Path, images: Path | None) -> Layout | None:
    if path.is_file() and path.suffix == ".json":
        name = split_name(path.stem) or "train"
        folder = images if images is not None else path.parent
        return Layout("coco", path, {name: lambda: read_coco_split(path, folder)})
    ann_dir = path / "annotations"
    files = sorted(ann_dir.glob("*.json")) if ann_dir.is_dir() else []
    if not files:  # e.g. `detrkit data split` output: DIR/train.json, DIR/val.json
        files = [f for f in sorted(path.glob("*.json")) if split_name(f.stem) is not None]
    files = [f for f in files if not f.stem.startswith(("captions", "person_keypoints"))]
    if not files:
        return None
    readers: dict[str, Reader] = {}
    for f in files:
        name = split_name(f.stem) or f.stem
        folder = images if images is not None else _coco_images(f, path, name)
        readers[name] = lambda f=f, folder=folder: read_coco_split(f, folder)
    return Layout("coco", path, readers)


def detect_layout(path: str | Path, *, images: str | Path | None = None) -> Layout:
    """Recognise the layout of ``path`` (a folder or a file); ``images`` is for plain COCO files.

    Raises:
        DataError: the path does not exist or matches no layout (the message lists what was looked for).
    """
    path = Path(path)
    images = None if images is None else Path(images)
    if not path.exists():
        raise DataError(f"{path}: no such dataset file or folder", path=path)
    if images is not None and not images.is_dir():
        raise DataError(f"{images}: images folder not found", path=images)
    for find in (_roboflow, _yolo, _voc):
        layout = find(path)
        if layout is not None:
            return layout
    layout = _coco(path, images)
    if layout is not None:
        return layout
    raise DataError(
        f"{path}: not a dataset layout detrkit knows (looked for */{ROBOFLOW_ANN}, data.yaml, "
        "Annotations/ + JPEGImages/, annotations/*.json or a COCO .json file)",
        path=path,
    )


def load_dataset(path: str | Path, *, images: str | Path | None = None) -> tuple[Layout, dict[str, Split]]:
    """:func:`detect_layout` and read every split."""
    layout = detect_layout(path, images=images)
    return layout, layout.load()
