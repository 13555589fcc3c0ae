"""Frozen BatchNorm folded into the convolutions: same outputs, original model untouched."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detrkit.models.backbone import FrozenBatchNorm2d
from detrkit.models.fuse import fold_frozen_batchnorm, folded_conv
from detrkit.models.registry import build_model


def _randomise_frozen_bn(model: torch.nn.Module) -> int:
    """Non-trivial statistics (random init leaves them at the identity, which folds trivially)."""
    g = torch.Generator().manual_seed(0)
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                c = m.weight.numel()
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                n += 1
    return n


def test_folded_conv_matches_torch_fusion() -> None:
    """Independent reference: torch.nn.utils.fusion.fuse_conv_bn_weights (BatchNorm eval fold)."""
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    bn = FrozenBatchNorm2d(16)
    _randomise_frozen_bn(bn)
    ref_w, ref_b = fuse_conv_bn_weights(
        conv.weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    fused = folded_conv(conv, bn)
    torch.testing.assert_close(fused.weight, ref_w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.bias, ref_b, rtol=1e-6, atol=1e-6)
    x = torch.randn(2, 8, 12, 10)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["detr-tiny", "deformable-detr-tiny"])
def test_folded_model_same_outputs_original_untouched(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, num_queries=10).eval()
    n_bn = _randomise_frozen_bn(model)
    keys = list(model.state_dict())
    net, folded = fold_frozen_batchnorm(model)
    assert folded == n_bn >= 15  # ResNet-18 to layer3 (stem + 6 blocks x 2 + 2 downsample) or layer4
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    # the original keeps its modules and state dict; untouched weights are shared, not copied
    assert list(model.state_dict()) == keys
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == n_bn
    shared = {id(p) for p in model.parameters()}
    assert sum(id(p) in shared for p in net.parameters()) > 0
    x, mask = torch.randn(2, 3, 96, 128), torch.ones(2, 96, 128, dtype=torch.bool)
    mask[1, :, 100:] = False
    with torch.no_grad():
        ref, out = model(x, mask), net(x, mask)
        out_cl = net.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last), mask
        )
    for o in (out, out_cl):
        torch.testing.assert_close(o["pred_logits"], ref["pred_logits"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(o["pred_boxes"], ref["pred_boxes"], rtol=1e-4, atol=1e-5)


def test_trainable_norms_are_left_alone() -> None:
    model = build_model("detr-tiny", num_classes=3, num_queries=10, backbone_norm="bn")
    _, folded = fold_frozen_batchnorm(model)
    assert folded == 0
