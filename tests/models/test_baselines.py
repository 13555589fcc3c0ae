"""Faster R-CNN wrapper: conversions checked against calling torchvision directly."""

from __future__ import annotations

import pytest
import torch

from detrkit.models.registry import build_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("fasterrcnn-r50-fpn", num_classes=2)


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 80, generator=g)
    mask = torch.ones(2, 64, 80, dtype=torch.bool)
    mask[1, 48:, :] = False
    mask[1, :, 56:] = False
    images[1][:, ~mask[1]] = 0
    targets = [
        {"boxes": torch.tensor([[0.5, 0.5, 0.5, 0.25]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[0.25, 0.5, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5]]),
            "labels": torch.tensor([0, 1]),
        },
    ]
    return images, mask, targets


def test_losses_equal_torchvision_with_hand_converted_targets(model) -> None:
    images, mask, targets = _batch()
    # image 0: 64 x 80; image 1: 48 x 56 (unpadded). cxcywh normalised -> xyxy pixels, labels + 1
    tv_images = [images[0], images[1][:, :48, :56]]
    tv_targets = [
        {"boxes": torch.tensor([[20.0, 24.0, 60.0, 40.0]]), "labels": torch.tensor([2])},
        {
            "boxes": torch.tensor([[0.0, 12.0, 28.0, 36.0], [28.0, 0.0, 56.0, 24.0]]),
            "labels": torch.tensor([1, 2]),
        },
    ]
    model.train()
    torch.manual_seed(5)
    ours = model(images, mask, targets)
    torch.manual_seed(5)
    ref = model.net(tv_images, tv_targets)
    assert set(ref) <= set(ours)
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["loss"], sum(ref.values()))
    assert "detections" not in ours
    with pytest.raises(ValueError, match="model.eval"):
        model.postprocess(ours, torch.tensor([[64, 80], [48, 56]]))


def test_detections_equal_torchvision_and_are_rescaled(model) -> None:
    images, mask, targets = _batch()
    model.eval()
    with torch.no_grad():
        ours = model(images, mask, targets)
        ref = model.net([images[0], images[1][:, :48, :56]])
    assert ours["image_sizes_hw"].tolist() == [[64, 80], [48, 56]]
    assert {"loss", "loss_classifier"} <= set(ours)  # validation loss in eval mode
    for d, r in zip(ours["detections"], ref, strict=True):
        torch.testing.assert_close(d["boxes"], r["boxes"])
        assert torch.equal(d["labels"], r["labels"] - 1)
    dets = model.postprocess(ours, torch.tensor([[128, 160], [48, 56]]))
    torch.testing.assert_close(dets[0]["boxes"], ref[0]["boxes"] * 2)
    torch.testing.assert_close(dets[1]["boxes"], ref[1]["boxes"])
    assert model.num_classes == 2 and model.net.roi_heads.box_predictor.cls_score.out_features == 3


def test_vgg16_backbone_is_a_single_stride_16_map() -> None:
    model = build_model("fasterrcnn-vgg16", num_classes=4, anchor_sizes=(16, 32))
    feats = model.net.backbone(torch.randn(1, 3, 64, 96))
    assert feats.shape == (1, 512, 4, 6)
    assert model.net.rpn.anchor_generator.num_anchors_per_location() == [6]
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_model("fasterrcnn-vgg16", num_classes=4, anchor_sizes=())


def test_vgg19_features_and_imagenet_weights_equal_torchvision(tmp_path) -> None:
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.vgg19(weights=None)  # the ImageNet classifier layout
    path = tmp_path / "vgg19.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("fasterrcnn-vgg19", num_classes=3, backbone_weights=str(path))
    assert model.model_name == "fasterrcnn-vgg19"
    convs = [m for m in model.net.backbone if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 16  # VGG19: 16 convolutions (VGG16: 13)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.net.backbone(x), reference.features[:-1](x))
    frozen = [n for n, p in model.net.backbone.named_parameters() if not p.requires_grad]
    assert frozen == [f"{i}.{k}" for i in (0, 2, 5, 7) for k in ("weight", "bias")]
    # same interface as VGG16: a loss in training, detections in eval
    images, mask, targets = _batch()
    model.train()
    assert torch.isfinite(model(images, mask, targets)["loss"])
    vgg16 = build_model("fasterrcnn-vgg16", num_classes=3).net.backbone
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg16) == 13
