"""Backbone norms for training from scratch (``norm="bn"`` / ``"gn"``) and DETR's hybrid
(one-to-many) matching queries."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from detrkit.models.backbone import Backbone
from detrkit.models.detr import build_detr


def _levels_of(ref: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    x = ref.maxpool(ref.relu(ref.bn1(ref.conv1(images))))
    out = []
    for stage in (ref.layer1, ref.layer2, ref.layer3, ref.layer4):
        x = stage(x)
        out.append(x)
    return out


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_trainable_norm_matches_torchvision_resnet(norm: str) -> None:
    torch.manual_seed(0)
    bb = Backbone("resnet18", return_layers=("layer2", "layer3", "layer4"), norm=norm)
    layer = nn.BatchNorm2d if norm == "bn" else (lambda c: nn.GroupNorm(32, c))
    ref = torchvision.models.resnet18(weights=None, norm_layer=layer)
    missing, unexpected = ref.load_state_dict(bb.body.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("fc.") for k in missing)
    images = torch.randn(4, 3, 64, 64)
    bb.train(), ref.train()
    for got, want in zip(bb.forward_levels(images), _levels_of(ref, images)[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    norms = [m for m in bb.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(norms) == 20  # bn1 + 2 per basic block (16) + 3 downsample norms
    if norm == "gn":
        assert {m.num_groups for m in norms} == {32}
    # from scratch (no weights, trainable norm): everything trains by default, the stem included
    assert all(p.requires_grad for p in bb.parameters())
    bb.forward_levels(images)[-1].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.parameters())


def test_bn_frozen_stages_keep_running_stats_and_trainable_layers_range() -> None:
    bb = Backbone("resnet18", return_layer="layer3", norm="bn", trainable_layers=2)  # layer2-3 train
    trainable = {n.split(".")[1] for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3"}
    bb.train()
    assert not bb.body.bn1.training and not bb.body.layer1[0].bn1.training  # frozen: eval mode
    assert bb.body.layer2[0].bn1.training
    before = bb.body.layer1[0].bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool))
    assert torch.equal(bb.body.layer1[0].bn1.running_mean, before)
    assert not torch.equal(bb.body.layer2[0].bn1.running_mean, torch.zeros_like(before[:1].expand(128)))
    stem = Backbone("resnet18", return_layer="layer3", trainable_layers=4)  # 3 stages + the stem
    assert all(p.requires_grad for p in stem.parameters())
    default = Backbone("resnet18", return_layer="layer3")  # pretrained-style default unchanged
    assert {n.split(".")[1] for n, p in default.named_parameters() if p.requires_grad} == {"layer2", "layer3"}
    with pytest.raises(ValueError, match="trainable_layers"):
        Backbone("resnet18", return_layer="layer3", trainable_layers=5)
    with pytest.raises(ValueError, match="norm"):
        Backbone("resnet18", norm="ln")


def _tiny_detr(**kw) -> nn.Module:
    return build_detr(
        num_classes=3, backbone="resnet18", return_layer="layer3", d_model=32, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=2, dim_feedforward=32, dropout=0.0, num_queries=5, loss="focal", backbone_norm="bn", **kw,
    )  # fmt: skip


def test_detr_one_to_many_group_is_separate_and_training_only() -> None:
    torch.manual_seed(0)
    model = _tiny_detr(one_to_many={"k": 3, "queries": 7})
    assert model.criterion.one_to_many_k == 3 and model.query_embed_o2m.weight.shape == (7, 32)
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    targets = [
        {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[0.3, 0.3, 0.1, 0.2], [0.7, 0.6, 0.3, 0.2]]), "labels": torch.tensor([0, 2])},
    ]
    model.train()
    out = model(images, mask, targets)
    o2m = out["one_to_many"]
    assert o2m["pred_logits"].shape == (2, 7, 3) and len(o2m["aux_outputs"]) == 1
    assert {"loss_ce_o2m", "loss_bbox_o2m", "loss_giou_o2m", "loss_ce_0_o2m"} <= set(out)
    out["loss"].backward()
    assert model.query_embed_o2m.weight.grad.abs().sum() > 0
    # the groups do not attend to each other: changing the one-to-one queries leaves the o2m outputs
    with torch.no_grad():
        model.query_embed.weight.add_(1.0)
        again = model(images, mask)
    torch.testing.assert_close(again["one_to_many"]["pred_boxes"], o2m["pred_boxes"].detach())
    model.eval()
    with torch.no_grad():
        assert "one_to_many" not in model(images, mask)
    for bad in ({"k": 0, "queries": 4}, {"k": 2}, {"k": 2, "queries": 4, "groups": 2}):
        with pytest.raises(ValueError, match="one_to_many"):
            _tiny_detr(one_to_many=bad)


def test_deformable_one_to_many_group_is_separate_and_training_only() -> None:
    from detrkit.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(
        "deformable-detr-tiny",
        num_classes=3,
        backbone_norm="bn",
        trainable_backbone_layers=None,
        with_box_refine=True,
        one_to_many={"k": 2, "queries": 6},
    )
    assert all(p.requires_grad for p in model.backbone.parameters())  # from scratch: stem included
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    targets = [
        {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[0.3, 0.3, 0.1, 0.2]]), "labels": torch.tensor([2])},
    ]
    model.train()
    out = model(images, mask, targets)
    assert out["one_to_many"]["pred_boxes"].shape == (2, 6, 4) and out["pred_boxes"].shape == (2, 20, 4)
    assert {"loss_ce_o2m", "loss_giou_0_o2m"} <= set(out)
    out["loss"].backward()
    assert model.query_embed_o2m.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.transformer.query_embed.weight.add_(1.0)  # the one-to-one queries
        again = model(images, mask)
    torch.testing.assert_close(again["one_to_many"]["pred_boxes"], out["one_to_many"]["pred_boxes"].detach())
    model.eval()
    with torch.no_grad():
        assert "one_to_many" not in model(images, mask)
    with pytest.raises(ValueError, match="two_stage"):
        build_model("deformable-detr-tiny", num_classes=3, two_stage=True, one_to_many={"k": 2, "queries": 6})


def _reference_resnet18(width: int) -> nn.Module:
    """ResNet-18 with ``width * (1, 2, 4, 8)`` channels assembled by hand from torchvision's BasicBlock."""
    from torchvision.models.resnet import BasicBlock

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or cin != cout:
            down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        return nn.Sequential(BasicBlock(cin, cout, stride, down), BasicBlock(cout, cout))

    net = nn.Module()
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(3, 2, 1)
    for i in range(4):
        cin = width * 2 ** max(i - 1, 0)
        setattr(net, f"layer{i + 1}", stage(cin, width * 2**i, 1 if i == 0 else 2))
    return net


