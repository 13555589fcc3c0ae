"""SetCriterion vs hand computation and vs Hugging Face transformers' DETR / Deformable DETR losses."""

from __future__ import annotations

import math

import pytest
import torch

from detrkit.models.criterion import SetCriterion, num_boxes_across_processes, sigmoid_focal_loss
from detrkit.models.matcher import HungarianMatcher


def _criterion(loss: str, num_classes: int, **kw) -> SetCriterion:
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2, class_cost=loss)
    weights = {"weight_ce": 1.0 if loss == "ce" else 2.0, "weight_bbox": 5.0, "weight_giou": 2.0}
    weights.update(kw)
    return SetCriterion(num_classes=num_classes, matcher=matcher, loss=loss, **weights)


def _one_target_case(num_logits: int):
    """Q=3 queries, one target matched to query 1 (box nearly equal, strong logit)."""
    logits = torch.tensor([[[0.2, -0.3, 1.0], [0.1, 2.5, -1.0], [-0.5, 0.3, 0.8]]])[..., :num_logits]
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.3], [0.8, 0.8, 0.1, 0.1]]])
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([1])}]
    return logits, boxes, targets


# Matched pair: pred [0.4, 0.35, 0.6, 0.65] (area 0.06), target [0.4, 0.4, 0.6, 0.6] (area 0.04):
# intersection 0.04, union 0.06, enclosing 0.06 -> GIoU 2/3; L1 = |0.3 - 0.2| = 0.1.
_L1, _GIOU_LOSS = 0.1, 1 - 2 / 3


def test_cross_entropy_losses_by_hand() -> None:
    logits, boxes, targets = _one_target_case(3)
    out = _criterion("ce", 2, eos_coef=0.1)({"pred_logits": logits, "pred_boxes": boxes}, targets)

    def nll(row, cls):
        return -(row[cls] - math.log(sum(math.exp(v) for v in row)))

    rows = logits[0].tolist()
    ce = (1.0 * nll(rows[1], 1) + 0.1 * nll(rows[0], 2) + 0.1 * nll(rows[2], 2)) / (1 + 0.1 + 0.1)
    assert out["loss_ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss_bbox"].item() == pytest.approx(_L1, rel=1e-5)
    assert out["loss_giou"].item() == pytest.approx(_GIOU_LOSS, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce + 5 * _L1 + 2 * _GIOU_LOSS, rel=1e-5)
    # argmax: query 0 -> no-object(2), query 1 -> class 1, query 2 -> no-object: 1 predicted, 1 target
    assert out["cardinality_error"].item() == 0.0


def test_focal_losses_by_hand() -> None:
    logits, boxes, targets = _one_target_case(2)
    out = _criterion("focal", 2)({"pred_logits": logits, "pred_boxes": boxes}, targets)

    def focal(x, t, alpha=0.25, gamma=2.0):
        p = 1 / (1 + math.exp(-x))
        ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        p_t = p * t + (1 - p) * (1 - t)
        return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma

    total = sum(focal(logits[0, q, k].item(), float(q == 1 and k == 1)) for q in range(3) for k in range(2))
    assert out["loss_ce"].item() == pytest.approx(total / 1.0, rel=1e-5)
    assert out["loss"].item() == pytest.approx(2 * total + 5 * _L1 + 2 * _GIOU_LOSS, rel=1e-5)
    # a query counts when its best sigmoid > 0.5, i.e. its best logit > 0 (all three here)
    n_pred = sum(max(logits[0, q].tolist()) > 0 for q in range(3))
    assert out["cardinality_error"].item() == abs(n_pred - 1)


