"""One generic test over every registered model (timm style), on tiny inputs.

Checks: output shapes for a non-default class count, finite outputs and losses, a gradient on every
trainable parameter, inputs not mutated, and postprocessed boxes inside the original images.
Models other than the tiny ones are marked ``slow`` (a few seconds each on CPU).
"""

from __future__ import annotations

import pytest
import torch

from detrkit.models.base import Detector
from detrkit.models.registry import build_model, list_models

NUM_CLASSES = 3  # not a default of any builder
TINY = {"detr-tiny", "deformable-detr-tiny", "co-deformable-detr-tiny"}
# Variants of the tiny DETR exercising its options.
VARIANTS = [
    ("detr-tiny", {"loss": "focal"}),
    ("detr-tiny", {"aux_loss": False, "return_layer": "layer4", "num_queries": 7}),
    ("detr-tiny", {"num_encoder_layers": 0, "num_decoder_layers": 1}),
]


def _cases():
    for name in list_models():
        marks = () if name in TINY else (pytest.mark.slow,)
        yield pytest.param(name, {}, marks=marks, id=name)
    for name, overrides in VARIANTS:
        yield pytest.param(name, overrides, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in overrides.items())}")


def _batch(name: str):
    # Deformable DETR adds a stride-64 level whose GroupNorm needs >= 2x2 maps: 128 px.
    size = 128 if "deformable" in name else 64
    batch = 2 if name in TINY else 1
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    mask = torch.ones(batch, size, size, dtype=torch.bool)
    targets = [
        {"boxes": torch.tensor([[0.4, 0.5, 0.3, 0.4], [0.7, 0.3, 0.2, 0.2]]), "labels": torch.tensor([2, 0])}
    ]
    if batch == 2:  # second image: padded to 3/4 of the width, one box, extra keys ignored
        images[1, :, :, size * 3 // 4 :] = 0
        mask[1, :, size * 3 // 4 :] = False
        targets.append(
            {
                "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.6]]),
                "labels": torch.tensor([1]),
                "image_id": torch.tensor(7),
            }
        )
    return images, mask, targets


def _clone(targets):
    return [{k: v.clone() for k, v in t.items()} for t in targets]


@pytest.mark.parametrize(("name", "overrides"), list(_cases()))
def test_every_registered_model(name: str, overrides: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, **overrides)
    assert isinstance(model, Detector)
    assert model.model_name == name and model.num_classes == NUM_CLASSES
    images, mask, targets = _batch(name)
    images0, mask0, targets0 = images.clone(), mask.clone(), _clone(targets)

    model.train()
    out = model(images, mask, targets)
    loss = out["loss"]
    assert loss.dim() == 0 and loss.requires_grad and torch.isfinite(loss)
    components = [k for k in out if k.startswith("loss_")]
    assert components and all(torch.isfinite(out[k]) and not out[k].requires_grad for k in components)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"no gradient for {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)

    model.eval()
    with torch.no_grad():
        out = model(images, mask)
    b = images.shape[0]
    if "pred_logits" in out:
        q = out["pred_logits"].shape[1]
        assert out["pred_logits"].shape[0] == b and out["pred_logits"].shape[2] in (
            NUM_CLASSES,
            NUM_CLASSES + 1,
        )
        assert out["pred_boxes"].shape == (b, q, 4)
        assert torch.isfinite(out["pred_logits"]).all()
        assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
        for aux in out["aux_outputs"]:
            assert aux["pred_logits"].shape == out["pred_logits"].shape
            assert aux["pred_boxes"].shape == out["pred_boxes"].shape
    else:
        assert len(out["detections"]) == b

    sizes = torch.tensor([[50, 70], [90, 40]])[:b]
    dets = model.postprocess(out, sizes)
    assert len(dets) == b
    for det, (h, w) in zip(dets, sizes.tolist(), strict=True):
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape and len(scores) > 0
        assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert (scores[:-1] >= scores[1:]).all()
        assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < NUM_CLASSES

    assert torch.equal(images, images0) and torch.equal(mask, mask0)
    for t, t0 in zip(targets, targets0, strict=True):
        assert t.keys() == t0.keys() and all(torch.equal(t[k], t0[k]) for k in t)


def test_contract_names_are_registered() -> None:
    names = set(list_models())
    expected = {"detr-r50", "detr-r101", "detr-r18", "detr-tiny", "fasterrcnn-r50-fpn", "fasterrcnn-vgg16"}
    expected |= {"fasterrcnn-vgg19", "co-deformable-detr-r50", "co-deformable-detr-tiny"}
    assert expected <= names