def test_width_matches_a_hand_built_narrow_resnet() -> None:
    torch.manual_seed(0)
    bb = Backbone("resnet18", return_layers=("layer2", "layer3", "layer4"), norm="bn", width=32)
    assert bb.level_channels == (64, 128, 256) and bb.level_strides == (8, 16, 32)
    ref = _reference_resnet18(32)
    ref.load_state_dict(bb.body.state_dict(), strict=True)  # the same names and shapes
    images = torch.randn(2, 3, 64, 64)
    bb.train(), ref.train()
    for got, want in zip(bb.forward_levels(images), _levels_of(ref, images)[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    full = sum(p.numel() for p in Backbone("resnet18", norm="bn").parameters())
    narrow = sum(p.numel() for p in Backbone("resnet18", norm="bn", width=32).parameters())
    assert 0.24 < narrow / full < 0.26  # convolutions dominate: a quarter of the parameters
    # every parameter of a from-scratch narrow backbone trains, and gets a gradient
    sum(f.sum() for f in bb.forward_levels(images)).backward()
    assert all(p.requires_grad and p.grad is not None for p in bb.parameters())


def test_width_errors() -> None:
    with pytest.raises(ValueError, match="BasicBlock"):
        Backbone("resnet50", width=32)
    with pytest.raises(ValueError, match="multiple of 8"):
        Backbone("resnet18", width=20)
    with pytest.raises(ValueError, match="from scratch"):
        Backbone("resnet18", width=32, weights="IMAGENET1K_V1")
