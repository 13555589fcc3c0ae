"""Parity with transformers' DetrForObjectDetection (random weights, offline) and checkpoint loading."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from detrkit.errors import CheckpointError  # noqa: E402
from detrkit.models.hf_weights import build_model_from_hf, load_hf_weights  # noqa: E402
from detrkit.models.registry import build_model  # noqa: E402

TOL = 1e-4
SMALL = {
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "num_queries": 10,
    "num_labels": 3,
}


def _randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Informative random weights (transformers' init makes every query predict nearly the same)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() == 1:
                is_scale = name.endswith("weight") and (
                    "norm" in name or ".bn" in name or "normalization" in name
                )
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + float(is_scale))
            elif "query_position" in name:
                t.copy_(torch.randn(t.shape, generator=g))
            else:
                scale = 4.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                t.copy_(torch.randn(t.shape, generator=g) * scale / t[0].numel() ** 0.5)


def _hf_model(**overrides):
    cfg = transformers.DetrConfig(
        **{"backbone": "resnet18", "use_pretrained_backbone": False, **SMALL, **overrides}
    )
    model = transformers.DetrForObjectDetection(cfg).eval()
    _randomize(model)
    return model


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 96, 128, generator=g)
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    mask[1, :, 80:] = False
    mask[1, 64:, :] = False
    return images, mask


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def _assert_parity(ours, hf) -> None:
    images, mask = _batch()
    ours.eval()
    with torch.no_grad():
        ref = hf(pixel_values=images, pixel_mask=mask.long())
        out = ours(images, mask)
    assert out["pred_logits"].shape == ref.logits.shape
    assert _rel(out["pred_logits"], ref.logits) <= TOL
    assert _rel(out["pred_boxes"], ref.pred_boxes) <= TOL
    # the comparison is informative: predictions differ across queries and images
    assert ref.logits.std(dim=1).min() > 1e-3 and (ref.logits[0] - ref.logits[1]).abs().max() > 1e-2


def _our_tiny(**overrides):
    opts = {"backbone": "resnet18", "return_layer": "layer4", "d_model": 64, "num_heads": 4, "num_encoder_layers": 2,
            "num_decoder_layers": 2, "dim_feedforward": 128, "num_queries": 10, **overrides}  # fmt: skip
    return build_model("detr-r18", num_classes=3, **opts)


def _to_old_naming(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of transformers' DetrModel renames: the key names of checkpoints on the Hub."""
    old = {}
    for key, value in state.items():
        key = key.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
        key = key.replace(".o_proj.", ".out_proj.")
        key = re.sub(r"layers\.(\d+)\.mlp\.fc([12])\.", r"layers.\1.fc\2.", key)
        old[key] = value
    return old


def test_parity_safetensors_folder_built_from_config(tmp_path) -> None:
    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = build_model_from_hf(tmp_path)
    assert ours.model_name == "detr-r18" and ours.num_classes == 3
    assert ours.class_names == ["LABEL_0", "LABEL_1", "LABEL_2"]
    _assert_parity(ours, hf)


def test_parity_new_and_old_key_names_in_memory() -> None:
    hf = _hf_model()
    state = hf.state_dict()
    assert any(".o_proj." in k for k in state) and any("model.backbone.model." in k for k in state)
    ours = _our_tiny()
    load_hf_weights(ours, state)
    _assert_parity(ours, hf)
    old = _to_old_naming(state)
    assert any(".out_proj." in k for k in old) and any("conv_encoder" in k for k in old)
    ours_old = _our_tiny()
    load_hf_weights(ours_old, old)
    _assert_parity(ours_old, hf)


def test_parity_transformers_resnet_backbone(tmp_path) -> None:
    backbone = transformers.ResNetConfig(
        depths=[2, 2, 2, 2], layer_type="basic", hidden_sizes=[64, 128, 256, 512], out_features=["stage4"]
    )
    hf = _hf_model(
        backbone_config=backbone, use_timm_backbone=False, backbone=None, use_pretrained_backbone=None
    )
    hf.save_pretrained(tmp_path)
    ours = build_model_from_hf(tmp_path)
    assert ours.backbone.name == "resnet18"
    _assert_parity(ours, hf)


def test_parity_dc5_dilation_resnet50(tmp_path) -> None:
    hf = _hf_model(dilation=True, backbone="resnet50")
    hf.save_pretrained(tmp_path)
    ours = build_model_from_hf(tmp_path)
    assert ours.model_name == "detr-r50" and ours.backbone.stride == 16
    _assert_parity(ours, hf)


