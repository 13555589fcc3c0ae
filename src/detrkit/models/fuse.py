"""Inference-time rewrites of a model: frozen BatchNorm folded into the convolution before it.

A frozen BatchNorm after a convolution is a fixed per-channel affine map, ``y = conv(x) * s + t``,
so it can be folded into the convolution's weight and bias, ``conv'(x) = conv(x; w * s, b * s + t)``:
one activation-sized pass less per convolution (53 of them in a ResNet-50) and the same output up to
float rounding. The training model keeps its BatchNorm modules (and state-dict keys);
:func:`fold_frozen_batchnorm` returns a separate module tree for inference that shares every
parameter it does not rewrite with the original.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from detrkit.models.backbone import FrozenBatchNorm2d

__all__ = ["fold_frozen_batchnorm", "folded_conv"]

#: (conv, norm) attribute pairs whose norm is applied right after the conv in the forward
_PAIRS = {
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    ResNet: (("conv1", "bn1"),),
}


@torch.no_grad()
def folded_conv(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` computing ``bn(conv(x))`` (weights detached: for inference)."""
    bn.refold()
    scale, shift = bn.scale.reshape(-1), bn.shift.reshape(-1)
    out = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    out.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    out.bias.copy_(bias.to(out.bias.dtype))
    out.weight.requires_grad_(False)
    out.bias.requires_grad_(False)
    return out


def _fold_in_place(module: nn.Module) -> int:
    folded = 0
    for cls, pairs in _PAIRS.items():
        if isinstance(module, cls):
            for conv_name, bn_name in pairs:
                conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                    setattr(module, conv_name, folded_conv(conv, bn))
                    setattr(module, bn_name, nn.Identity())
                    folded += 1
    # modules that run their children in order: ResNet's downsample Sequential(conv, norm) and
    # the trunk of a Backbone (IntermediateLayerGetter: conv1, bn1, relu, maxpool, layer1...)
    if isinstance(module, (nn.Sequential, IntermediateLayerGetter)):
        keys = list(module._modules)
        for a, b in zip(keys, keys[1:], strict=False):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                module._modules[a] = folded_conv(conv, bn)
                module._modules[b] = nn.Identity()
                folded += 1
    for child in module.children():
        folded += _fold_in_place(child)
    return folded


def fold_frozen_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every ResNet ``conv -> FrozenBatchNorm2d`` pair folded into one conv.

    The copy shares all parameters and buffers with ``model`` except the folded convolutions (new
    tensors) and the removed norms (``nn.Identity``); ``model`` itself is not changed. Use it for
    inference only: the folded weights do not train. Trainable ``BatchNorm2d``/``GroupNorm`` are
    left alone.

    Returns:
        ``(copy, number of folded pairs)``.
    """
    memo: dict[int, object] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    net = copy.deepcopy(model, memo)
    return net, _fold_in_place(net)
