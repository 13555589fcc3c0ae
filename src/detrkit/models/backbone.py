"""ResNet backbones (torchvision) with frozen BatchNorm (pretrained) or trainable BatchNorm /
GroupNorm (from scratch), optional DC5 dilation, one or several output stages, and mask downsampling.

Parameter names follow torchvision (``body.conv1``, ``body.layer1.0.conv1``...), which are also
the names of timm's ResNets used by the Hugging Face DETR checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock
from torchvision.ops import misc as tv_misc

from detrkit.errors import CheckpointError

__all__ = [
    "RESNET_CHANNELS",
    "Backbone",
    "FrozenBatchNorm2d",
    "NORMS",
    "Norm",
    "build_backbone",
    "downsample_mask",
    "imagenet_state_dict",
    "load_imagenet_weights",
]

#: Output channels of each ResNet stage.
RESNET_CHANNELS: dict[str, dict[str, int]] = {
    "resnet18": {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512},
    "resnet34": {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512},
    "resnet50": {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048},
    "resnet101": {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048},
}
#: Normalisation layers of :class:`Backbone`: ``"frozen_bn"`` (fixed affine map, for pretrained
#: weights), ``"bn"`` (trainable BatchNorm, batch statistics) and ``"gn"`` (trainable GroupNorm).
NORMS = ("frozen_bn", "bn", "gn")
Norm = Literal["frozen_bn", "bn", "gn"]
_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
_STAGES = ("layer1", "layer2", "layer3", "layer4")


class FrozenBatchNorm2d(tv_misc.FrozenBatchNorm2d):
    """BatchNorm with fixed statistics and affine parameters, folded into one per-channel
    ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``.

    Same buffers (and state-dict keys) as torchvision's ``FrozenBatchNorm2d``, which recomputes
    the fold at every call (six small ops, and their backward); here it is computed once, again
    after ``load_state_dict`` or an in-place change of a buffer, and the forward is one
    ``addcmul``: ``x [B, C, H, W] -> shift + x * scale``, any memory format.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps)
        self.register_buffer("scale", torch.ones(num_features, 1, 1), persistent=False)
        self.register_buffer("shift", torch.zeros(num_features, 1, 1), persistent=False)
        self._versions: tuple[int, ...] = ()
        self.refold()

    def _buffer_versions(self) -> tuple[int, ...]:
        bufs = (self.weight, self.bias, self.running_mean, self.running_var)
        return tuple(b._version for b in bufs) + tuple(b.data_ptr() for b in bufs)

    @torch.no_grad()
    def refold(self) -> None:
        """Recompute ``scale`` and ``shift`` from the four buffers."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        self.scale.copy_(scale.view(-1, 1, 1))
        self.shift.copy_((self.bias - self.running_mean * scale).view(-1, 1, 1))
        self._versions = self._buffer_versions()

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]
        self.refold()

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling() and self._versions != self._buffer_versions():
            self.refold()
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))


def _norm_layer(norm: str, gn_groups: int) -> Callable[[int], nn.Module]:
    """``num_channels -> module`` for ``norm`` (GroupNorm uses ``min(gn_groups, channels)`` groups)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda channels: nn.GroupNorm(min(gn_groups, channels), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def downsample_mask(pixel_mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of a valid-pixel mask.

    Args:
        pixel_mask: ``bool[B, H, W]``, True on real pixels.
        size: ``(h, w)`` of the feature map.
    Returns:
        ``bool[B, h, w]``.
    """
    return F.interpolate(pixel_mask[None].float(), size=size).to(torch.bool)[0]


class Backbone(nn.Module):
    """A ResNet trunk returning one feature map and its valid mask, or several feature maps.

    Args:
        name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        return_layer: the stage whose output :meth:`forward` returns (``"layer4"``: stride 32, DETR;
            ``"layer3"``: stride 16, cheaper and better for small images). Later stages are dropped.
        return_layers: the stages :meth:`forward_levels` returns, finest first, ending with
            ``return_layer`` (e.g. ``("layer2", "layer3", "layer4")``: C3-C5 for Deformable DETR).
            Default: ``(return_layer,)``.
        dilation: DC5: replace the stride of ``layer4`` by dilation (stride 16 at ``layer4``).
        trainable_layers: how many of the last stages up to ``return_layer`` get gradients
            (0 freezes the backbone); one more than the number of stages also trains the stem
            (``conv1``/``bn1``), as torchvision's ``trainable_layers=5``. Default: every stage from
            ``layer2`` on, as DETR (which trains layer2-4), or everything, stem included, with
            ``weights=None`` and a trainable ``norm`` (training from scratch).
        norm: ``"frozen_bn"`` (default: the identity at random init, the pretrained statistics
            otherwise; what DETR and the Hugging Face checkpoints use), ``"bn"`` (trainable
            BatchNorm with batch statistics: the choice from scratch on one device) or ``"gn"``
            (trainable GroupNorm, batch-size independent). With ``"bn"`` the frozen stages stay in
            eval mode (running statistics not updated) whatever :meth:`train` is called with.
        gn_groups: GroupNorm groups (``norm="gn"``), at most the channel count of each layer.
        width: channels of ``layer1`` of a BasicBlock ResNet (``resnet18``/``resnet34``; 64 in
            torchvision), doubled at every later stage: 32 gives a quarter of the convolution cost
            and of the parameters, for training small models from scratch on a CPU. Only with
            ``weights=None`` (ImageNet weights have the standard width).
        weights: optional ImageNet weights: a path to a torchvision ResNet state dict (``.pth``)
            or a torchvision weight name such as ``"IMAGENET1K_V1"`` (downloaded by torchvision
            if not in its cache). ``None``: random initialisation, no download.

    Attributes:
        num_channels, stride: of ``return_layer``.
        level_channels, level_strides: of each of ``return_layers``.
    """

    def __init__(
        self,
        name: str = "resnet50",
        *,
        return_layer: str = "layer4",
        return_layers: Sequence[str] | None = None,
        dilation: bool = False,
        trainable_layers: int | None = None,
        weights: str | Path | None = None,
        norm: Norm = "frozen_bn",
        gn_groups: int = 32,
        width: int = 64,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if gn_groups < 1:
            raise ValueError(f"gn_groups must be >= 1, got {gn_groups}")
        if name not in RESNET_CHANNELS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNET_CHANNELS)}")
        if return_layer not in _STAGES:
            raise ValueError(f"return_layer must be one of {_STAGES}, got {return_layer!r}")
        levels = (return_layer,) if return_layers is None else tuple(return_layers)
        indices = [_STAGES.index(s) if s in _STAGES else -1 for s in levels]
        if not levels or min(indices) < 0 or indices != sorted(set(indices)) or levels[-1] != return_layer:
            raise ValueError(
                f"return_layers must be distinct stages of {_STAGES} in order, ending with "
                f"return_layer={return_layer!r}; got {levels!r}"
            )
        if width != 64:
            if name not in ("resnet18", "resnet34"):
                raise ValueError(f"width applies to BasicBlock ResNets (resnet18, resnet34), not {name}")
            if width < 8 or width % 8:
                raise ValueError(f"width must be a multiple of 8 (64: torchvision's ResNet), got {width}")
            if weights is not None:
                raise ValueError(
                    f"ImageNet weights have width 64; width={width} trains from scratch (weights=None)"
                )
        if dilation and name in ("resnet18", "resnet34"):
            raise ValueError(f"dilation (DC5) needs a bottleneck ResNet (resnet50, resnet101), not {name}")
        if dilation and return_layer != "layer4":
            raise ValueError("dilation (DC5) dilates layer4; use it with return_layer='layer4'")
        n_stages = _STAGES.index(return_layer) + 1
        if trainable_layers is None:
            from_scratch = weights is None and norm != "frozen_bn"
            trainable_layers = n_stages + 1 if from_scratch else max(n_stages - 1, 0)
        if not 0 <= trainable_layers <= n_stages + 1:
            raise ValueError(
                f"trainable_layers must be in 0..{n_stages + 1} for return_layer={return_layer!r} "
                f"({n_stages + 1}: every stage and the stem)"
            )
        net = getattr(torchvision.models, name)(
            weights=None,
            norm_layer=_norm_layer(norm, gn_groups),
            replace_stride_with_dilation=[False, False, dilation],
        )
        if width != 64:
            _set_width(net, width, _norm_layer(norm, gn_groups))
        if weights is not None:
            load_imagenet_weights(net, name, weights)
        trainable = set(_STAGES[max(n_stages - trainable_layers, 0) : n_stages])
        if trainable_layers == n_stages + 1:
            trainable |= {"conv1", "bn1"}
        for pname, p in net.named_parameters():
            p.requires_grad_(pname.split(".")[0] in trainable)
        self._frozen_modules = (
            [
                m
                for child, m in net.named_children()
                if child not in trainable and child not in ("fc", "avgpool")
            ]
            if norm == "bn"
            else []
        )
        self.body = IntermediateLayerGetter(net, return_layers={s: s for s in levels})
        self.name = name
        self.norm = norm
        self.return_layer = return_layer
        self.return_layers = levels
        scale = width / 64
        self.level_channels = tuple(round(RESNET_CHANNELS[name][s] * scale) for s in levels)
        self.level_strides = tuple(_STRIDES[s] // (2 if dilation and s == "layer4" else 1) for s in levels)
        self.num_channels = self.level_channels[-1]
        self.stride = self.level_strides[-1]

    def train(self, mode: bool = True) -> Backbone:
        """Set the training mode; the BatchNorms of frozen stages (``norm="bn"``) stay in eval mode."""
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self

    def forward(self, images: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Features of the return layer.

        Args:
            images: ``float[B, 3, H, W]``.
            pixel_mask: ``bool[B, H, W]``, True on real pixels.
        Returns:
            ``(features [B, C, H/s, W/s], mask bool[B, H/s, W/s])`` with ``s = self.stride``
            (rounded up by the convolutions).
        """
        features = self.body(images)[self.return_layer]
        return features, downsample_mask(pixel_mask, features.shape[-2:])

    def forward_levels(self, images: Tensor) -> list[Tensor]:
        """Features of every one of ``return_layers``.

        Args:
            images: ``float[B, 3, H, W]``.
        Returns:
            ``[B, level_channels[i], H/s_i, W/s_i]`` for each level ``i`` (finest first), with
            ``s_i = level_strides[i]`` (rounded up by the convolutions).
        """
        out = self.body(images)
        return [out[s] for s in self.return_layers]


def _set_width(net: torchvision.models.ResNet, width: int, norm_layer: Callable[[int], nn.Module]) -> None:
    """Rebuild the stem and the four stages of a BasicBlock ResNet with ``width * (1, 2, 4, 8)``
    channels (torchvision's block counts and initialisation, ``_make_layer`` reused)."""
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = norm_layer(width)
    for i, stage in enumerate(_STAGES):
        blocks = len(getattr(net, stage))
        setattr(net, stage, net._make_layer(BasicBlock, width * 2**i, blocks, stride=1 if i == 0 else 2))
    net.fc = nn.Linear(width * 8, net.fc.out_features)
    for m in net.modules():  # torchvision's ResNet initialisation of the new layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def imagenet_state_dict(name: str, weights: str | Path) -> dict[str, Tensor]:
    """ImageNet weights of a torchvision classification model, without its ``fc``/``classifier`` head.

    The one loader of ImageNet weights: detector backbones and the aerial U-Net encoder use it.

    Args:
        name: torchvision model name (``"resnet50"``, ``"vgg16"``...).
        weights: path to a state dict file (a bare one, or under ``state_dict``/``model``), a
            torchvision weight name (``"IMAGENET1K_V1"``), or ``"imagenet"`` (= ``IMAGENET1K_V1``).
    Raises:
        CheckpointError: the file is missing or unreadable, or the download failed (offline).
        ValueError: unknown weight name.
    """
    path = Path(weights)
    if path.suffix in (".pth", ".pt", ".bin") or path.exists():
        if not path.is_file():
            raise CheckpointError("weights file not found", path=path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
            raise CheckpointError(f"cannot read weights ({type(err).__name__})", path=path) from err
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    else:
        enum = torchvision.models.get_model_weights(name)
        key = "IMAGENET1K_V1" if str(weights) == "imagenet" else str(weights)
        try:
            entry = enum[key]
        except KeyError:
            names = [w.name for w in enum]
            raise ValueError(
                f"unknown {name} weights {weights!r}; give a .pth path or one of {names}"
            ) from None
        try:
            state = entry.get_state_dict(progress=False)
        except Exception as err:  # noqa: BLE001 - offline or blocked download: one clear line
            raise CheckpointError(
                f"could not download {enum.__name__}.{key} ({type(err).__name__}); pass a local weights file"
            ) from err
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}


def load_imagenet_weights(net: nn.Module, name: str, weights: str | Path) -> None:
    """Load :func:`imagenet_state_dict` into a torchvision model; only its head may be missing.

    Raises:
        CheckpointError: naming the first missing/unexpected keys when the weights do not fit.
    """
    missing, unexpected = net.load_state_dict(imagenet_state_dict(name, weights), strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
    if missing or unexpected:
        raise CheckpointError(
            f"backbone weights do not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}",
            path=weights if Path(weights).exists() else None,
        )


def build_backbone(
    name: str = "resnet50",
    *,
    return_layer: str = "layer4",
    return_layers: Sequence[str] | None = None,
    dilation: bool = False,
    trainable_layers: int | None = None,
    weights: str | Path | None = None,
    norm: Norm = "frozen_bn",
    gn_groups: int = 32,
    width: int = 64,
) -> Backbone:
    """Build a :class:`Backbone` (see its arguments)."""
    return Backbone(
        name,
        return_layer=return_layer,
        return_layers=return_layers,
        dilation=dilation,
        trainable_layers=trainable_layers,
        weights=weights,
        norm=norm,
        gn_groups=gn_groups,
        width=width,
    )
