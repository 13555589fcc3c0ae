"""Online copy-paste: a training-time augmentation that pastes rare-class instances, no files.

:class:`OnlineCopyPaste` is called like the transform presets, ``image, target = t(image, target)``
with a ``tv_tensors.Image`` ``uint8 [3, H, W]`` and ``{"boxes": BoundingBoxes XYXY pixels, "labels":
int64 [N] contiguous}`` (other keys pass through), and goes *before* them::

    cp = build_online_copy_paste("train.json", "train/", classes=["star", "cross"], p=0.5)
    transforms = v2.Compose([cp, build_transforms("light", train=True)])

With probability ``p`` it pastes 1..``max_instances`` instances drawn from an :class:`InstanceBank`
of the rare classes (class chosen uniformly, then an instance). Targets carry boxes only, so an
object the paste hides is treated as its box: it is dropped when hidden over ``drop_occluded`` of the
box, and its box shrinks to the bounds of the box pixels left visible. Pasted boxes are exact (the
bounds of the pasted mask). Randomness comes from torch's generator, so runs seeded through torch
(and DataLoader workers) are reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from detrkit.data.coco import CocoIndex
from detrkit.synth.bank import InstanceBank
from detrkit.synth.copy_paste import PasteParams, SceneObject, paste_instance
from detrkit.synth.rare import SynthError, find_rare_classes, resolve_classes


class OnlineCopyPaste:
    """Paste bank instances into training samples with probability ``p`` (see module docstring).

    Args:
        bank: instances to paste (COCO category ids).
        label_of_category: COCO category id -> contiguous label used in targets.
        p: probability that a sample gets pastes.
        max_instances: at most this many pastes per sample (uniform in 1..max_instances).
        params: scale/flip/feather/occlusion settings.
    """

    def __init__(
        self,
        bank: InstanceBank,
        *,
        label_of_category: dict[int, int],
        p: float = 0.5,
        max_instances: int = 2,
        params: PasteParams | None = None,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.bank = bank
        self.label_of_category = dict(label_of_category)
        self.categories = [c for c, insts in sorted(bank.by_category.items()) if insts]
        if not self.categories:
            raise ValueError("the instance bank is empty: nothing to paste")
        self.p = p
        self.max_instances = max_instances
        self.params = params or PasteParams()

    def __repr__(self) -> str:
        return f"OnlineCopyPaste(p={self.p}, max_instances={self.max_instances}, bank={self.bank.counts()})"

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        if rng.random() >= self.p:
            return image, target
        h, w = int(image.shape[-2]), int(image.shape[-1])
        array = image.permute(1, 2, 0).numpy().copy()  # uint8 [H, W, 3]; the input stays untouched
        boxes = target["boxes"].as_subclass(torch.Tensor)
        labels = target["labels"]
        scene = []
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            ann = {"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": int(labels[i]), "index": i}
            scene.append(SceneObject.from_annotation(ann, h, w))
        for _ in range(int(rng.integers(1, self.max_instances + 1))):
            cid = self.categories[int(rng.integers(len(self.categories)))]
            paste_instance(
                array,
                scene,
                self.bank.sample(cid, rng),
                rng,
                self.params,
                category_id=self.label_of_category[cid],
            )
        new_boxes = torch.empty((len(scene), 4), dtype=boxes.dtype)
        for j, obj in enumerate(scene):
            if obj.changed or obj.ann is None:
                x0, y0, x1, y1 = obj.bbox_xyxy
                new_boxes[j] = torch.tensor([x0, y0, x1, y1], dtype=boxes.dtype)
            else:
                new_boxes[j] = boxes[obj.ann["index"]]
        out = dict(target)
        out["boxes"] = tv_tensors.BoundingBoxes(new_boxes, format="XYXY", canvas_size=(h, w))
        out["labels"] = torch.tensor([obj.category_id for obj in scene], dtype=torch.int64)
        return tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1).contiguous()), out


def build_online_copy_paste(
    ann: str | Path | CocoIndex,
    images_dir: str | Path,
    *,
    classes: list[str] | None = None,
    rare_fraction: float | None = None,
    rare_k: int | None = None,
    p: float = 0.5,
    max_instances: int = 2,
    min_area: int = 64,
    max_bank_per_class: int | None = 500,
    seed: int = 0,
    params: PasteParams | None = None,
) -> OnlineCopyPaste:
    """An :class:`OnlineCopyPaste` over the training set's rare classes.

    ``classes`` names them; otherwise they are found with ``rare_fraction``/``rare_k``
    (:func:`detrkit.synth.rare.find_rare_classes`). Labels follow the file's contiguous order.
    """
    index = ann if isinstance(ann, CocoIndex) else CocoIndex.load(ann)
    if not classes:
        if rare_fraction is None and rare_k is None:
            rare_fraction = 0.05
        classes = find_rare_classes(index, fraction=rare_fraction, k=rare_k)
        if not classes:
            raise SynthError(f"{index.source or '<annotations>'}: no rare class found for online copy-paste")
    cat_ids = resolve_classes(index, classes)
    bank = InstanceBank.from_coco(
        index,
        images_dir,
        category_ids=cat_ids,
        min_area=min_area,
        max_per_class=max_bank_per_class,
        seed=seed,
    )
    if len(bank) == 0:
        raise SynthError(f"{index.source or '<annotations>'}: no instance of {', '.join(classes)} to paste")
    return OnlineCopyPaste(
        bank, label_of_category=index.cat_id_to_label, p=p, max_instances=max_instances, params=params
    )
