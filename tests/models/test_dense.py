"""Dense one-to-many class supervision of the encoder: the assignment by hand, the loss against
torchvision's focal loss, and that it trains without touching inference."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from detrkit.models.criterion import SetCriterion
from detrkit.models.dense import dense_class_targets
from detrkit.models.matcher import HungarianMatcher
from detrkit.models.registry import build_model

K = 5


def _grid_anchors() -> torch.Tensor:
    """One 4x4 level: centres 0.125, 0.375, 0.625, 0.875; position index = 4 * row + column."""
    c = torch.tensor([0.125, 0.375, 0.625, 0.875])
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    anchors = torch.stack([xs.flatten(), ys.flatten(), torch.full((16,), 0.1), torch.full((16,), 0.1)], -1)
    anchors[3] = 1.0  # row 0, column 3: a padded position
    return anchors[None]


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "labels": torch.tensor([2, 0, 4]),
            "boxes": torch.tensor(
                [
                    [0.375, 0.375, 0.5, 0.5],  # central region: column 1, row 1 only
                    [0.5, 0.5, 1.0, 1.0],  # columns and rows 1-2 (4 positions)
                    [0.86, 0.35, 0.02, 0.02],  # too small for any centre: gets its nearest (row 1, col 3)
                ]
            ),
        }
    ]


def test_assignment_by_hand() -> None:
    classes = dense_class_targets(_grid_anchors(), _targets(), num_classes=K)
    expected = torch.full((16,), K)
    expected[3] = -1  # ignored
    expected[[6, 9, 10]] = 0  # the large box
    expected[5] = 2  # in both boxes: the smaller one wins
    expected[7] = 4  # nearest to the tiny box
    assert classes.tolist() == [expected.tolist()]
    # a wider central region takes in more positions
    wide = dense_class_targets(_grid_anchors(), _targets(), num_classes=K, center_fraction=1.0)
    assert (wide[0] == 0).sum() > 3


def test_no_targets_gives_negatives_only() -> None:
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    classes = dense_class_targets(_grid_anchors(), empty, num_classes=K)
    assert (classes[0, 3] == -1) and (classes[0, torch.arange(16) != 3] == K).all()


def test_loss_equals_torchvision_focal_loss_over_valid_positions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 16, K)
    criterion = SetCriterion(
        num_classes=K, matcher=HungarianMatcher(class_cost="focal"), loss="focal", weight_dense=1.0
    )
    classes = dense_class_targets(_grid_anchors(), _targets(), num_classes=K)[0]
    valid = classes >= 0
    onehot = torch.zeros(16, K)
    for i, c in enumerate(classes.tolist()):
        if 0 <= c < K:
            onehot[i, c] = 1
    reference = tv_focal(logits[0][valid], onehot[valid], alpha=0.25, gamma=2.0, reduction="sum") / 3
    got = criterion.loss_dense(logits, _grid_anchors(), _targets(), torch.tensor(3.0))
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)


def test_dense_head_trains_and_is_training_only() -> None:
    with pytest.raises(ValueError, match="two_stage"):
        build_model("deformable-detr-tiny", num_classes=K, dense_weight=1.0)
    torch.manual_seed(0)
    model = build_model("deformable-detr-tiny", num_classes=K, two_stage=True, dense_weight=2.0).train()
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.5, 0.3, 0.2]])}] * 2
    out = model(images, mask, targets)
    assert out["enc_dense"]["pred_logits"].shape[-1] == K and out["loss_dense"] > 0
    without = {k: v for k, v in out.items() if k.startswith("loss_") and k != "loss_dense"}
    total = sum(
        model.criterion.weight_dict[k.split("_")[0] + "_" + k.split("_")[1]] * v for k, v in without.items()
    )
    torch.testing.assert_close(out["loss"].detach(), total + 2.0 * out["loss_dense"], rtol=1e-5, atol=1e-5)
    out["loss"].backward()
    assert model.dense_head.weight.grad.abs().sum() > 0
    assert "enc_dense" not in model.eval()(images, mask)
