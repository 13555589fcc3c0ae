"""Losses against torchvision, SciPy-free hand computations and their defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from detrkit.aerial.losses import (
    AerialLoss,
    BoundaryWeightSchedule,
    DiceLoss,
    FocalLoss,
    boundary_loss,
    dice_loss,
    focal_loss,
    gsd_loss,
    signed_distance_map,
)


def test_focal_matches_torchvision() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=g) * 3
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.7).float()
    for alpha, gamma in ((0.25, 2.0), (0.5, 1.0), (-1.0, 0.0)):
        ref = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="mean")
        assert focal_loss(logits, target, alpha=alpha, gamma=gamma) == pytest.approx(float(ref), rel=1e-6)
    assert FocalLoss()(logits, target) == pytest.approx(float(focal_loss(logits, target)))


def test_dice_hand_computed() -> None:
    logits = torch.tensor([0.0, 0.0, 100.0, -100.0]).view(1, 1, 2, 2)  # p = .5, .5, 1, 0
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    # inter = .5 + 1 = 1.5; sum p = 2; sum t = 2; smooth 1 -> dice = 4/5
    assert float(dice_loss(logits, target)) == pytest.approx(1 - 4 / 5, abs=1e-6)
    assert float(DiceLoss(smooth=0.0)(logits, target)) == pytest.approx(1 - 3 / 4, abs=1e-6)
    perfect = torch.where(target > 0, 50.0, -50.0)
    assert float(dice_loss(perfect, target, smooth=0.0)) == pytest.approx(0.0, abs=1e-6)


def test_signed_distance_map_hand_values() -> None:
    mask = np.zeros((1, 9), dtype=bool)
    mask[0, 3:7] = True  # columns 3..6 inside
    sdm = signed_distance_map(mask, clip=32.0) * 32.0
    np.testing.assert_allclose(sdm[0], [3, 2, 1, 0, -1, -1, 0, 1, 2])
    assert not signed_distance_map(np.zeros((4, 4), bool)).any()
    assert not signed_distance_map(np.ones((4, 4), bool)).any()
    assert signed_distance_map(np.pad(np.ones((40, 40), bool), 40), clip=8).min() == pytest.approx(-1.0)


def test_boundary_loss_is_lowest_for_the_true_mask() -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:20, 10:24] = True
    sdm = torch.from_numpy(signed_distance_map(mask))[None, None]
    truth = torch.from_numpy(np.where(mask, 30.0, -30.0)).float()[None, None]
    losses = [float(boundary_loss(truth, sdm))]
    for shift in (1, 3, 6):
        losses.append(float(boundary_loss(torch.roll(truth, shift, dims=3), sdm)))
    assert losses[0] < min(losses[1:]) and losses[1] < losses[2] < losses[3]


def test_boundary_schedule_and_gsd_loss() -> None:
    s = BoundaryWeightSchedule(max_weight=2.0, start=1, ramp=4)
    assert [s(e) for e in range(7)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert float(
        gsd_loss(torch.log(torch.tensor([0.3, 1.0])), torch.log(torch.tensor([0.3, 0.5])))
    ) == pytest.approx(np.log(2) / 2)


def test_aerial_loss_combines_and_backpropagates() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 16, 16, generator=g, requires_grad=True)
    log_gsd = torch.zeros(2, requires_grad=True)
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    sdm = torch.from_numpy(np.stack([signed_distance_map(m[0].numpy() > 0) for m in mask]))[:, None]
    batch = {"mask": mask, "sdm": sdm, "log_gsd": torch.tensor([0.1, -1.0])}
    crit = AerialLoss(
        dice_weight=1.0,
        focal_weight=2.0,
        gsd_weight=0.5,
        boundary=BoundaryWeightSchedule(1.0, start=0, ramp=1),
    )
    out = crit({"logits": logits, "log_gsd": log_gsd}, batch)
    expected = out["loss_dice"] + 2 * out["loss_focal"] + 1.0 * out["loss_boundary"] + 0.5 * out["loss_gsd"]
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-6)
    out["loss"].backward()
    assert logits.grad is not None and log_gsd.grad is not None and logits.grad.abs().sum() > 0
    crit.set_epoch(0)
    assert crit.boundary_weight == 1.0
