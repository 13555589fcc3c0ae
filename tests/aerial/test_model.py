"""The aerial U-Net: shapes, gradients, padded-size errors, first-conv patching and weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from detrkit.aerial.model import build_aerial_model, list_aerial_models
from detrkit.errors import CheckpointError


@pytest.mark.parametrize("name", list_aerial_models())
def test_shapes_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = build_aerial_model(name)
    x = torch.randn(2, 3, 64, 96)
    x0 = x.clone()
    out = model(x)
    assert out["logits"].shape == (2, 1, 64, 96) and out["log_gsd"].shape == (2,)
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["log_gsd"]).all()
    assert torch.equal(x, x0)
    (out["logits"].mean() + out["log_gsd"].sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_shape_error_names_the_padded_size() -> None:
    model = build_aerial_model("unet-tiny")
    with pytest.raises(ValueError, match="pad it to 256x320"):
        model(torch.randn(1, 3, 250, 300))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        model(torch.randn(1, 4, 64, 64))


def test_in_channels_patch_from_a_local_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    w = ref.conv1.weight.detach()
    m4 = build_aerial_model("unet-r18-aspp", in_channels=4, encoder_weights=path)
    torch.testing.assert_close(m4.encoder.conv1.weight, torch.cat([w, w[:, :1]], 1) * 0.75)
    torch.testing.assert_close(m4.encoder.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    m1 = build_aerial_model("unet-r18-aspp", in_channels=1, encoder_weights=path)
    torch.testing.assert_close(m1.encoder.conv1.weight, w.sum(1, keepdim=True))
    assert m1(torch.randn(1, 1, 64, 64))["logits"].shape == (1, 1, 64, 64)
    # the encoder reproduces torchvision's ResNet-18 features
    m3 = build_aerial_model("unet-r18-aspp", encoder_weights=path).eval()
    ref.eval()
    x = torch.randn(1, 3, 64, 64)
    r = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
    torch.testing.assert_close(m3.encoder(x)[-1], r)


def test_weight_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        build_aerial_model("unet-r34-aspp", encoder_weights=tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="no ImageNet encoder weights"):
        build_aerial_model("unet-tiny", encoder_weights="imagenet")
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        build_aerial_model("unet-r34-aspp", encoder_weights=tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="unknown aerial model"):
        build_aerial_model("unet-r999")
