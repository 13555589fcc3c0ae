"""Online copy-paste as a dataset transform: exact pasted boxes, shrunk/dropped boxes, no mutation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from detrkit.data.coco import CocoIndex
from detrkit.data.dataset import CocoDetection
from detrkit.data.transforms import build_transforms, make_target
from detrkit.synth.bank import InstanceBank
from detrkit.synth.copy_paste import Instance, PasteParams
from detrkit.synth.online import OnlineCopyPaste, build_online_copy_paste

from .conftest import GREY, RED


def _uniform(h: int = 80, w: int = 100) -> torch.Tensor:
    return tv_tensors.Image(torch.tensor(GREY, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).clone())


def _bank() -> InstanceBank:
    yy, xx = np.mgrid[:21, :17]
    disc = (yy - 10) ** 2 / 110 + (xx - 8) ** 2 / 72 <= 1
    inst = Instance(
        rgb=np.broadcast_to(np.array(RED, np.uint8), (21, 17, 3)).copy(), mask=disc, category_id=7
    )
    return InstanceBank({7: [inst]})


def test_pasted_boxes_are_the_bounds_of_the_changed_pixels() -> None:
    cp = OnlineCopyPaste(
        _bank(), label_of_category={7: 4}, p=1.0, max_instances=1, params=PasteParams(feather=1)
    )
    image = _uniform()
    target = make_target(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), (80, 100))
    target["image_id"] = 3
    for seed in range(5):
        torch.manual_seed(seed)
        out, t = cp(image, target)
        changed = (out != image).any(0)
        ys, xs = torch.nonzero(changed, as_tuple=True)
        assert t["labels"].tolist() == [4] and t["image_id"] == 3
        assert t["boxes"].tolist() == [
            [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        ]
        assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and t["boxes"].canvas_size == (80, 100)
    assert (image == torch.tensor(GREY).view(3, 1, 1)).all()  # the input was not modified


def test_probability_zero_is_identity_and_seeded_runs_repeat() -> None:
    image = _uniform()
    target = make_target(torch.tensor([[10.0, 10.0, 40.0, 30.0]]), torch.tensor([1]), (80, 100))
    same = OnlineCopyPaste(_bank(), label_of_category={7: 4}, p=0.0)
    out, t = same(image, target)
    assert out is image and t is target
    cp = OnlineCopyPaste(_bank(), label_of_category={7: 4}, p=1.0, max_instances=3)
    torch.manual_seed(11)
    a = cp(image, target)
    torch.manual_seed(11)
    b = cp(image, target)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_hidden_box_is_dropped_and_partly_hidden_box_shrinks() -> None:
    square = Instance(rgb=np.full((30, 30, 3), 200, np.uint8), mask=np.ones((30, 30), bool), category_id=7)
    bank = InstanceBank({7: [square]})
    params = PasteParams(
        feather=0,
        scale_range=(1.0, 1.0),
        flip_prob=0.0,
        max_size_frac=1.0,
        max_cover=1.0,
        drop_occluded=0.5,
        attempts=1,
    )
    cp = OnlineCopyPaste(bank, label_of_category={7: 2}, p=1.0, max_instances=1, params=params)
    image = _uniform(30, 60)
    # Only x0 = 0..30 fits a 30-wide paste into a 60-wide image; y0 = 0. Try seeds until x0 = 15.
    boxes = torch.tensor([[20.0, 5.0, 26.0, 25.0], [25.0, 0.0, 55.0, 30.0], [50.0, 0.0, 60.0, 10.0]])
    target = make_target(boxes, torch.tensor([0, 1, 3]), (30, 60))
    for seed in range(200):
        torch.manual_seed(seed)
        out, t = cp(image, target)
        if t["boxes"][-1, 0].item() == 15:
            break
    else:
        pytest.fail("no seed placed the paste at x0=15")
    # box 0 [20,26) fully hidden -> dropped; box 1 [25,55) loses [25,45) = 2/3 -> dropped at 0.5;
    # box 2 untouched. With drop_occluded=0.5, only the untouched box and the paste remain.
    assert t["labels"].tolist() == [3, 2]
    assert t["boxes"].tolist() == [[50.0, 0.0, 60.0, 10.0], [15.0, 0.0, 45.0, 30.0]]
    params = dataclasses.replace(params, drop_occluded=0.9)
    cp.params = params
    torch.manual_seed(seed)
    out, t = cp(image, target)
    assert t["labels"].tolist() == [1, 3, 2]
    assert t["boxes"][0].tolist() == [45.0, 0.0, 55.0, 30.0]  # shrunk to the visible part of the box


def test_in_a_dataset_pipeline(shapes_dataset) -> None:
    index = CocoIndex.load(shapes_dataset.train_ann)
    cp = build_online_copy_paste(index, shapes_dataset.train_images, rare_k=2, p=1.0, min_area=16)
    rare_labels = {index.cat_id_to_label[c] for c in cp.categories}
    ds = CocoDetection(
        index,
        shapes_dataset.train_images,
        transforms=v2.Compose([cp, build_transforms("light", train=False, size=96)]),
    )
    base = CocoDetection(
        index, shapes_dataset.train_images, transforms=build_transforms("light", train=False, size=96)
    )
    torch.manual_seed(0)
    more = 0
    for i in range(4):
        image, target = ds[i]
        _, ref = base[i]
        assert image.shape[0] == 3 and target["boxes"].shape[0] == target["labels"].shape[0]
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        more += sum(int(lbl in rare_labels) for lbl in target["labels"].tolist()) - sum(
            int(lbl in rare_labels) for lbl in ref["labels"].tolist()
        )
    assert more >= 4  # at least one rare instance pasted per sample
    assert isinstance(
        InstanceBank.from_coco(index, shapes_dataset.train_images, category_ids=cp.categories), InstanceBank
    )


def test_scale_jitter_sets_the_pasted_size() -> None:
    # A 21 x 17 disc pasted at a fixed scale s has a box of round(21 s) x round(17 s) (no feather,
    # resized mask bounds); with Simple Copy-Paste's [0.1, 2.0] the sizes spread over that range.
    target = make_target(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), (200, 200))
    image = _uniform(200, 200)
    for s in (0.5, 2.0):
        fixed = OnlineCopyPaste(
            _bank(),
            label_of_category={7: 4},
            p=1.0,
            max_instances=1,
            params=PasteParams(scale_range=(s, s), feather=0, flip_prob=0.0),
        )
        torch.manual_seed(1)
        _, t = fixed(image, target)
        x0, y0, x1, y1 = t["boxes"][0].tolist()
        assert abs((y1 - y0) - round(21 * s)) <= 1 and abs((x1 - x0) - round(17 * s)) <= 1, (s, t["boxes"])
    lsj = OnlineCopyPaste(
        _bank(),
        label_of_category={7: 4},
        p=1.0,
        max_instances=1,
        params=PasteParams(scale_range=(0.1, 2.0), feather=0),
    )
    heights = []
    for seed in range(60):
        torch.manual_seed(seed)
        _, t = lsj(image, target)
        heights += [b[3] - b[1] for b in t["boxes"].tolist()]
    assert min(heights) <= 12 and max(heights) >= 36
    assert all(h >= PasteParams().min_size for h in heights)  # too-small pastes are skipped
