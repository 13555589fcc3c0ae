"""U-Net with a ResNet encoder, an ASPP bottleneck and a GSD regression head.

``AerialUNet(images[B,C,H,W]) -> {"logits": [B,1,H,W], "log_gsd": [B]}`` where ``logits`` are
building logits at full resolution and ``log_gsd`` is the natural log of the predicted ground
sample distance in metres per pixel. H and W must be multiples of 32 (the encoder's stride); a
wrong size raises ``ValueError`` that names the padded size to use.

Architectures are built by name (:func:`build_aerial_model`, :func:`list_aerial_models`):
``unet-r34-aspp`` (the users' design), ``unet-r18-aspp`` and ``unet-tiny`` (a narrow ResNet-18-like
encoder, ~2.2 M parameters, for CPU training on the generated data and the web app default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from detrkit.errors import CheckpointError
from detrkit.models.backbone import imagenet_state_dict
from detrkit.runs.restore import CheckpointKind

#: the ``kind`` entry of checkpoints written by ``detrkit aerial train``.
CHECKPOINT_KIND = "aerial-segmentation"


def _conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResNetEncoder(nn.Module):
    """ResNet feature pyramid: ``forward(x[B,C,H,W]) -> [f1 (/2), f2 (/4), f3 (/8), f4 (/16), f5 (/32)]``.

    ``widths`` are the channels of the stem and the four stages; ``depths`` the blocks per stage.
    torchvision's ResNet-18/34 are ``widths=(64, 64, 128, 256, 512)`` with ``depths`` (2,2,2,2) and
    (3,4,6,3); their state dicts load directly into this module.
    """

    def __init__(self, *, widths: tuple[int, ...], depths: tuple[int, ...], in_channels: int = 3) -> None:
        super().__init__()
        self.out_channels = widths
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths[1:], depths, strict=True)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != width:
                down = nn.Sequential(
                    nn.Conv2d(cin, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
                )
            blocks = [BasicBlock(cin, width, stride, down)] + [
                BasicBlock(width, width) for _ in range(depth - 1)
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width

    def forward(self, x: Tensor) -> list[Tensor]:
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``[B,cin,h,w] -> [B,cout,h,w]``.

    Parallel 1x1 and dilated 3x3 convolutions, concatenated and projected. The global image-pooling
    branch of DeepLabV3 is optional (``image_pooling``) and off by default: it makes every output
    pixel depend on the whole input extent, so a tiled prediction could not match a full-image one.
    """

    def __init__(
        self, cin: int, cout: int, rates: tuple[int, ...] = (3, 6, 9), image_pooling: bool = False
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
        )
        self.pool = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
            if image_pooling
            else None
        )
        n = len(self.branches) + (1 if image_pooling else 0)
        self.project = nn.Sequential(_conv_bn_relu(n * cout, cout, 1), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        if self.pool is not None:
            outs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, dim=1))


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip (if any), two 3x3 conv-BN-ReLU: ``[B,cin,h,w] -> [B,cout,2h,2w]``."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv_bn_relu(cin + skip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class AerialUNet(nn.Module):
    """U-Net (ResNet encoder + ASPP bottleneck + 5 decoder blocks) with a log-GSD regression head.

    Args:
        encoder_widths / encoder_depths: see :class:`ResNetEncoder`.
        decoder_channels: output channels of the 5 decoder blocks (strides 16, 8, 4, 2, 1).
        aspp_channels, aspp_rates, aspp_image_pooling: see :class:`ASPP`.
        in_channels: input bands (3 for RGB; 4 for RGB+NIR...).
    """

    stride = 32

    def __init__(
        self,
        *,
        encoder_widths: tuple[int, ...] = (64, 64, 128, 256, 512),
        encoder_depths: tuple[int, ...] = (3, 4, 6, 3),
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        aspp_channels: int = 256,
        aspp_rates: tuple[int, ...] = (3, 6, 9),
        aspp_image_pooling: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = ResNetEncoder(widths=encoder_widths, depths=encoder_depths, in_channels=in_channels)
        self.aspp = ASPP(encoder_widths[-1], aspp_channels, aspp_rates, aspp_image_pooling)
        skips = [encoder_widths[3], encoder_widths[2], encoder_widths[1], encoder_widths[0], 0]
        blocks, cin = [], aspp_channels
        for skip, cout in zip(skips, decoder_channels, strict=True):
            blocks.append(DecoderBlock(cin, skip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.seg_head = nn.Conv2d(cin, 1, 3, padding=1)
        # GSD head: texture statistics of the three deepest encoder stages -> log(m/pixel)
        feat = sum(encoder_widths[2:])
        self.gsd_head = nn.Sequential(nn.Linear(2 * feat, 128), nn.ReLU(inplace=True), nn.Linear(128, 1))
        nn.init.zeros_(self.gsd_head[-1].weight)
        nn.init.constant_(self.gsd_head[-1].bias, -0.7)  # log(0.5 m), the middle of usual aerial GSDs

    def check_input(self, images: Tensor) -> None:
        """Raise ``ValueError`` when ``images`` is not ``[B,in_channels,H,W]`` with H, W multiples of 32."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B,{self.in_channels},H,W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            ph, pw = -(-h // self.stride) * self.stride, -(-w // self.stride) * self.stride
            raise ValueError(
                f"input size {h}x{w} is not divisible by {self.stride}: pad it to {ph}x{pw} "
                "(detrkit.aerial.tiling.pad_to_multiple) or use tiled prediction"
            )

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        self.check_input(images)
        feats = self.encoder(images)
        pooled = [torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3))], dim=1) for f in feats[2:]]
        log_gsd = self.gsd_head(torch.cat(pooled, dim=1)).squeeze(1)
        x = self.aspp(feats[-1])
        skips = [feats[3], feats[2], feats[1], feats[0], None]
        for block, skip in zip(self.decoder, skips, strict=True):
            x = block(x, skip)
        return {"logits": self.seg_head(x), "log_gsd": log_gsd}


_R34 = {"encoder_widths": (64, 64, 128, 256, 512), "encoder_depths": (3, 4, 6, 3)}
_R18 = {"encoder_widths": (64, 64, 128, 256, 512), "encoder_depths": (2, 2, 2, 2)}
ARCHITECTURES: dict[str, dict[str, object]] = {
    "unet-r34-aspp": {**_R34, "decoder_channels": (256, 128, 64, 32, 16), "aspp_channels": 256},
    "unet-r18-aspp": {**_R18, "decoder_channels": (256, 128, 64, 32, 16), "aspp_channels": 256},
    "unet-tiny": {
        "encoder_widths": (24, 24, 48, 96, 160),
        "encoder_depths": (2, 2, 2, 2),
        "decoder_channels": (96, 64, 32, 24, 16),
        "aspp_channels": 96,
    },
}
#: the torchvision classification model whose ImageNet weights fit each encoder.
_TORCHVISION = {"unet-r34-aspp": "resnet34", "unet-r18-aspp": "resnet18"}


def list_aerial_models() -> list[str]:
    """Names accepted by :func:`build_aerial_model`."""
    return sorted(ARCHITECTURES)


def load_encoder_weights(model: AerialUNet, name: str, source: str | Path) -> None:
    """Load ImageNet ResNet weights (``"imagenet"`` or a local torchvision state-dict file) into the encoder.

    When ``model.in_channels != 3`` the first convolution is patched as in segmentation-models-pytorch:
    one band gets the sum of the RGB filters; more bands repeat RGB cyclically, scaled by 3/C.
    """
    if str(source) == "imagenet" and name not in _TORCHVISION:
        raise CheckpointError(
            f"model {name!r} has no ImageNet encoder weights; use one of {sorted(_TORCHVISION)}"
        )
    # a local file loads into any encoder; only the download needs the torchvision name
    state = imagenet_state_dict(_TORCHVISION.get(name, "resnet18"), source)
    conv = state.get("conv1.weight")
    if conv is not None and conv.shape[1] != model.in_channels:
        c = model.in_channels
        if c == 1:
            state["conv1.weight"] = conv.sum(dim=1, keepdim=True)
        else:
            idx = torch.arange(c) % conv.shape[1]
            state["conv1.weight"] = conv[:, idx] * (3.0 / c)
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "num_batches_tracked" not in k]:
        raise CheckpointError(
            f"encoder weights {source} do not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def build_aerial_model(
    name: str = "unet-r34-aspp",
    *,
    in_channels: int = 3,
    encoder_weights: str | Path | None = None,
    **overrides: object,
) -> AerialUNet:
    """Build a registered architecture; ``overrides`` replace its :class:`AerialUNet` keyword arguments.

    ``encoder_weights``: None (random), ``"imagenet"`` (torchvision enum, downloads when online) or a
    local ``.pth``/``.pt`` torchvision ResNet state dict.
    """
    if name not in ARCHITECTURES:
        raise CheckpointError(f"unknown aerial model {name!r}; choose one of {list_aerial_models()}")
    kwargs = {**ARCHITECTURES[name], **overrides, "in_channels": in_channels}
    model = AerialUNet(**kwargs)  # type: ignore[arg-type]
    if encoder_weights is not None:
        load_encoder_weights(model, name, encoder_weights)
    return model


def _rebuild(ckpt: dict[str, Any], path: Path) -> tuple[nn.Module, dict[str, Any], None, dict[str, Any]]:
    """:class:`detrkit.runs.restore.CheckpointKind` rebuild of an aerial checkpoint (no transform:
    the tiled predictor normalises the windows itself)."""
    model = build_aerial_model(ckpt["model_name"], **ckpt.get("model_kwargs", {}))
    classes = ckpt.get("classes") or {"names": ["building"], "category_ids": [1]}
    return model, classes, None, dict(ckpt.get("config") or {})


#: ``detrkit.runs.restore(run, kind=AERIAL)`` rebuilds a ``detrkit aerial train`` checkpoint.
AERIAL = CheckpointKind(name=CHECKPOINT_KIND, label="an aerial segmentation", rebuild=_rebuild)
