"""Deformable DETR: parity with Hugging Face transformers (outputs and loss, current and old key
names), shapes, gradients, padding, postprocessing, registry."""

from __future__ import annotations

import re

import pytest
import torch

from detrkit.models.deformable_detr import DeformableDETR, deformable_state_dict_from_hf
from detrkit.models.deformable_transformer import select_proposals
from detrkit.models.registry import build_model, list_models

NUM_CLASSES = 5
NUM_QUERIES = 10
VARIANTS = {
    "plain": {},
    "refine": {"with_box_refine": True},
    "two-stage": {"with_box_refine": True, "two_stage": True},
}


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


def _hf_model(variant: dict, *, class_cost: int = 1):
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    config = DeformableDetrConfig(
        use_timm_backbone=True,
        backbone="resnet18",
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=NUM_QUERIES,
        two_stage_num_proposals=NUM_QUERIES,
        num_labels=NUM_CLASSES,
        dropout=0.0,
        auxiliary_loss=True,
        class_cost=class_cost,
        **variant,
    )
    torch.manual_seed(0)
    model = DeformableDetrForObjectDetection(config).eval()
    # Transformers zero-initialises several weights (attention weights, offsets' weights, box
    # heads); perturb everything so that parity exercises every weight.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.02 if ".backbone." in name else 0.1
            p.add_(torch.randn(p.shape, generator=g) * scale)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return model


def _ours(variant: dict, **overrides) -> DeformableDETR:
    # transformers' input projections use GroupNorm with 32 groups (the tiny model's default is 8)
    kwargs = {"num_queries": NUM_QUERIES, "dropout": 0.0, "norm_groups": 32, **variant, **overrides}
    return build_model("deformable-detr-tiny", num_classes=NUM_CLASSES, **kwargs).eval()


def _batch():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 96, 128, generator=g)
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    mask[1, 70:] = False  # second image is 70 x 90, padded bottom and right
    mask[1, :, 90:] = False
    images[1, :, 70:] = 0
    images[1, :, :, 90:] = 0
    return images, mask


