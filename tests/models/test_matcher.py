"""Hungarian matcher vs SciPy on independently computed (NumPy) costs, and vs brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.special import expit, softmax

from detrkit.models.matcher import HungarianMatcher, focal_class_cost, match_cost_matrix


def _np_giou(a_cxcywh: np.ndarray, b_cxcywh: np.ndarray) -> np.ndarray:
    """Pairwise GIoU with plain NumPy loops over pairs (independent of detrkit.boxes)."""

    def corners(b):
        return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2

    out = np.zeros((len(a_cxcywh), len(b_cxcywh)))
    for i, a in enumerate(a_cxcywh):
        ax0, ay0, ax1, ay1 = corners(a)
        for j, b in enumerate(b_cxcywh):
            bx0, by0, bx1, by1 = corners(b)
            iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
            ih = max(0.0, min(ay1, by1) - max(ay0, by0))
            inter = iw * ih
            union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
            enc = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
            out[i, j] = inter / union - (enc - union) / enc
    return out


def _np_cost(logits, boxes, labels, tgt_boxes, *, focal, wc, wb, wg, alpha=0.25, gamma=2.0):
    """Cost ``[Q, T]`` of one image, in float64 NumPy."""
    if focal:
        p = expit(logits)
        neg = (1 - alpha) * p**gamma * -np.log(1 - p + 1e-8)
        pos = alpha * (1 - p) ** gamma * -np.log(p + 1e-8)
        c_class = (pos - neg)[:, labels]
    else:
        c_class = -softmax(logits, axis=-1)[:, labels]
    c_bbox = cdist(boxes, tgt_boxes, metric="cityblock")
    return wc * c_class + wb * c_bbox - wg * _np_giou(boxes, tgt_boxes)


def _random_batch(seed: int, b: int, q: int, c: int, sizes: list[int]):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, q, c, generator=g, dtype=torch.float64)
    boxes = torch.cat(
        [torch.rand(b, q, 2, generator=g) * 0.6 + 0.2, torch.rand(b, q, 2, generator=g) * 0.3 + 0.05], -1
    ).double()
    targets = []
    for n in sizes:
        tb = torch.cat(
            [torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], -1
        )
        # labels in 0..c-2: valid for "ce" (last logit = no object) and for "focal"
        targets.append({"boxes": tb.double(), "labels": torch.randint(0, c - 1, (n,), generator=g)})
    return logits, boxes, targets


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("focal", [False, True])
def test_assignment_equals_scipy_on_independent_costs(seed: int, focal: bool) -> None:
    sizes = [3, 0, 7, 1]
    logits, boxes, targets = _random_batch(seed, len(sizes), 10, 5, sizes)
    wc, wb, wg = 2.0, 5.0, 2.0
    matcher = HungarianMatcher(
        cost_class=wc, cost_bbox=wb, cost_giou=wg, class_cost="focal" if focal else "ce"
    )
    indices = matcher(logits, boxes, targets)
    assert len(indices) == len(sizes)
    for i, (t, (pi, ti)) in enumerate(zip(targets, indices, strict=True)):
        assert pi.dtype == torch.int64 and ti.dtype == torch.int64
        if sizes[i] == 0:
            assert pi.numel() == 0 and ti.numel() == 0
            continue
        cost = _np_cost(
            logits[i].numpy(),
            boxes[i].numpy(),
            t["labels"].numpy(),
            t["boxes"].numpy(),
            focal=focal,
            wc=wc,
            wb=wb,
            wg=wg,
        )
        rows, cols = linear_sum_assignment(cost)
        np.testing.assert_array_equal(pi.numpy(), rows)
        np.testing.assert_array_equal(ti.numpy(), cols)


def test_cost_matrix_matches_numpy() -> None:
    logits, boxes, targets = _random_batch(7, 2, 6, 4, [2, 3])
    labels = torch.cat([t["labels"] for t in targets])
    tboxes = torch.cat([t["boxes"] for t in targets])
    for focal in (False, True):
        cost = match_cost_matrix(
            logits,
            boxes,
            labels,
            tboxes,
            class_cost="focal" if focal else "ce",
            cost_class=1.5,
            cost_bbox=3,
            cost_giou=0.5,
        )
        assert cost.shape == (2, 6, 5) and cost.dtype == torch.float32
        for i in range(2):
            ref = _np_cost(
                logits[i].numpy(),
                boxes[i].numpy(),
                labels.numpy(),
                tboxes.numpy(),
                focal=focal,
                wc=1.5,
                wb=3,
                wg=0.5,
            )
            np.testing.assert_allclose(cost[i].numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_total_cost_is_minimal_vs_brute_force(seed: int) -> None:
    q, n = 5, 3
    logits, boxes, targets = _random_batch(100 + seed, 1, q, 3, [n])
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    ((pi, ti),) = matcher(logits, boxes, targets)
    cost = _np_cost(
        logits[0].numpy(),
        boxes[0].numpy(),
        targets[0]["labels"].numpy(),
        targets[0]["boxes"].numpy(),
        focal=False,
        wc=1,
        wb=5,
        wg=2,
    )
    ours = cost[pi.numpy(), ti.numpy()].sum()
    best = min(sum(cost[p, j] for j, p in enumerate(perm)) for perm in itertools.permutations(range(q), n))
    assert sorted(ti.tolist()) == list(range(n))
    assert len(set(pi.tolist())) == n
    assert ours == pytest.approx(best, abs=1e-9)


def test_match_layers_equals_per_layer_and_copies_once(monkeypatch: pytest.MonkeyPatch) -> None:
    layers = [_random_batch(s, 2, 8, 4, [2, 4])[:2] for s in range(3)]
    _, _, targets = _random_batch(0, 2, 8, 4, [2, 4])
    matcher = HungarianMatcher()
    per_layer = [matcher(lg, bx, targets) for lg, bx in layers]

    copies = []
    original_cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        copies.append(tuple(self.shape))
        return original_cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    together = matcher.match_layers(layers, targets)
    monkeypatch.undo()
    assert copies == [(3, 2, 8, 6)]
    for a, b in zip(per_layer, together, strict=True):
        for (p1, t1), (p2, t2) in zip(a, b, strict=True):
            assert torch.equal(p1, p2) and torch.equal(t1, t2)


def test_no_targets_anywhere_and_nonfinite_costs() -> None:
    logits = torch.randn(2, 4, 3)
    boxes = torch.rand(2, 4, 4) * 0.5 + 0.1
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out = HungarianMatcher()(logits, boxes, [empty, empty])
    assert all(p.numel() == 0 and t.numel() == 0 for p, t in out)
    logits[0, 0, 0] = float("nan")
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([0])}
    (p, t), _ = HungarianMatcher()(logits, boxes, [target, empty])
    assert p.numel() == 1 and t.tolist() == [0]


def test_focal_class_cost_hand_computed() -> None:
    logits = torch.tensor([[0.0, 2.0]])
    cost = focal_class_cost(logits, torch.tensor([1, 0]))
    p1, p0 = 1 / (1 + np.exp(-2.0)), 0.5
    ref1 = 0.25 * (1 - p1) ** 2 * -np.log(p1 + 1e-8) - 0.75 * p1**2 * -np.log(1 - p1 + 1e-8)
    ref0 = 0.25 * (1 - p0) ** 2 * -np.log(p0 + 1e-8) - 0.75 * p0**2 * -np.log(1 - p0 + 1e-8)
    np.testing.assert_allclose(cost.numpy(), [[ref1, ref0]], rtol=1e-6)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="class_cost"):
        HungarianMatcher(class_cost="bce")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not all 0"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
    with pytest.raises(ValueError, match="one per image"):
        HungarianMatcher()(torch.randn(2, 3, 3), torch.rand(2, 3, 4), [])
