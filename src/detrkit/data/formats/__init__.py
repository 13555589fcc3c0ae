"""Datasets as users have them: layout detection, readers, converters, other tools' predictions.

- :func:`detect_layout` / :func:`load_dataset`: plain COCO, Roboflow COCO export, YOLO/Ultralytics
  ``data.yaml``, Pascal VOC -> one :class:`Split` (a COCO index, its image folder and a
  :class:`ReadReport`) per split (:mod:`.layout`).
- :func:`convert`: any of them -> COCO files or an Ultralytics dataset (:mod:`.convert`);
  :func:`prepare_training_data` for ``detrkit train --data``.
- :func:`read_predictions`: YOLO ``save_txt``, Ultralytics and Roboflow JSON -> COCO results.

Every reader reports what it leaves out or keeps specially (unknown class index, label without
image, empty label file, placeholder category) in the same form as ``detrkit data check``.
"""

from detrkit.data.formats.convert import TARGETS, Converted, convert, prepare_training_data
from detrkit.data.formats.layout import FORMATS, Layout, Split, detect_layout, load_dataset
from detrkit.data.formats.predictions import PREDICTION_FORMATS, predictions_source, read_predictions
from detrkit.data.formats.report import READER_KINDS, ReadReport

__all__ = [
    "FORMATS",
    "PREDICTION_FORMATS",
    "READER_KINDS",
    "TARGETS",
    "Converted",
    "Layout",
    "ReadReport",
    "Split",
    "convert",
    "detect_layout",
    "load_dataset",
    "predictions_source",
    "prepare_training_data",
    "read_predictions",
]