def _old_style(hf_state: dict) -> dict:
    """Invert transformers' renames to produce a checkpoint with the older key names."""
    old = {}
    for key, value in hf_state.items():
        key = key.replace("model.backbone.", "model.backbone.conv_encoder.")
        key = key.replace("self_attn.o_proj.", "self_attn.out_proj.")
        key = re.sub(r"layers\.(\d+)\.mlp\.fc([12])\.", r"layers.\1.fc\2.", key)
        old[key] = value
    return old


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_with_transformers(name):
    variant = VARIANTS[name]
    hf = _hf_model(variant)
    ours = _ours(variant)
    result = ours.load_state_dict(deformable_state_dict_from_hf(hf.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    images, mask = _batch()
    with torch.no_grad():
        ref = hf(pixel_values=images, pixel_mask=mask.long())
        out = ours(images, mask)
    assert out["pred_logits"].shape == (2, NUM_QUERIES, NUM_CLASSES)
    assert _rel_err(out["pred_logits"], ref.logits) <= 1e-4
    assert _rel_err(out["pred_boxes"], ref.pred_boxes) <= 1e-4
    if variant.get("two_stage"):
        finite = ref.enc_outputs_coord_logits.isfinite().all(-1)
        assert finite.any() and not finite.all()  # padded and border positions are excluded
        assert _rel_err(out["enc_outputs"]["pred_logits"], ref.enc_outputs_class) <= 1e-4
        torch.testing.assert_close(
            out["enc_outputs"]["pred_boxes"], ref.enc_outputs_coord_logits.sigmoid(), rtol=1e-4, atol=1e-5
        )
    # Old key names (checkpoints published on the Hub before the renames) load the same weights,
    # also when tied heads are saved once (as transformers' save_pretrained does).
    old = _old_style(hf.state_dict())
    assert any(".conv_encoder." in k for k in old) and any(re.search(r"layers\.\d+\.fc1\.", k) for k in old)
    if name == "plain":
        old = {k: v for k, v in old.items() if not re.match(r"(class|bbox)_embed\.[1-9]", k)}
    if name == "refine":
        old = {k: v for k, v in old.items() if not k.startswith("bbox_embed.")}  # kept in model.decoder
    reloaded = _ours(variant)
    reloaded.load_state_dict(deformable_state_dict_from_hf(old), strict=True)
    with torch.no_grad():
        again = reloaded(images, mask)
    torch.testing.assert_close(again["pred_logits"], out["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(again["pred_boxes"], out["pred_boxes"], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "refine", "two-stage"])
def test_loss_parity_with_transformers(name):
    variant = VARIANTS[name]
    hf = _hf_model(variant, class_cost=2)
    # transformers weighs loss_ce by 1 and matches with its config's costs.
    ours = _ours(variant, cost_class=2.0, weight_ce=1.0)
    ours.load_state_dict(deformable_state_dict_from_hf(hf.state_dict()))
    images, mask = _batch()
    boxes = [torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.4, 0.5]]), torch.tensor([[0.5, 0.5, 0.6, 0.5]])]
    labels = [torch.tensor([1, 4]), torch.tensor([2])]
    with torch.no_grad():
        ref = hf(
            pixel_values=images,
            pixel_mask=mask.long(),
            labels=[{"class_labels": c, "boxes": b} for c, b in zip(labels, boxes, strict=True)],
        )
        out = ours(images, mask, [{"labels": c, "boxes": b} for c, b in zip(labels, boxes, strict=True)])
    for key in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"):
        assert abs(float(out[key]) - float(ref.loss_dict[key])) <= 1e-4 * abs(float(ref.loss_dict[key])), key
    # transformers leaves out the two-stage encoder loss of the paper; we add it.
    assert ("loss_ce_enc" in out) == bool(variant.get("two_stage"))
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    enc = sum(w * float(out[f"{k}_enc"]) for k, w in weights.items()) if "loss_ce_enc" in out else 0.0
    assert abs(float(out["loss"]) - enc - float(ref.loss)) <= 1e-4 * float(ref.loss)


def test_mapping_rejects_unknown_keys():
    with pytest.raises(ValueError, match="timm ResNet"):
        deformable_state_dict_from_hf(
            {"model.backbone.model.embedder.embedder.convolution.weight": torch.zeros(1)}
        )
    with pytest.raises(ValueError, match="no Deformable DETR counterpart"):
        deformable_state_dict_from_hf({"model.something_else.weight": torch.zeros(1)})


@pytest.mark.parametrize("name", list(VARIANTS))
def test_training_step_shapes_and_gradients(name):
    torch.manual_seed(0)
    model = build_model("deformable-detr-tiny", num_classes=3, num_queries=12, **VARIANTS[name]).train()
    with torch.no_grad():  # the paper's zero inits (offsets, attention and box-head weights) block
        for p in model.parameters():  # some gradients at step 0; move off them
            p.add_(torch.randn_like(p) * 0.01)
    images, mask = _batch()
    targets = [
        {"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.3]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]), "labels": torch.tensor([1])},
    ]
    images_before, targets_before = images.clone(), [{k: v.clone() for k, v in t.items()} for t in targets]
    out = model(images, mask, targets)
    assert out["pred_logits"].shape == (2, 12, 3) and out["pred_boxes"].shape == (2, 12, 4)
    assert len(out["aux_outputs"]) == 1
    assert all(a["pred_logits"].shape == (2, 12, 3) for a in out["aux_outputs"])
    assert ("enc_outputs" in out) == (name == "two-stage")
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["loss"])
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert out["loss"].requires_grad and not out["loss_ce"].requires_grad
    out["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad
    zero = [n for n, p in trainable if p.grad.abs().sum() == 0]
    assert not zero, zero
    # The stem and layer1 of the backbone stay frozen, as in the paper.
    assert not model.backbone.body.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    torch.testing.assert_close(images, images_before, rtol=0, atol=0)
    for t, t0 in zip(targets, targets_before, strict=True):
        assert all(torch.equal(t[k], t0[k]) for k in t0)


def test_heads_shared_or_per_layer_and_init():
    plain = build_model("deformable-detr-tiny", num_classes=4)
    refine = build_model("deformable-detr-tiny", num_classes=4, with_box_refine=True)
    assert plain.class_embed[0] is plain.class_embed[1] and plain.bbox_embed[0] is plain.bbox_embed[1]
    assert refine.class_embed[0] is not refine.class_embed[1]
    prior = torch.sigmoid(plain.class_embed[0].bias)
    torch.testing.assert_close(prior, torch.full((4,), 0.01))
    torch.testing.assert_close(plain.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    two = build_model("deformable-detr-tiny", num_classes=4, with_box_refine=True, two_stage=True)
    assert len(two.class_embed) == 3 and not hasattr(two.transformer, "query_embed")


def test_postprocess_topk_over_queries_and_classes():
    model = build_model("deformable-detr-tiny", num_classes=3, num_queries=4, top_k=5).eval()
    logits = torch.full((1, 4, 3), -10.0)
    logits[0, 2, 1] = 3.0
    logits[0, 2, 0] = 2.0  # the same query may appear with two labels
    logits[0, 0, 2] = 1.0
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.25, 0.5, 0.5, 1.0], [0.5, 0.5, 1, 1]]]
    )
    (det,) = model.postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))
    assert det["scores"].shape == (5,)
    assert det["labels"][:3].tolist() == [1, 0, 2]
    torch.testing.assert_close(det["scores"][:3], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    torch.testing.assert_close(det["boxes"][0], torch.tensor([0.0, 0.0, 100.0, 100.0]))
    torch.testing.assert_close(det["boxes"][2], torch.tensor([80.0, 40.0, 120.0, 60.0]))


def test_registry_options_and_errors():
    assert {"deformable-detr-r50", "deformable-detr-r50-refine", "deformable-detr-r50-two-stage"} <= set(
        list_models("deformable")
    )
    model = build_model("deformable-detr-tiny", num_classes=2, num_feature_levels=1)
    assert len(model.input_proj) == 1 and model.backbone.return_layers == ("layer4",)
    images, mask = _batch()
    with torch.no_grad():
        assert model.eval()(images, mask)["pred_logits"].shape == (2, 20, 2)
    with pytest.raises(ValueError, match="unknown Deformable DETR option"):
        build_model("deformable-detr-tiny", num_classes=2, n_points=3)
    with pytest.raises(ValueError, match="multiple of norm_groups"):
        build_model("deformable-detr-tiny", num_classes=2, d_model=48, num_heads=2, norm_groups=32)
    with pytest.raises(ValueError, match="without a criterion|targets"):
        model.criterion = None
        model(images, mask, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2)


@pytest.mark.parametrize("name", ["plain", "two-stage"])
def test_bfloat16_forward(name):
    torch.manual_seed(0)
    model = build_model("deformable-detr-tiny", num_classes=3, **VARIANTS[name]).eval()
    images, mask = _batch()
    with torch.no_grad():
        ref = model(images, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(images, mask)
        full = model.to(torch.bfloat16)(images.bfloat16(), mask)
    for out in (auto, full):
        assert out["pred_logits"].dtype == torch.bfloat16
        assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()
        if name == "plain":  # two-stage may pick other proposals when bf16 reorders close scores
            torch.testing.assert_close(out["pred_boxes"].float(), ref["pred_boxes"], rtol=0, atol=2e-2)
            torch.testing.assert_close(out["pred_logits"].float(), ref["pred_logits"], rtol=0, atol=1e-1)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("hw", [(32, 32), (64, 64), (33, 70)])
def test_small_inputs_train_at_batch_one(name, hw):
    # 32-64 px make C5 and the stride-64 level 1x1; two-stage then has fewer positions than queries
    torch.manual_seed(0)
    model = build_model("deformable-detr-tiny", num_classes=3, num_queries=30, **VARIANTS[name]).train()
    images, mask = torch.randn(1, 3, *hw), torch.ones(1, *hw, dtype=torch.bool)
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]]), "labels": torch.tensor([1])}]
    out = model(images, mask, targets)
    assert out["pred_logits"].shape == (1, 30, 3) and out["pred_boxes"].shape == (1, 30, 4)
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_two_stage_with_fewer_positions_than_queries():
    # 64 px: levels 8x8, 4x4, 2x2, 1x1 -> 85 positions; the two-stage transformer has no
    # query-count parameter, so a model with exactly 85 queries is the reference for the first 85.
    torch.manual_seed(0)
    many = build_model(
        "deformable-detr-tiny", num_classes=3, num_queries=100, dropout=0.0, **VARIANTS["two-stage"]
    )
    exact = build_model(
        "deformable-detr-tiny", num_classes=3, num_queries=85, dropout=0.0, **VARIANTS["two-stage"]
    )
    exact.load_state_dict(many.state_dict(), strict=True)
    captured = {}
    for key, model in (("many", many), ("exact", exact)):
        model.transformer.register_forward_hook(lambda m, a, out, key=key: captured.__setitem__(key, out))
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    mask[1, :, 48:] = False  # padded positions are invalid proposals too
    with torch.no_grad():
        out_many, out_exact = many.eval()(images, mask), exact.eval()(images, mask)
    assert out_many["pred_logits"].shape == (2, 100, 3)
    assert out_many["enc_outputs"]["pred_logits"].shape == (2, 85, 3)
    ref_many, ref_exact = captured["many"].init_reference, captured["exact"].init_reference
    # same proposals; the sigmoid of a 680- vs 800-element tensor may differ in the last bit
    torch.testing.assert_close(ref_many[:, :85], ref_exact, rtol=0, atol=1e-6)
    # the 15 extra queries start from the box of an invalid (padded) position: inf logits -> 1
    assert torch.equal(ref_many[:, 85:], torch.ones(2, 15, 4))
    # with as many queries as positions every proposal is kept, invalid ones (box 1, 1, 1, 1) included
    invalid = (out_many["enc_outputs"]["pred_boxes"] == 1).all(-1)
    assert invalid[1].sum() > invalid[0].sum()
    assert torch.equal((ref_exact == 1).all(-1).sum(1), invalid.sum(1))
    for out in (out_many, out_exact):
        assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()
    # the selection itself, against a sort by hand
    logits = torch.tensor([[[0.1], [0.9], [0.5]]])
    boxes = torch.arange(12.0).view(1, 3, 4)
    picked = select_proposals(logits, boxes, 5)
    assert picked.shape == (1, 5, 4) and not picked.requires_grad
    torch.testing.assert_close(picked[0, :3], boxes[0, [1, 2, 0]])
    assert torch.isinf(picked[0, 3:]).all() and (picked[0, 3:] > 0).all()
    torch.testing.assert_close(select_proposals(logits, boxes, 2)[0], boxes[0, [1, 2]])


