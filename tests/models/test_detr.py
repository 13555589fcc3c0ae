"""DETR building blocks vs independent references (transformers, torch.nn), postprocessing by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from detrkit.models.backbone import Backbone, FrozenBatchNorm2d, downsample_mask
from detrkit.models.base import postprocess_sigmoid_topk, postprocess_softmax
from detrkit.models.detr import build_detr
from detrkit.models.position import PositionEmbeddingSine
from detrkit.models.transformer import Attention


def _mask() -> torch.Tensor:
    mask = torch.ones(2, 6, 9, dtype=torch.bool)
    mask[1, 4:, :] = False
    mask[1, :, 5:] = False
    return mask


def test_sine_position_matches_transformers() -> None:
    modeling = pytest.importorskip("transformers.models.detr.modeling_detr")
    mask = _mask()
    ours = PositionEmbeddingSine(16)(mask)
    ref = modeling.DetrSinePositionEmbedding(16, normalize=True)(
        shape=torch.Size([2, 32, 6, 9]), device="cpu", dtype=torch.float32, mask=mask.long()
    )
    assert ours.shape == (2, 32, 6, 9)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_sine_position_by_hand_and_bf16() -> None:
    mask = _mask()
    pos = PositionEmbeddingSine(4)(mask)
    # image 1, row 2, col 3: real extent 4 rows x 5 cols -> y = 3/4 * 2pi, x = 4/5 * 2pi
    y, x = 3 / 4 * 2 * math.pi, 4 / 5 * 2 * math.pi
    dims = [10000 ** (2 * (i // 2) / 4) for i in range(4)]
    expected = [math.sin(y / dims[0]), math.cos(y / dims[1]), math.sin(y / dims[2]), math.cos(y / dims[3])]
    expected += [math.sin(x / dims[0]), math.cos(x / dims[1]), math.sin(x / dims[2]), math.cos(x / dims[3])]
    torch.testing.assert_close(pos[1, :, 2, 3], torch.tensor(expected), rtol=1e-4, atol=1e-4)
    assert PositionEmbeddingSine(4)(mask, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="even"):
        PositionEmbeddingSine(5)


def test_attention_matches_torch_multihead_attention() -> None:
    torch.manual_seed(0)
    d, h = 16, 4
    ours = Attention(d, h).eval()
    ref = torch.nn.MultiheadAttention(d, h, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    q, k, v = torch.randn(2, 5, d), torch.randn(2, 7, d), torch.randn(2, 7, d)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 4:] = False
    expected, _ = ref(q, k, v, key_padding_mask=~valid)
    torch.testing.assert_close(ours(q, k, v, valid), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 4)


@pytest.mark.parametrize(
    ("name", "layer", "dilation", "channels", "stride"),
    [
        ("resnet18", "layer3", False, 256, 16),
        ("resnet18", "layer4", False, 512, 32),
        ("resnet50", "layer4", True, 2048, 16),
    ],
)
def test_backbone_shapes_and_frozen_stem(name, layer, dilation, channels, stride) -> None:
    bb = Backbone(name, return_layer=layer, dilation=dilation)
    assert bb.num_channels == channels and bb.stride == stride
    images, mask = torch.randn(1, 3, 64, 96), torch.ones(1, 64, 96, dtype=torch.bool)
    feats, fmask = bb(images, mask)
    assert (
        feats.shape == (1, channels, 64 // stride, 96 // stride)
        and fmask.shape == feats.shape[:1] + feats.shape[2:]
    )
    frozen = {n.split(".")[0] for n, p in bb.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # DETR trains layer2.. only (bn1 is frozen: buffers)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    if layer == "layer3":
        assert not hasattr(bb.body, "layer4")  # dropped: no parameter without a gradient


def test_backbone_return_layers_match_torchvision_and_keep_names() -> None:
    torch.manual_seed(0)
    multi = Backbone("resnet18", return_layers=("layer2", "layer3", "layer4"))
    single = Backbone("resnet18")
    assert list(multi.state_dict()) == list(single.state_dict())  # body.* names: HF mapping unchanged
    assert multi.level_channels == (128, 256, 512) and multi.level_strides == (8, 16, 32)
    assert multi.num_channels == 512 and multi.stride == 32
    ref = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    ref.load_state_dict(multi.body.state_dict(), strict=False)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        levels = multi.forward_levels(images)
        x = ref.maxpool(ref.relu(ref.bn1(ref.conv1(images))))
        expected = []
        for stage in (ref.layer1, ref.layer2, ref.layer3, ref.layer4):
            x = stage(x)
            expected.append(x)
        last, mask = multi(images, torch.ones(2, 64, 96, dtype=torch.bool))
    for got, want in zip(levels, expected[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(last, expected[-1], rtol=0, atol=0)
    assert mask.shape == (2, 2, 3) and mask.all()
    dc5 = Backbone("resnet50", return_layers=("layer3", "layer4"), dilation=True)
    assert dc5.level_strides == (16, 16)
    c4 = Backbone("resnet18", return_layer="layer3", return_layers=("layer2", "layer3"))
    assert not hasattr(c4.body, "layer4") and [f.shape[1] for f in c4.forward_levels(images)] == [128, 256]
    for bad in (("layer4", "layer3"), ("layer2", "layer2", "layer4"), ("layer2",), ("layer5", "layer4"), ()):
        with pytest.raises(ValueError, match="return_layers"):
            Backbone("resnet18", return_layers=bad)


def test_backbone_options_and_weights_file(tmp_path) -> None:
    assert all(not p.requires_grad for p in Backbone("resnet18", trainable_layers=0).parameters())
    with pytest.raises(ValueError, match="bottleneck"):
        Backbone("resnet18", dilation=True)
    with pytest.raises(ValueError, match="unknown backbone"):
        Backbone("resnet42")
    with pytest.raises(ValueError, match="trainable_layers"):
        Backbone("resnet18", return_layer="layer2", trainable_layers=4)  # 3: layer1-2 and the stem
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    bb = Backbone("resnet18", weights=tmp_path / "r18.pth")
    assert torch.equal(bb.body.layer2[0].conv1.weight, ref.layer2[0].conv1.weight)
    assert torch.equal(bb.body.bn1.running_var, ref.bn1.running_var)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        Backbone("resnet18", weights="NOT_A_WEIGHT")


def test_downsample_mask_nearest() -> None:
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :6, :4] = True
    assert downsample_mask(mask, (4, 4))[0].tolist() == [[True, True, False, False]] * 3 + [[False] * 4]


def test_postprocess_softmax_by_hand() -> None:
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0]]])  # K=2 + no-object
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.5, 0.5, 1.0], [0.9, 0.9, 0.4, 0.4]]])
    (det,) = postprocess_softmax(logits, boxes, torch.tensor([[100, 200]]), top_k=2)
    p = lambda a, b, c: math.exp(a) / (math.exp(a) + math.exp(b) + math.exp(c))  # noqa: E731
    torch.testing.assert_close(det["scores"], torch.tensor([p(3, 0, 0), p(2, 0, 0)]))
    assert det["labels"].tolist() == [1, 0]
    torch.testing.assert_close(
        det["boxes"], torch.tensor([[0.0, 0.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0]])
    )
    (clipped,) = postprocess_softmax(logits, boxes, torch.tensor([[100, 200]]))
    assert clipped["boxes"][2].tolist() == pytest.approx([140.0, 70.0, 200.0, 100.0])  # clipped to the image
    with pytest.raises(ValueError, match="orig_sizes_hw"):
        postprocess_softmax(logits, boxes, torch.tensor([100, 200]))


def test_postprocess_sigmoid_topk_over_queries_and_classes() -> None:
    logits = torch.tensor([[[0.0, 4.0], [3.0, 2.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]]])
    (det,) = postprocess_sigmoid_topk(logits, boxes, torch.tensor([[10, 10]]), top_k=3)
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([4.0, 3.0, 2.0])))
    assert det["labels"].tolist() == [1, 0, 1]
    assert det["boxes"].tolist() == [[0, 0, 10, 10], [2.5, 2.5, 7.5, 7.5], [2.5, 2.5, 7.5, 7.5]]


def test_training_step_syncs_host_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_detr(num_classes=2, backbone="resnet18", return_layer="layer3", d_model=32, num_heads=2,
                       num_encoder_layers=1, num_decoder_layers=3, dim_feedforward=32, num_queries=6)  # fmt: skip
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    targets = [{"boxes": torch.rand(3, 4) * 0.3 + 0.2, "labels": torch.tensor([0, 1, 1])}] * 2
    calls = []
    for method in ("cpu", "item", "tolist"):
        original = getattr(torch.Tensor, method)

        def counting(self, *a, _name=method, _orig=original, **k):
            calls.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, method, counting)
    out = model(images, mask, targets)
    monkeypatch.undo()
    assert len(out["aux_outputs"]) == 2
    assert calls == ["cpu"]  # the matcher's single copy of the 3 layers' cost matrices


def test_builder_validation_and_focal_head() -> None:
    with pytest.raises(ValueError, match="loss must be"):
        build_detr(num_classes=2, loss="bce")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of 4"):
        build_detr(num_classes=2, backbone="resnet18", d_model=30, num_heads=2)
    model = build_detr(num_classes=4, backbone="resnet18", d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                       dim_feedforward=32, num_queries=5, loss="focal")  # fmt: skip
    assert model.class_embed.out_features == 4 and model.criterion.loss_type == "focal"
    assert model.criterion.matcher.class_cost == "focal" and model.criterion.weight_dict["loss_ce"] == 2.0
    torch.testing.assert_close(torch.sigmoid(model.class_embed.bias), torch.full((4,), 0.01))


@pytest.mark.slow
def test_detr_tiny_overfits_two_images() -> None:
    from detrkit.boxes import box_cxcywh_to_xyxy, box_iou
    from detrkit.models.registry import build_model

    torch.manual_seed(0)
    # from scratch: a trainable norm (a frozen BatchNorm is the identity at random init and, with it,
    # 80 steps do not fit the second image's box); GroupNorm behaves the same in train and eval
    model = build_model("detr-tiny", num_classes=2, num_queries=10, backbone_norm="gn")
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    targets = [
        {"boxes": torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.7, 0.7, 0.2, 0.4]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[0.5, 0.4, 0.5, 0.3]]), "labels": torch.tensor([1])},
    ]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = None
    for _ in range(80):
        out = model(images, mask, targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = out["loss"].item() if first is None else first
    assert out["loss"].item() < 0.3 * first
    model.eval()
    with torch.no_grad():
        dets = model.postprocess(model(images, mask), torch.tensor([[64, 64], [64, 64]]))
    for det, t in zip(dets, targets, strict=True):
        gt = box_cxcywh_to_xyxy(t["boxes"]) * 64
        iou, _ = box_iou(gt, det["boxes"][:5])
        same_label = t["labels"][:, None] == det["labels"][None, :5]
        assert ((iou > 0.5) & same_label).any(dim=1).all()


@pytest.mark.slow
def test_inference_forward_compiles_without_graph_breaks() -> None:
    from detrkit.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("detr-tiny", num_classes=3).eval()
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    mask[1, :, 40:] = False
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected, actual = model(images, mask), compiled(images, mask)
    torch.testing.assert_close(actual["pred_logits"], expected["pred_logits"])
    torch.testing.assert_close(actual["pred_boxes"], expected["pred_boxes"])
