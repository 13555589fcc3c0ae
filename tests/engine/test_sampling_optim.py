"""Resumable/distributed batch order, seeded samples, parameter groups, schedules, freezing, EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detrkit.config import ModelConfig, OptimConfig
from detrkit.engine.ema import ModelEMA
from detrkit.engine.optim import apply_freezing, build_optimizer, lr_factor, param_groups
from detrkit.engine.sampling import EvalBatchSampler, ResumableBatchSampler, SeededDataset
from detrkit.errors import ConfigError


def _flat(batches: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    return [k for b in batches for k in b]


def test_order_depends_only_on_seed_and_epoch_and_resume_skips_consumed_batches() -> None:
    s = ResumableBatchSampler(23, 4, seed=5)
    s.set_epoch(3)
    full = list(s)
    assert len(full) == 5 and all(len(b) == 4 for b in full)  # 23 // 4, last partial dropped
    assert len({i for i, _ in _flat(full)}) == 20
    again = ResumableBatchSampler(23, 4, seed=5)
    again.set_epoch(3, start_batch=2)
    assert list(again) == full[2:] and len(again) == 3
    other = ResumableBatchSampler(23, 4, seed=5)
    other.set_epoch(4)
    assert list(other) != full


def test_two_processes_see_the_global_batch_of_one_process() -> None:
    one = ResumableBatchSampler(30, 6, seed=1)
    one.set_epoch(2)
    ranks = []
    for r in range(2):
        s = ResumableBatchSampler(30, 3, seed=1, rank=r, world_size=2)
        s.set_epoch(2)
        ranks.append(list(s))
    for b, big in enumerate(one):
        assert ranks[0][b] + ranks[1][b] == big  # same images and same per-sample seeds


def test_repeat_factor_weights_repeat_images() -> None:
    s = ResumableBatchSampler(4, 1, seed=0, weights=[1.0, 3.0, 1.0, 2.5], shuffle=False)
    idx = [i for i, _ in _flat(list(s))]
    assert idx.count(1) == 3 and idx.count(0) == 1 and idx.count(3) in (2, 3)


def test_eval_sampler_gives_every_process_the_same_number_of_batches() -> None:
    per_rank = [list(EvalBatchSampler(7, 2, rank=r, world_size=3)) for r in range(3)]
    assert [len(b) for b in per_rank] == [2, 2, 2]
    seen = {i for batches in per_rank for b in batches for i in b}
    assert seen == set(range(7))
    assert list(EvalBatchSampler(5, 2)) == [[0, 1], [2, 3], [4]]


class _RandomDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> float:
        return float(torch.rand(()))


def test_seeded_dataset_is_reproducible_and_leaves_global_rng_alone() -> None:
    ds = SeededDataset(_RandomDataset())
    torch.manual_seed(0)
    expected_next = torch.rand(())
    torch.manual_seed(0)
    a = ds[(1, 123)]
    assert ds[(2, 123)] == a and ds[(1, 124)] != a
    assert torch.rand(()) == expected_next  # the caller's stream did not move


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.backbone.layer1 = nn.Conv2d(4, 4, 1)
        self.backbone.layer2 = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(2)
        self.query = nn.Embedding(5, 4)


def test_param_groups_split_backbone_and_no_decay() -> None:
    net = _Net()
    cfg = OptimConfig(lr=1e-3, backbone_lr=1e-4, weight_decay=0.05)
    groups = {g["name"]: g for g in param_groups(net, cfg)}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["backbone"] == {
        id(net.backbone[0].weight),
        id(net.backbone.layer1.weight),
        id(net.backbone.layer2.weight),
    }
    assert id(net.backbone[1].weight) in ids["backbone_no_decay"]  # BatchNorm scale
    assert ids["head"] == {id(net.head.weight)}
    assert {id(net.norm.weight), id(net.query.weight), id(net.head.bias)} <= ids["head_no_decay"]
    assert groups["backbone"]["lr"] == 1e-4 and groups["head"]["lr"] == 1e-3
    assert groups["head"]["weight_decay"] == 0.05 and groups["head_no_decay"]["weight_decay"] == 0.0
    assert sum(len(g) for g in ids.values()) == len(list(net.parameters()))
    assert build_optimizer(net, cfg, device_type="cpu").defaults["fused"] is True
    assert build_optimizer(net, cfg, device_type="mps").defaults["foreach"] is True


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_adamw_implementations_equal_the_reference_loop(impl: str) -> None:
    # Same update from the fused CPU kernel, the foreach one and the plain loop, over a few steps
    # with weight decay on one group and not the other.
    torch.manual_seed(0)
    nets = {name: _Net() for name in ("loop", impl)}
    nets[impl].load_state_dict(nets["loop"].state_dict())
    start = [p.detach().clone() for p in nets[impl].parameters()]
    cfg = {name: OptimConfig(lr=1e-2, backbone_lr=1e-3, weight_decay=0.1, impl=name) for name in nets}
    opts = {name: build_optimizer(net, cfg[name], device_type="cpu") for name, net in nets.items()}
    x = torch.randn(3, 4)
    for _ in range(5):
        for name, net in nets.items():
            opts[name].zero_grad()
            out = net.norm(net.head(net.backbone.layer2(x[:, :, None, None]).flatten(1)))
            (out.square().sum() + net.query.weight.sum() + net.backbone[0].weight.sum()).backward()
            opts[name].step()
    for (n, a), (_, b) in zip(nets["loop"].named_parameters(), nets[impl].named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    moved = [not torch.equal(a, b) for a, b in zip(start, nets[impl].parameters(), strict=True)]
    used = [p.grad is not None for p in nets[impl].parameters()]
    assert moved == used and sum(used) >= 6  # every parameter with a gradient was updated


def test_freezing_backbone_stages_and_bn() -> None:
    net = _Net()
    frozen = apply_freezing(net, ModelConfig(freeze_backbone_stages=1, freeze_bn=True))
    assert "backbone.layer1.weight" in frozen and "backbone.layer2.weight" not in frozen
    assert "backbone.1.weight" in frozen  # BatchNorm affine
    assert not net.backbone.layer1.weight.requires_grad and net.backbone.layer2.weight.requires_grad
    assert all(g["name"] != "x" for g in param_groups(net, OptimConfig()))
    assert not any(
        p is net.backbone.layer1.weight for g in param_groups(net, OptimConfig()) for p in g["params"]
    )
    net2 = _Net()
    apply_freezing(net2, ModelConfig(freeze=["backbone"]))
    assert all(not p.requires_grad for n, p in net2.named_parameters() if "backbone" in n)
    with pytest.raises(ConfigError, match="model.freeze: 'neck' matches no parameter"):
        apply_freezing(_Net(), ModelConfig(freeze=["neck"]))


def test_lr_schedules_against_hand_values() -> None:
    warm = OptimConfig(schedule="constant", warmup_steps=10, warmup_start_factor=0.0)
    assert lr_factor(0, cfg=warm, steps_per_epoch=5, total_steps=50) == 0.0
    assert lr_factor(5, cfg=warm, steps_per_epoch=5, total_steps=50) == pytest.approx(0.5)
    assert lr_factor(10, cfg=warm, steps_per_epoch=5, total_steps=50) == 1.0
    step = OptimConfig(schedule="step", milestones=[2, 4], gamma=0.1)
    assert [
        lr_factor(s, cfg=step, steps_per_epoch=5, total_steps=30) for s in (9, 10, 19, 20)
    ] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    cos = OptimConfig(schedule="cosine", min_lr_ratio=0.0, warmup_steps=0)
    assert lr_factor(25, cfg=cos, steps_per_epoch=10, total_steps=100) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    assert lr_factor(100, cfg=cos, steps_per_epoch=10, total_steps=100) == pytest.approx(0.0)


def test_ema_follows_the_hand_formula() -> None:
    net = nn.Linear(1, 1, bias=False)
    nn.init.constant_(net.weight, 0.0)
    ema = ModelEMA(net, decay=0.5, warmup=0)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # 0.5 * 0 + 0.5 * 1
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net)  # 0.5 * 0.5 + 0.5 * 3
    assert ema.module.weight.item() == pytest.approx(1.75)
    ramp = ModelEMA(net, decay=0.9, warmup=10)
    ramp.updates = 10
    assert ramp.current_decay() == pytest.approx(0.9 * (1 - math.exp(-1)))
