"""Contrastive denoising queries (DINO): the noise, the attention mask, the fixed assignment, that
matched queries do not see them, and their losses by hand."""

from __future__ import annotations

import pytest
import torch

from detrkit.boxes import box_cxcywh_to_xyxy
from detrkit.models.criterion import sigmoid_focal_loss
from detrkit.models.denoising import denoising_indices, make_denoising_queries
from detrkit.models.registry import build_model

K = 5


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "labels": torch.tensor([1, 2, 3]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2], [0.5, 0.4, 0.1, 0.1]]),
        },
        {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def test_groups_shapes_and_attention_mask_by_hand() -> None:
    dn = make_denoising_queries(_targets(), num_classes=K, num_queries=2, num_denoising=13)
    assert dn is not None
    assert (dn.groups, dn.slots, dn.num_queries) == (2, 3, 12)  # 13 // (2 * 3) groups of 2 * 3
    assert dn.labels.shape == (2, 12) and dn.box_logits.shape == (2, 12, 4)
    mask = dn.attn_mask
    assert mask.shape == (14, 14)
    # group 0 = queries 0-5, group 1 = 6-11, matched = 12-13
    assert mask[:6, :6].all() and mask[6:12, 6:12].all()
    assert not mask[:6, 6:12].any() and not mask[6:12, :6].any()
    assert mask[:12, 12:].all()  # groups see the matched queries
    assert not mask[12:, :12].any() and mask[12:, 12:].all()  # matched see only matched


def test_box_noise_bounds_and_label_noise() -> None:
    torch.manual_seed(0)
    n = 200
    boxes = torch.rand(n, 2) * 0.4 + 0.3
    boxes = torch.cat([boxes, torch.full((n, 2), 0.2)], 1)
    targets = [{"labels": torch.randint(0, K, (n,)), "boxes": boxes}]
    dn = make_denoising_queries(targets, num_classes=K, num_queries=1, num_denoising=4 * n, box_noise=0.5)
    assert dn is not None and dn.groups == 2
    noised = box_cxcywh_to_xyxy(dn.box_logits.sigmoid()).view(2, 2, n, 4)  # group, half, slot
    true = box_cxcywh_to_xyxy(boxes)
    move = (noised - true).abs() / (0.5 * 0.2 * 0.5)  # in units of lambda * half size
    assert move[:, 0].max() < 1 + 1e-3  # positives: less than lambda * half size
    assert move[:, 1].min() > 1 - 1e-3 and move[:, 1].max() < 2 + 1e-3  # negatives: 1x to 2x
    labels = dn.labels.view(2, 2, n)
    assert torch.equal(labels[:, 1], targets[0]["labels"].expand(2, n))  # negatives keep theirs
    changed = (labels[:, 0] != targets[0]["labels"]).float().mean()
    # flipped with probability 0.25, to one of K labels (the same one with probability 1 / K)
    assert 0.25 * (1 - 1 / K) - 0.06 < float(changed) < 0.25 * (1 - 1 / K) + 0.06


def test_no_targets_or_no_budget_gives_none() -> None:
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    assert make_denoising_queries(empty, num_classes=K, num_queries=3, num_denoising=10) is None
    assert make_denoising_queries(_targets(), num_classes=K, num_queries=3, num_denoising=0) is None


def test_fixed_assignment_by_hand() -> None:
    (q0, t0), (q1, t1) = denoising_indices([3, 1], groups=2, slots=3)
    assert q0.tolist() == [0, 1, 2, 6, 7, 8] and t0.tolist() == [0, 1, 2, 0, 1, 2]
    assert q1.tolist() == [0, 6] and t1.tolist() == [0, 0]


def _model(**extra):
    torch.manual_seed(0)
    return build_model(
        "deformable-detr-tiny",
        num_classes=K,
        num_queries=6,
        two_stage=True,
        with_box_refine=True,
        dropout=0.0,
        **extra,
    )


def test_matched_queries_do_not_see_the_denoising_queries() -> None:
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    with_dn, without = _model(num_denoising=12), _model()
    missing, unexpected = without.load_state_dict(with_dn.state_dict(), strict=False)
    assert unexpected == ["dn_label_embed.weight"] and not missing
    with_dn.train(), without.train()
    out = with_dn(images, mask, _targets())
    ref = without(images, mask, _targets())
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], ref["pred_boxes"], rtol=1e-5, atol=1e-5)
    for key in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_enc"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6)
    dn = out["denoising"]
    assert dn["groups"] == 2 and dn["pred_logits"].shape == (2, 12, K) and len(dn["aux_outputs"]) == 1
    assert "denoising" not in with_dn.eval()(images, mask)  # training only


def test_denoising_losses_by_hand() -> None:
    model = _model(num_denoising=12).train()
    targets = _targets()
    out = model(torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool), targets)
    dn = out["denoising"]
    logits, boxes = dn["pred_logits"].detach(), dn["pred_boxes"].detach()
    onehot = torch.zeros_like(logits)
    l1 = giou = 0.0
    from torchvision.ops import generalized_box_iou

    for b, t in enumerate(targets):
        for g in range(dn["groups"]):
            for j, (label, box) in enumerate(zip(t["labels"], t["boxes"], strict=True)):
                q = g * 2 * dn["slots"] + j
                onehot[b, q, label] = 1.0
                l1 += float((boxes[b, q] - box).abs().sum())
                pair = box_cxcywh_to_xyxy(torch.stack([boxes[b, q], box]))
                giou += 1 - float(generalized_box_iou(pair[:1], pair[1:]))
    norm = 4 * dn["groups"]  # 4 target boxes, 2 groups
    torch.testing.assert_close(
        out["loss_ce_dn"], sigmoid_focal_loss(logits, onehot, norm), rtol=1e-5, atol=1e-6
    )
    assert float(out["loss_bbox_dn"]) == pytest.approx(l1 / norm, rel=1e-5)
    assert float(out["loss_giou_dn"]) == pytest.approx(giou / norm, rel=1e-5)
    assert "loss_ce_dn_0" in out
    out["loss"].backward()
    assert model.dn_label_embed.weight.grad.abs().sum() > 0


def test_denoising_needs_two_stage_and_valid_noise() -> None:
    with pytest.raises(ValueError, match="two_stage"):
        build_model("deformable-detr-tiny", num_classes=K, num_denoising=10)
    with pytest.raises(ValueError, match="dn_label_noise"):
        _model(num_denoising=10, dn_label_noise=1.5)
