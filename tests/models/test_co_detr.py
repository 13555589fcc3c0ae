"""Co-Deformable-DETR: each head's assignments on hand-built cases, positive queries and their
masks, losses and gradients, inference = Deformable DETR (state dict, outputs, ONNX), Hugging Face
weights, and a tiny overfit on shapes images."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from detrkit.models.co_detr.atss import atss_assign, centerness_targets
from detrkit.models.co_detr.neck import FixedStrideAnchors, memory_to_maps
from detrkit.models.co_detr.queries import pack_positive_queries
from detrkit.models.co_detr.rcnn import RCNNHead
from detrkit.models.deformable_layers import FlatLevels
from detrkit.models.registry import build_model


def _batch(size: int = 128):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=g)
    mask = torch.ones(2, size, size, dtype=torch.bool)
    images[1, :, :, 96:] = 0
    mask[1, :, 96:] = False
    targets = [
        {"boxes": torch.tensor([[0.4, 0.5, 0.3, 0.4], [0.7, 0.3, 0.2, 0.2]]), "labels": torch.tensor([2, 0])},
        {"boxes": torch.tensor([[0.5, 0.5, 0.5, 0.6]]), "labels": torch.tensor([1])},
    ]
    return images, mask, targets


def test_atss_assign_hand_built() -> None:
    # one level, 2x2 anchors of side 16 centred at (8, 8), (24, 8), (8, 24), (24, 24)
    centres = torch.tensor([[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0]])
    anchors = torch.cat([centres - 8, centres + 8], 1)
    # box 0 (centre 12, 12): candidates (8,8), (24,8), (8,24) with IoUs 144/368, 48/464, 48/464;
    # mean + std = 0.3656: only (8, 8) (IoU 0.391) is positive.
    # box 1 (centre 24, 10): candidates (24,8), (24,24), (8,8) with IoUs 224/352, 32/544, 28/548;
    # threshold 0.5845: only (24, 8) (IoU 0.636).
    gt = torch.tensor([[4.0, 4.0, 20.0, 20.0], [14.0, 2.0, 34.0, 18.0]])
    assert atss_assign(anchors, [4], gt, topk=3).tolist() == [0, 1, -1, -1]
    # the IoU clears the threshold but the anchor centre is outside the box: negative
    outside = torch.tensor([[9.0, 9.0, 30.0, 30.0]])  # (8, 8) is just outside
    got = atss_assign(anchors, [4], outside, topk=1)
    assert got[0] == -1
    # no boxes: all negative
    assert atss_assign(anchors, [4], torch.zeros(0, 4), topk=3).tolist() == [-1] * 4


def _atss_reference(anchors, counts, gt, topk):
    """Loops, per box and level (an independent reading of the ATSS paper)."""
    out = [-1] * len(anchors)
    best = [-1.0] * len(anchors)
    iou = lambda a, b: _iou(a, b)  # noqa: E731
    for j, g in enumerate(gt.tolist()):
        gc = ((g[0] + g[2]) / 2, (g[1] + g[3]) / 2)
        cand, start = [], 0
        for n in counts:
            idx = list(range(start, start + n))
            idx.sort(
                key=lambda i: math.dist(
                    gc, ((anchors[i][0] + anchors[i][2]) / 2, (anchors[i][1] + anchors[i][3]) / 2)
                )
            )
            cand += idx[:topk]
            start += n
        ious = [iou(anchors[i].tolist(), g) for i in cand]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for i, v in zip(cand, ious, strict=True):
            cx, cy = (anchors[i][0] + anchors[i][2]) / 2, (anchors[i][1] + anchors[i][3]) / 2
            inside = min(cx - g[0], cy - g[1], g[2] - cx, g[3] - cy) > 0.01
            if v >= mean + std and inside and v > best[i]:
                out[i], best[i] = j, v
    return out


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_atss_assign_matches_a_loop_reference_on_two_levels() -> None:
    gen = FixedStrideAnchors([(32.0,), (64.0,)], [(1.0,), (1.0,)], [8, 16])
    maps = [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)]
    anchors = gen(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), maps)[0]
    assert anchors.shape == (80, 4)
    assert torch.equal(anchors[9], torch.tensor([-8.0, -8.0, 24.0, 24.0]))  # (y=1, x=1), stride 8
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        xy = torch.rand(4, 2, generator=g) * 40
        wh = 6 + torch.rand(4, 2, generator=g) * 30
        gt = torch.cat([xy, xy + wh], 1)
        got = atss_assign(anchors, [64, 16], gt, topk=5)
        assert got.tolist() == _atss_reference(anchors, [64, 16], gt, 5)


def test_centerness_targets_by_hand() -> None:
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0]])  # centre (2, 2)
    gt = torch.tensor([[0.0, 0.0, 8.0, 4.0]])  # left 2 right 6, top 2 bottom 2
    assert torch.allclose(centerness_targets(anchors, gt), torch.tensor([math.sqrt(2 / 6 * 1.0)]))


def test_rcnn_head_positive_proposals_are_the_iou_05_matches() -> None:
    torch.manual_seed(0)
    head = RCNNHead(
        channels=8, num_classes=3, strides=[8, 16], roi_levels=2, roi_batch=512, representation=16
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 12.0], [30.0, 30.0, 50.0, 50.0]])
    proposals = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 100/120 with box 0: positive of 0
            [20.0, 20.0, 28.0, 28.0],  # IoU 0 with both: negative
            [0.0, 0.0, 10.0, 20.0],  # IoU 120/200 = 0.6 with box 0: positive of 0
            [32.0, 30.0, 50.0, 50.0],  # IoU 360/400 with box 1: positive of 1
            [30.0, 30.0, 60.0, 60.0],  # IoU 400/900 with box 1: negative
        ]
    )
    targets = [{"boxes": gt, "labels": torch.tensor([1, 3])}]
    sampled, matched, labels, _ = head.roi_heads.select_training_samples([proposals], targets)
    positive = labels[0] > 0
    got = sorted(
        (tuple(b.tolist()), int(m)) for b, m in zip(sampled[0][positive], matched[0][positive], strict=True)
    )
    want = sorted(
        [(tuple(gt[0].tolist()), 0), (tuple(gt[1].tolist()), 1)]  # the ground truth added as proposals
        + [(tuple(proposals[i].tolist()), j) for i, j in ((0, 0), (2, 0), (3, 1))]
    )
    assert got == want
    assert sorted(labels[0][positive].tolist()) == [1, 1, 1, 3, 3]
    # the whole head: losses finite, positives carry the RoI sampler's assignment
    maps = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    head.train()
    losses, positives = head(maps, ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_roi_cls", "loss_roi_box"}
    assert all(torch.isfinite(v) for _, v in losses.values())
    boxes, gt_idx = positives[0]
    assert len(boxes) >= 2 and set(gt_idx.tolist()) <= {0, 1}
    assert (torch.diag(_box_iou(boxes, gt[gt_idx])) >= 0.5).all()


def _box_iou(a, b):
    from torchvision.ops import box_iou

    return box_iou(a, b)


def test_pack_positive_queries_hand_built() -> None:
    targets = [
        {
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1]]),
            "labels": torch.tensor([2, 0]),
        },
        {"boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]), "labels": torch.tensor([1])},
    ]
    sizes = [(100, 200), (50, 50)]
    head_a = [
        (torch.tensor([[80.0, 40.0, 120.0, 60.0], [0.0, 0.0, 20.0, 10.0]]), torch.tensor([0, 1])),
        (torch.tensor([[0.0, 0.0, 50.0, 50.0]]), torch.tensor([0])),
    ]
    head_b = [
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)),
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)),
    ]
    q = pack_positive_queries([head_a, head_b], targets, sizes, num_classes=3, max_queries=10)
    assert q.group_sizes == [2, 1]  # head b has no positive: one padded query
    assert torch.allclose(q.boxes[0, 0], torch.tensor([0.5, 0.5, 0.2, 0.2]))
    assert torch.allclose(q.boxes[0, 1], torch.tensor([0.05, 0.05, 0.1, 0.1]))
    assert torch.allclose(q.boxes[1, 0], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert q.valid.tolist() == [[True, True, False], [True, False, False]]
    assert q.labels.tolist() == [[2, 0, 3], [1, 3, 3]]
    assert torch.equal(q.target_boxes[0, 1], targets[0]["boxes"][1])
    m = q.attn_mask[:, 0]
    assert m.shape == (2, 3, 3)
    assert m[0].tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    assert m[1].tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    many = [(torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(7, 1), torch.zeros(7, dtype=torch.int64))] * 2
    q = pack_positive_queries([many], targets, sizes, num_classes=3, max_queries=4)
    assert q.group_sizes == [4] and q.valid.all()


def test_positive_query_groups_do_not_see_each_other_or_padding() -> None:
    torch.manual_seed(0)
    model = build_model("co-deformable-detr-tiny", num_classes=3, dropout=0.0).eval()
    images, mask, _ = _batch()
    with torch.no_grad():
        _, out = model.forward_outputs(images, mask)
        d = model.transformer.d_model
        g = torch.Generator().manual_seed(1)
        tgt, pos = torch.randn(2, 5, d, generator=g), torch.randn(2, 5, d, generator=g)
        ref = torch.rand(2, 5, 4, generator=g) * 0.5 + 0.25
        attn = torch.zeros(2, 1, 5, 5, dtype=torch.bool)
        attn[:, :, :3, :3] = True  # group A: queries 0-2, group B: 3-4
        attn[:, :, 3:, 3:] = True
        attn[1, :, 2, :] = False  # image 1, query 2 is padding: only itself
        attn[1, :, :, 2] = False
        attn[1, :, 2, 2] = True
        h1, _ = model.transformer.decode(tgt, pos, ref, out.memory, out.levels, None, attn)
        tgt2, ref2 = tgt.clone(), ref.clone()
        tgt2[:, 3:] += 1.0  # change group B
        tgt2[1, 2] -= 1.0  # and the padded query
        ref2[:, 3:] = 0.3
        h2, _ = model.transformer.decode(tgt2, pos, ref2, out.memory, out.levels, None, attn)
    assert torch.allclose(h1[:, 0, :2], h2[:, 0, :2], atol=1e-6)  # group A, image 0
    assert torch.allclose(h1[:, 0, 2], h2[:, 0, 2], atol=1e-6)
    assert torch.allclose(h1[:, 1, :2], h2[:, 1, :2], atol=1e-6)  # image 1 without its padding
    assert not torch.allclose(h1[:, :, 3:], h2[:, :, 3:])


def test_memory_to_maps_round_trip() -> None:
    masks = [torch.ones(2, 4, 6, dtype=torch.bool), torch.ones(2, 2, 3, dtype=torch.bool)]
    levels = FlatLevels.from_masks(masks)
    maps = [torch.randn(2, 5, 4, 6), torch.randn(2, 5, 2, 3)]
    memory = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
    got = memory_to_maps(memory, levels)
    assert all(torch.equal(a, b) for a, b in zip(got, maps, strict=True))


def test_losses_finite_and_every_auxiliary_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = build_model("co-deformable-detr-tiny", num_classes=3).train()
    images, mask, targets = _batch()
    out = model(images, mask, targets)
    for key in ("loss_atss_cls", "loss_atss_bbox", "loss_atss_centerness", "loss_rpn_cls", "loss_rpn_box",
                "loss_roi_cls", "loss_roi_box", "loss_ce_q_atss", "loss_giou_q_rcnn", "loss_bbox_q_rcnn_0"):  # fmt: skip
        assert torch.isfinite(out[key]) and out[key] > 0, key
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    aux = [(n, p) for n, p in model.named_parameters() if n.startswith("co_heads.")]
    assert len(aux) > 20
    missing = [n for n, p in aux if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    # the weights: head losses scaled by 2 * decoder layers, positive-query losses by the criterion's
    plain = {
        k
        for k in out
        if k.startswith("loss_") and "_q_" not in k and not k.startswith(("loss_atss", "loss_r"))
    }
    extra = model.co_losses(images, mask, targets, model.forward_outputs(images, mask, targets)[1])
    assert extra["loss_atss_bbox"][0] == 2.0 * 2 * 2 and extra["loss_roi_cls"][0] == 4.0
    assert extra["loss_ce_q_atss"][0] == model.criterion.weight_dict["loss_ce"]
    assert plain  # the Deformable DETR losses are still there


def test_a_batch_without_boxes_still_trains() -> None:
    torch.manual_seed(0)
    model = build_model("co-deformable-detr-tiny", num_classes=3).train()
    images, mask, _ = _batch()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    out = model(images, mask, empty)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()


def test_inference_model_is_the_deformable_detr() -> None:
    torch.manual_seed(0)
    co = build_model("co-deformable-detr-tiny", num_classes=3)
    torch.manual_seed(0)
    plain = build_model("deformable-detr-tiny", num_classes=3)
    inference = co.inference_model()
    assert type(inference).__name__ == "DeformableDETR"
    assert list(inference.state_dict()) == list(plain.state_dict())
    assert all(
        torch.equal(a, b)
        for a, b in zip(inference.state_dict().values(), plain.state_dict().values(), strict=True)
    )
    assert any(k.startswith("co_heads.") for k in co.state_dict())
    images, mask, _ = _batch()
    co.eval(), plain.eval()
    with torch.no_grad():
        a, b, c = co(images, mask), plain(images, mask), inference(images, mask)
    assert set(a) == set(b)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], c["pred_boxes"])


def test_onnx_export_has_deformable_detr_parameters_only(tmp_path) -> None:
    pytest.importorskip("onnx")
    import onnx

    from detrkit.inference.export import export_model

    torch.manual_seed(0)
    co = build_model("co-deformable-detr-tiny", num_classes=3)
    torch.manual_seed(0)
    plain = build_model("deformable-detr-tiny", num_classes=3)
    res = export_model(co, tmp_path / "co.onnx", format="onnx", height=128, width=128)
    export_model(plain, tmp_path / "plain.onnx", format="onnx", height=128, width=128)
    if res.max_abs_diff is not None:
        assert res.max_abs_diff < 1e-3
    sizes = [sorted(int(torch.tensor(list(i.dims)).prod()) for i in onnx.load(str(p)).graph.initializer)
             for p in (tmp_path / "co.onnx", tmp_path / "plain.onnx")]  # fmt: skip
    assert sizes[0] == sizes[1]


def test_loads_hugging_face_deformable_detr_with_fresh_auxiliary_parts(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from detrkit.models.hf_weights import load_hf_weights

    cfg = transformers.DeformableDetrConfig(
        use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False, d_model=32, encoder_layers=1,
        decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, num_queries=20, num_labels=3, encoder_n_points=2, decoder_n_points=2, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.DeformableDetrForObjectDetection(cfg).eval()
    with torch.no_grad():  # informative weights (transformers zero-initialises several)
        g = torch.Generator().manual_seed(1)
        for name, p in hf.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.02 if ".backbone." in name else 0.1))
    hf.save_pretrained(tmp_path)
    torch.manual_seed(5)
    co = build_model("co-deformable-detr-tiny", num_classes=3, norm_groups=32, dropout=0.0)
    fresh = {k: v.clone() for k, v in co.state_dict().items() if k.startswith("co_heads.")}
    report = load_hf_weights(co, tmp_path)
    assert report["missing"] == [] and report["unexpected"] == []
    assert set(report["fresh"]) == set(fresh)
    assert all(torch.equal(co.state_dict()[k], v) for k, v in fresh.items())
    images, mask, _ = _batch()
    co.eval()
    with torch.no_grad():
        ref = hf(pixel_values=images, pixel_mask=mask.long())
        out = co(images, mask)
    err = (out["pred_logits"] - ref.logits).abs().max() / ref.logits.abs().max()
    assert err < 1e-4
    assert torch.allclose(out["pred_boxes"], ref.pred_boxes, atol=1e-4)


def test_registry_options_and_errors() -> None:
    model = build_model("co-deformable-detr-tiny", num_classes=2, rcnn=False, atss_weight=3.0)
    assert list(model.co_heads.heads) == ["atss"] and model.head_weights == {"atss": 3.0}
    with pytest.raises(ValueError, match="unknown Co-Deformable-DETR option"):
        build_model("co-deformable-detr-tiny", num_classes=2, no_such_option=1)
    with pytest.raises(ValueError, match="at least one auxiliary head"):
        build_model("co-deformable-detr-tiny", num_classes=2, rcnn=False, atss=False)


@pytest.mark.slow
def test_r50_is_the_papers_architecture() -> None:
    model = build_model("co-deformable-detr-r50", num_classes=80)
    assert model.two_stage and model.with_box_refine and model.transformer.num_queries == 300
    assert len(model.transformer.encoder_layers) == 6 and len(model.transformer.decoder_layers) == 6
    assert model.head_weights == {"rcnn": 12.0, "atss": 12.0} and model.max_pos_queries == 300
    assert model.transformer.decoder_layers[0].linear1.out_features == 2048


@pytest.mark.slow
def test_tiny_overfits_a_few_shapes_images(tmp_path) -> None:
    from detrkit.boxes import box_cxcywh_to_xyxy, box_iou
    from detrkit.data.collate import collate_detection
    from detrkit.data.dataset import CocoDetection
    from detrkit.data.shapes import generate_shapes

    paths = generate_shapes(tmp_path, train=3, val=0, size=128, seed=1)
    ds = CocoDetection(paths.train_ann, paths.train_images)
    batch = collate_detection([ds[i] for i in range(len(ds))])
    images, mask = batch.normalized(), batch.pixel_mask
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in batch.targets]
    torch.manual_seed(0)
    model = build_model("co-deformable-detr-tiny", num_classes=len(ds.class_names), backbone_norm="gn")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = None
    for _ in range(60):
        out = model(images, mask, targets)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        first = out["loss"].item() if first is None else first
    assert out["loss"].item() < 0.5 * first
    model.eval()
    with torch.no_grad():
        dets = model.postprocess(model(images, mask), torch.tensor([[128, 128]] * len(ds)))
    found = total = 0
    for det, t in zip(dets, targets, strict=True):
        gt = box_cxcywh_to_xyxy(t["boxes"]) * 128
        iou = box_iou(gt, det["boxes"][:10])[0]
        same = t["labels"][:, None] == det["labels"][None, :10]
        found += int(((iou > 0.5) & same).any(dim=1).sum())
        total += len(gt)
    assert found >= 0.7 * total, (found, total)