def test_aux_losses_keys_and_weighted_total() -> None:
    logits, boxes, targets = _one_target_case(3)
    aux = [
        {"pred_logits": logits.flip(1), "pred_boxes": boxes.flip(1)},
        {"pred_logits": logits, "pred_boxes": boxes},
    ]
    crit = _criterion("ce", 2)
    out = crit({"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": aux}, targets)
    names = [f"loss_{n}{s}" for s in ("", "_0", "_1") for n in ("ce", "bbox", "giou")]
    assert set(names) <= set(out)
    # aux layer 1 equals the final layer; aux layer 0 is the same prediction with queries reversed
    for n in ("ce", "bbox", "giou"):
        assert torch.allclose(out[f"loss_{n}_1"], out[f"loss_{n}"])
        assert torch.allclose(out[f"loss_{n}_0"], out[f"loss_{n}"], atol=1e-6)
    expected = sum(w * out[f"{k}{s}"] for s in ("", "_0", "_1") for k, w in crit.weight_dict.items())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["loss"].requires_grad is False  # inputs do not require grad here
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")


def test_gradients_bf16_inputs_fp32_losses() -> None:
    logits = torch.randn(2, 5, 4, dtype=torch.bfloat16, requires_grad=True)
    boxes = (torch.rand(2, 5, 4) * 0.4 + 0.1).to(torch.bfloat16).requires_grad_()
    targets = [
        {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    for loss in ("ce", "focal"):
        lg = logits if loss == "ce" else logits[..., :3]
        out = _criterion(loss, 3)({"pred_logits": lg, "pred_boxes": boxes}, targets)
        assert out["loss"].dtype == torch.float32 and out["loss"].requires_grad
        assert torch.isfinite(out["loss"])
        assert not out["loss_ce"].requires_grad
        logits.grad = boxes.grad = None
        out["loss"].backward()
        assert logits.grad is not None and boxes.grad is not None and boxes.grad.abs().sum() > 0


def test_no_targets_clamps_num_boxes() -> None:
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    logits = torch.randn(1, 4, 3)
    out = _criterion("ce", 2)({"pred_logits": logits, "pred_boxes": torch.rand(1, 4, 4)}, [empty])
    ref = torch.nn.functional.cross_entropy(logits[0], torch.full((4,), 2))  # all no-object, equal weights
    assert out["loss_ce"].item() == pytest.approx(ref.item(), rel=1e-6)
    assert out["loss_bbox"].item() == 0.0 and out["loss_giou"].item() == 0.0
    assert num_boxes_across_processes(0, torch.device("cpu")).item() == 1.0
    assert num_boxes_across_processes(7, torch.device("cpu")).item() == 7.0


def test_sigmoid_focal_loss_alpha_negative_disables_weighting() -> None:
    x, t = torch.tensor([[0.3, -1.2]]), torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(x)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    ref = (ce * torch.stack([(1 - p[0, 0]) ** 2, p[0, 1] ** 2])).sum() / 2
    assert sigmoid_focal_loss(x, t, 2.0, alpha=-1).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_matches_transformers_losses(seed: int, loss: str) -> None:
    lfo = pytest.importorskip("transformers.loss.loss_for_object_detection")
    from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher, DeformableDetrImageLoss

    g = torch.Generator().manual_seed(seed)
    num_classes, b, q, n_layers = 4, 3, 12, 3
    c = num_classes + 1 if loss == "ce" else num_classes
    layers = [
        (torch.randn(b, q, c, generator=g), torch.rand(b, q, 4, generator=g) * 0.4 + 0.1)
        for _ in range(n_layers)
    ]
    targets = []
    for n in (3, 0, 5):
        tb = torch.rand(n, 4, generator=g) * 0.4 + 0.1
        targets.append({"boxes": tb, "labels": torch.randint(0, num_classes, (n,), generator=g)})
    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]

    if loss == "ce":
        hf_matcher = lfo.HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
        hf = lfo.ImageLoss(hf_matcher, num_classes, 0.1, ["labels", "boxes", "cardinality"])
    else:
        hf_matcher = DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
        hf = DeformableDetrImageLoss(hf_matcher, num_classes, 0.25, ["labels", "boxes", "cardinality"])
    hf_out = hf(
        {
            "logits": layers[-1][0],
            "pred_boxes": layers[-1][1],
            "auxiliary_outputs": [{"logits": lg, "pred_boxes": bx} for lg, bx in layers[:-1]],
        },
        hf_targets,
    )
    matcher = HungarianMatcher(cost_class=1 if loss == "ce" else 2, cost_bbox=5, cost_giou=2, class_cost=loss)
    ours = SetCriterion(num_classes=num_classes, matcher=matcher, loss=loss, eos_coef=0.1)(
        {
            "pred_logits": layers[-1][0],
            "pred_boxes": layers[-1][1],
            "aux_outputs": [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in layers[:-1]],
        },
        targets,
    )
    for key in (
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "cardinality_error",
        "loss_ce_0",
        "loss_bbox_1",
        "loss_giou_1",
    ):
        assert ours[key].item() == pytest.approx(float(hf_out[key]), rel=1e-5, abs=1e-6), key


def test_bad_arguments() -> None:
    m = HungarianMatcher()
    with pytest.raises(ValueError, match="loss must be"):
        SetCriterion(num_classes=2, matcher=m, loss="bce")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eos_coef"):
        SetCriterion(num_classes=2, matcher=m, eos_coef=2.0)
    with pytest.raises(ValueError, match="num_classes"):
        SetCriterion(num_classes=0, matcher=m)


def test_encoder_proposals_are_matched_class_agnostically() -> None:
    g = torch.Generator().manual_seed(3)
    targets = [
        {"boxes": torch.rand(2, 4, generator=g) * 0.4 + 0.1, "labels": torch.tensor([2, 1])},
        {"boxes": torch.rand(1, 4, generator=g) * 0.4 + 0.1, "labels": torch.tensor([0])},
    ]
    final = {
        "pred_logits": torch.randn(2, 6, 3, generator=g),
        "pred_boxes": torch.rand(2, 6, 4, generator=g) * 0.5 + 0.2,
    }
    enc = {
        "pred_logits": torch.randn(2, 6, 3, generator=g),
        "pred_boxes": torch.rand(2, 6, 4, generator=g) * 0.5 + 0.2,
    }
    crit = _criterion("focal", 3)
    out = crit({**final, "enc_outputs": enc}, targets)
    agnostic = [{"boxes": t["boxes"], "labels": torch.zeros_like(t["labels"])} for t in targets]
    ref = crit(enc, agnostic)
    for k in ("loss_ce", "loss_bbox", "loss_giou"):
        assert out[f"{k}_enc"].item() == pytest.approx(ref[k].item(), rel=1e-6)
    expected = crit(final, targets)["loss"] + ref["loss"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_training_step_syncs_once() -> None:
    import warnings

    from detrkit.models.registry import build_model

    model = build_model("detr-tiny", num_classes=3).cuda()
    images = torch.randn(2, 3, 128, 128, device="cuda")
    mask = torch.ones(2, 128, 128, dtype=torch.bool, device="cuda")
    targets = [
        {
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]], device="cuda"),
            "labels": torch.tensor([1], device="cuda"),
        }
    ] * 2
    model(images, mask, targets)["loss"].backward()  # warm-up (lazy CUDA initialisation)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught, torch.autocast("cuda", dtype=torch.bfloat16):
            warnings.simplefilter("always")
            out = model(images, mask, targets)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, [str(w.message) for w in syncs]  # the matcher's cost-matrix copy
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_one_to_many_matches_repeated_targets_by_hand() -> None:
    """Hybrid matching (k=2): one target, a group of 3 queries -> the 2 nearest queries are positives.

    o2m queries: q0 = the target box exactly, q1 = the target shifted by 0.1 in cx, q2 far away.
    The repeated targets [t, t] must be matched to q0 and q1; losses are normalised by k * 1 = 2.
    """
    logits, boxes, targets = _one_target_case(2)  # one-to-one group: the known case above
    o2m_logits = torch.tensor([[[0.0, 1.0], [0.5, -0.5], [-1.0, 0.2]]])
    o2m_boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]]])
    outputs = {
        "pred_logits": logits,
        "pred_boxes": boxes,
        "one_to_many": {"pred_logits": o2m_logits, "pred_boxes": o2m_boxes},
    }
    crit = _criterion("focal", 2, one_to_many_k=2, one_to_many_weight=0.5)
    out = crit(outputs, targets)
    # q1 box [0.5, 0.4, 0.7, 0.6] vs target [0.4, 0.4, 0.6, 0.6]: inter 0.02, union 0.06, enclosing
    # 0.06 -> GIoU 1/3; q0: GIoU 1, L1 0.
    assert out["loss_bbox_o2m"].item() == pytest.approx((0.0 + 0.1) / 2, abs=1e-6)
    assert out["loss_giou_o2m"].item() == pytest.approx((0.0 + (1 - 1 / 3)) / 2, abs=1e-6)
    onehot = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]])  # q0, q1 positive for class 1
    expected_ce = sigmoid_focal_loss(o2m_logits, onehot, 2.0).item()
    assert out["loss_ce_o2m"].item() == pytest.approx(expected_ce, rel=1e-6)
    # the one-to-one losses are those of the criterion without hybrid matching
    plain = _criterion("focal", 2)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        assert out[name].item() == pytest.approx(plain[name].item(), rel=1e-6)
    o2m_total = 2.0 * expected_ce + 5.0 * 0.05 + 2.0 * (1 - 1 / 3) / 2
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + 0.5 * o2m_total, rel=1e-5)
    # k = 0: the one-to-many group is ignored
    off = _criterion("focal", 2)(outputs, targets)
    assert "loss_ce_o2m" not in off and off["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-6)


def test_encoder_proposals_class_aware_one_to_many_by_hand() -> None:
    """Two-stage with ``enc_class_aware`` and ``enc_k=2``: one target (class 1), three proposals.

    Proposals: p0 = the target box exactly, p1 = shifted by 0.1 in cx, p2 far away. The repeated
    targets [t, t] go to p0 and p1, both positives of class 1 (not class 0), losses / (2 * 1).
    """
    logits, boxes, targets = _one_target_case(2)
    enc_logits = torch.tensor([[[0.0, 1.0], [0.5, -0.5], [-1.0, 0.2]]])
    enc_boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]]])
    outputs = {
        "pred_logits": logits,
        "pred_boxes": boxes,
        "enc_outputs": {"pred_logits": enc_logits, "pred_boxes": enc_boxes},
    }
    out = _criterion("focal", 2, enc_class_aware=True, enc_k=2)(outputs, targets)
    assert out["loss_bbox_enc"].item() == pytest.approx((0.0 + 0.1) / 2, abs=1e-6)
    assert out["loss_giou_enc"].item() == pytest.approx((0.0 + (1 - 1 / 3)) / 2, abs=1e-6)
    onehot = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]])
    assert out["loss_ce_enc"].item() == pytest.approx(
        sigmoid_focal_loss(enc_logits, onehot, 2.0).item(), rel=1e-6
    )
    # class-agnostic, one-to-one (the paper): only p0, as class 0
    plain = _criterion("focal", 2)(outputs, targets)
    onehot0 = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    assert plain["loss_ce_enc"].item() == pytest.approx(
        sigmoid_focal_loss(enc_logits, onehot0, 1.0).item(), rel=1e-6
    )
    assert plain["loss_bbox_enc"].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="enc_k"):
        _criterion("focal", 2, enc_k=0)


def test_select_proposals_by_best_class() -> None:
    from detrkit.models.deformable_transformer import select_proposals

    logits = torch.tensor([[[0.0, 3.0], [1.0, 0.0], [-1.0, -2.0]]])
    box_logits = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    assert torch.equal(select_proposals(logits, box_logits, 1), box_logits[:, 1:2])  # first class: p1
    assert torch.equal(select_proposals(logits, box_logits, 1, score="max"), box_logits[:, 0:1])  # best: p0
    with pytest.raises(ValueError, match="score"):
        select_proposals(logits, box_logits, 1, score="mean")