def test_one_channel_groups_on_a_1x1_level_raise_a_clear_error():
    # d_model 32 with 32 groups (Hugging Face's GroupNorm on a d_model-32 model): one channel per group
    model = build_model("deformable-detr-tiny", num_classes=3, norm_groups=32).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="larger than 64 px"):
        model(torch.randn(1, 3, 64, 64), torch.ones(1, 64, 64, dtype=torch.bool))
    with torch.no_grad():  # batch 2, or a level larger than 1x1, is fine
        for b, h in ((2, 64), (1, 65)):
            out = model(torch.randn(b, 3, h, 64), torch.ones(b, h, 64, dtype=torch.bool))
            assert out["pred_logits"].shape == (b, 20, 3)
    with pytest.raises(ValueError, match="multiple of norm_groups"):
        build_model("deformable-detr-tiny", num_classes=3, norm_groups=5)


def test_two_stage_class_aware_options() -> None:
    from detrkit.models.registry import build_model

    with pytest.raises(ValueError, match="two_stage"):
        build_model("deformable-detr-tiny", num_classes=3, two_stage_class_aware=True)
    torch.manual_seed(0)
    model = build_model(
        "deformable-detr-tiny", num_classes=3, two_stage=True, two_stage_class_aware=True, two_stage_k=3
    )
    assert model.transformer.proposal_score == "max" and model.criterion.enc_k == 3
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]]), "labels": torch.tensor([2])}] * 2
    out = model(images, mask, targets)
    assert torch.isfinite(out["loss"]) and out["loss_ce_enc"] > 0
    out["loss"].backward()