def test_loss_parity_with_transformers() -> None:
    hf = _hf_model()
    ours = _our_tiny(aux_loss=False)
    load_hf_weights(ours, hf.state_dict())
    ours.eval()
    images, mask = _batch()
    targets = [
        {"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]), "labels": torch.tensor([2, 0])},
        {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]), "labels": torch.tensor([1])},
    ]
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    with torch.no_grad():
        ref = hf(pixel_values=images, pixel_mask=mask.long(), labels=labels)
        out = ours(images, mask, targets)
    assert out["loss"].item() == pytest.approx(ref.loss.item(), rel=TOL)
    for key in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):
        assert out[key].item() == pytest.approx(ref.loss_dict[key].item(), rel=TOL, abs=1e-6), key


def test_other_class_count_reinitialises_head_only(tmp_path) -> None:
    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="class head re-initialised"):
        ours = build_model_from_hf(tmp_path, num_classes=5)
    assert ours.num_classes == 5 and ours.class_names is None
    assert ours.class_embed.weight.shape == (6, 64)
    reference = build_model_from_hf(tmp_path)
    for (name, p), (_, q) in zip(ours.state_dict().items(), reference.state_dict().items(), strict=True):
        if not name.startswith("class_embed"):
            assert torch.equal(p, q), name


def test_bin_file_and_facebookresearch_checkpoint(tmp_path) -> None:
    hf = _hf_model()
    torch.save(_to_old_naming(hf.state_dict()), tmp_path / "pytorch_model.bin")
    ours = _our_tiny()
    load_hf_weights(ours, tmp_path / "pytorch_model.bin")
    _assert_parity(ours, hf)

    # facebookresearch/detr layout: packed in_proj, backbone.0.body, multihead_attn, decoder.norm
    original = {}
    for key, value in ours.state_dict().items():
        key = key.replace("backbone.body.", "backbone.0.body.").replace(
            "transformer.decoder_norm.", "transformer.decoder.norm."
        )
        key = re.sub(r"^transformer\.(encoder|decoder)\.(\d+)\.", r"transformer.\1.layers.\2.", key)
        original[key.replace(".cross_attn.", ".multihead_attn.")] = value
    for key in [k for k in original if re.search(r"\.q_proj\.(weight|bias)$", k)]:
        base, kind = key.rsplit(".q_proj.", 1)
        packed = [original.pop(f"{base}.{n}_proj.{kind}") for n in ("q", "k", "v")]
        original[f"{base}.in_proj_{kind}"] = torch.cat(packed)
    torch.save({"model": original, "epoch": 299}, tmp_path / "detr-r18.pth")
    fresh = _our_tiny()
    load_hf_weights(fresh, tmp_path / "detr-r18.pth")
    _assert_parity(fresh, hf)


def test_errors_are_one_line_checkpoint_errors(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_hf_weights(_our_tiny(), tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        load_hf_weights(_our_tiny(), tmp_path)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match="Hugging Face Hub") as info:
        load_hf_weights(_our_tiny(), "someone/not-cached-detr")
    assert "\n" not in str(info.value)

    hf_state = _hf_model().state_dict()
    partial = {k: v for k, v in hf_state.items() if "decoder.layers.1." not in k}
    with pytest.raises(CheckpointError, match="missing key"):
        load_hf_weights(_our_tiny(), partial)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_hf_weights(_our_tiny(), partial, strict=False)
    assert report["missing"] and all("transformer.decoder.1." in k for k in report["missing"])
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_hf_weights(_our_tiny(d_model=32, num_heads=4, dim_feedforward=128), hf_state)
    learned = dict(hf_state)
    learned["model.backbone.position_embedding.row_embeddings.weight"] = torch.zeros(50, 32)
    with pytest.raises(CheckpointError, match="no DETR counterpart"):
        load_hf_weights(_our_tiny(), learned)


def test_deformable_checkpoint_is_dispatched(tmp_path) -> None:
    pytest.importorskip("detrkit.models.deformable_detr")
    cfg = transformers.DeformableDetrConfig(
        backbone="resnet18", use_pretrained_backbone=False, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        num_queries=10, num_labels=3, encoder_n_points=2, decoder_n_points=2,
    )  # fmt: skip
    hf = transformers.DeformableDetrForObjectDetection(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = build_model_from_hf(tmp_path).eval()
    assert ours.model_name.startswith("deformable-detr") and ours.num_classes == 3
    images, mask = _batch()
    with torch.no_grad():
        ref = hf(pixel_values=images, pixel_mask=mask.long())
        out = ours(images, mask)
    assert _rel(out["pred_logits"], ref.logits) <= TOL
    assert _rel(out["pred_boxes"], ref.pred_boxes) <= TOL
