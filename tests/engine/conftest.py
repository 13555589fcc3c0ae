"""Test doubles for the engine: a tiny detector that follows the Detector contract and learns, and a
tiny in-memory dataset of coloured squares with its COCO ground truth.

Also loaded by file path from subprocess scripts (``_run_double.py``), so it imports nothing from
the test tree.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from detrkit.boxes import box_cxcywh_to_xyxy
from detrkit.config import RunConfig, config_from_dict

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


class TinyDetector(nn.Module):
    """One box per image from pooled conv features; ``loss = L1(box) + CE(class)``, mean per image.

    ``backbone`` (conv + BatchNorm) and ``head`` modules make the backbone/head parameter groups.
    No dropout: the output is a deterministic function of the weights and the batch. Environment
    knobs for fault tests: ``TINY_SLEEP`` (seconds per forward) and ``TINY_NAN_AT`` (comma-separated
    forward-call numbers whose loss is NaN).
    """

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.model_name = "tiny-double"
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, 4 + num_classes + 1)
        self.calls = 0
        self.nan_at = {int(x) for x in os.environ.get("TINY_NAN_AT", "").split(",") if x}
        self.sleep = float(os.environ.get("TINY_SLEEP", "0"))

    def forward(
        self, images: Tensor, pixel_mask: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Any]:
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        feats = self.backbone(images)
        m = pixel_mask[:, None].to(feats.dtype)
        pooled = (feats * m).sum((2, 3)) / m.sum((2, 3)).clamp(min=1)
        out = self.head(pooled)
        boxes = out[:, :4].sigmoid()[:, None]
        logits = out[:, 4:][:, None]
        result: dict[str, Any] = {"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": []}
        if targets is not None:
            tb = torch.stack([t["boxes"][0] for t in targets]).to(boxes.dtype)
            tl = torch.stack([t["labels"][0] for t in targets])
            l1 = (boxes[:, 0] - tb).abs().sum(-1).mean()
            ce = nn.functional.cross_entropy(logits[:, 0].float(), tl)
            loss = l1 + ce
            if self.training and self.calls in self.nan_at:
                loss = loss * float("nan")
            result.update(loss=loss, loss_bbox=l1.detach(), loss_ce=ce.detach())
        return result

    def postprocess(self, outputs: dict[str, Any], orig_sizes_hw: Tensor) -> list[dict[str, Tensor]]:
        prob = outputs["pred_logits"].float().softmax(-1)[..., :-1]
        scores, labels = prob.max(-1)
        h, w = orig_sizes_hw.float().unbind(-1)
        scale = torch.stack((w, h, w, h), -1)[:, None]
        boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"].float()) * scale
        return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i]} for i in range(len(boxes))]


class SquaresDataset(Dataset):
    """``n`` images of ``size`` px with one red (label 0) or green (label 1) square each.

    Returns the CocoDetection contract ``(image float32 [3, H, W], target)``; ``augment`` flips
    horizontally with probability 1/2 using the torch generator (to test seeded augmentation).
    """

    def __init__(self, n: int, *, size: int = 24, seed: int = 0, augment: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.size = size
        self.augment = augment
        self.items = []
        for i in range(n):
            side = int(torch.randint(6, size // 2, (1,), generator=g))
            x0 = int(torch.randint(0, size - side, (1,), generator=g))
            y0 = int(torch.randint(0, size - side, (1,), generator=g))
            label = int(torch.randint(0, 2, (1,), generator=g))
            self.items.append((i + 1, x0, y0, side, label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        image_id, x0, y0, side, label = self.items[i]
        s = self.size
        img = torch.full((3, s, s), -1.0)
        img[label, y0 : y0 + side, x0 : x0 + side] = 1.5
        cx, cy = (x0 + side / 2) / s, (y0 + side / 2) / s
        if self.augment and torch.rand(()) < 0.5:
            img = img.flip(-1)
            cx = 1 - cx
        target = {
            "boxes": torch.tensor([[cx, cy, side / s, side / s]], dtype=torch.float32),
            "labels": torch.tensor([label]),
            "image_id": image_id,
            "orig_size": torch.tensor([s, s]),
            "size": torch.tensor([s, s]),
        }
        return img, target

    def coco(self) -> dict[str, Any]:
        """COCO ground truth (category ids 1 and 2)."""
        s = self.size
        return {
            "images": [
                {"id": iid, "file_name": f"{iid}.png", "width": s, "height": s} for iid, *_ in self.items
            ],
            "annotations": [
                {
                    "id": iid,
                    "image_id": iid,
                    "category_id": label + 1,
                    "bbox": [x0, y0, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
                for iid, x0, y0, side, label in self.items
            ],
            "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}],
        }


CLASSES = {"names": ["red", "green"], "category_ids": [1, 2]}


def collate(samples: list[tuple[Tensor, dict[str, Any]]]) -> Any:
    from detrkit.data.collate import collate_detection

    return collate_detection(samples)


def double_config(out_dir: str | Path, **sections: dict[str, Any]) -> RunConfig:
    """A small CPU config for the test double; ``sections`` override keys per section."""
    data: dict[str, Any] = {
        "model": {"name": "tiny-double"},
        "data": {"num_workers": 0},
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "seed": 3,
            "cpu": True,
            "clip_grad_norm": 1.0,
            "checkpoint_every": 1,
        },
        "optim": {
            "lr": 0.01,
            "backbone_lr": 0.005,
            "weight_decay": 0.01,
            "schedule": "cosine",
            "warmup_steps": 2,
        },
        "output": {"dir": str(out_dir), "tensorboard": False, "plots": False},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data, "test-double")


def make_trainer(
    cfg: RunConfig,
    *,
    n_train: int = 32,
    n_val: int = 8,
    resume: str | Path | None = None,
    augment: bool = True,
    val: bool = True,
) -> Any:
    from detrkit.engine.trainer import Trainer

    torch.manual_seed(cfg.train.seed)
    model = TinyDetector()
    train = SquaresDataset(n_train, seed=1, augment=augment)
    val_ds = SquaresDataset(n_val, seed=2) if val else None
    return Trainer(
        cfg,
        resume=resume,
        model=model,
        train_dataset=train,
        val_dataset=val_ds,
        classes=CLASSES,
        val_gt=val_ds.coco() if val_ds is not None else None,
        collate_fn=collate,
        quiet=True,
    )


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def conf() -> Any:
    """This module (doubles and helpers), for tests: ``conf.make_trainer(conf.double_config(...))``."""
    return sys.modules[__name__]


if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