def test_two_stage_memory_queries_start_from_the_selected_encoder_features() -> None:
    with pytest.raises(ValueError, match="two_stage"):
        build_model("deformable-detr-tiny", num_classes=3, two_stage_query="memory")
    with pytest.raises(ValueError, match="query_content"):
        build_model("deformable-detr-tiny", num_classes=3, two_stage=True, two_stage_query="mean")
    torch.manual_seed(0)
    model = build_model(
        "deformable-detr-tiny", num_classes=3, num_queries=7, two_stage=True, two_stage_query="memory"
    ).eval()
    captured = {}
    model.transformer.enc_output_norm.register_forward_hook(
        lambda m, a, out: captured.__setitem__("feat", out)
    )
    model.transformer.decoder_layers[0].register_forward_pre_hook(
        lambda m, args: captured.__setitem__("tgt", args[0])
    )
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        out = model(images, mask)
    order = out["enc_outputs"]["pred_logits"][..., 0].argsort(dim=1, descending=True)[:, :7]
    expected = torch.stack([captured["feat"][b, order[b]] for b in range(2)])
    torch.testing.assert_close(captured["tgt"], expected, rtol=0, atol=0)
    # the default takes the content from the proposals' position embedding instead
    position = build_model("deformable-detr-tiny", num_classes=3, num_queries=7, two_stage=True).eval()
    position.load_state_dict(model.state_dict())
    position.transformer.decoder_layers[0].register_forward_pre_hook(
        lambda m, args: captured.__setitem__("tgt_pos", args[0])
    )
    with torch.no_grad():
        position(images, mask)
    assert not torch.allclose(captured["tgt_pos"], captured["tgt"])
