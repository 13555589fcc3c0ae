"""The training loop on the test double: run folder, learning, faults, accumulation, preflight, EMA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from detrkit.errors import TrainingError
from detrkit.runs.checkpoint import inference_state_dict, load_checkpoint
from detrkit.runs.metrics import read_metrics_csv


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.unwrapped.state_dict().items()}


def test_fit_writes_the_run_folder_and_learns(conf, tmp_path: Path) -> None:
    cfg = conf.double_config(
        tmp_path / "run",
        train={"epochs": 4, "checkpoint_every": 2},
        output={"plots": True, "tensorboard": True},
    )
    summary = conf.make_trainer(cfg).fit()
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "env.json",
        "classes.json",
        "log.txt",
        "metrics.csv",
        "metrics.json",
        "plots/loss.png",
        "plots/ap.png",
    ):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == [
        "best.pt",
        "epoch_2.pt",
        "epoch_4.pt",
        "last.pt",
    ]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert json.loads((run / "classes.json").read_text()) == conf.CLASSES
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
    env = json.loads((run / "env.json").read_text())
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"].startswith(
        torch.__version__[:4]
    )
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train/loss"] < 0.7 * rows[0]["train/loss"]  # it learns
    assert rows[-1]["val/loss"] < rows[0]["val/loss"]
    assert {"val/AP", "val/AP50", "lr/head", "lr/backbone", "train/loss_bbox", "train/loss_ce"} <= set(
        rows[-1]
    )
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == max(range(4), key=lambda i: (rows[i]["val/AP"], -i)) + 1
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "ema",
        "epoch",
        "step",
        "rng",
        "config",
        "classes",
        "model_name",
        "metrics",
    ):
        assert key in last
    assert last["epoch"] == 4 and last["epoch_step"] == 0 and last["classes"] == conf.CLASSES
    assert last["step"] == 4 * 8 and summary["final"]["epoch"] == 4
    assert json.loads((run / "metrics.json").read_text())["best"] == pytest.approx(
        max(r["val/AP"] for r in rows)
    )
    # learning-rate groups follow the config: backbone at half the head's rate
    assert rows[0]["lr/backbone"] == pytest.approx(rows[0]["lr/head"] / 2)


def test_nonfinite_steps_are_skipped_then_abort(
    conf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINY_NAN_AT", "1")
    cfg = conf.double_config(tmp_path / "a", train={"epochs": 1, "preflight": False})
    trainer = conf.make_trainer(cfg, val=False)
    trainer._setup()
    trainer.loop.run_epoch  # noqa: B018 - built
    before = _weights(trainer)
    batch = next(iter(trainer.train_loader))
    res = trainer.runner.train_step([batch])  # forward call 1 -> NaN
    assert res["nonfinite"] == 1.0 and trainer.runner.nonfinite_total == 1
    after = _weights(trainer)
    assert all(
        torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k
    )
    assert all(p.grad is None for p in trainer.unwrapped.parameters())
    assert trainer.optimizer.state_dict()["state"] == {}  # AdamW never stepped
    res = trainer.runner.train_step([batch])
    assert res["nonfinite"] == 0.0 and trainer.runner.consecutive_nonfinite == 0

    monkeypatch.setenv("TINY_NAN_AT", ",".join(str(i) for i in range(3, 40)))
    cfg = conf.double_config(tmp_path / "b", train={"epochs": 2, "max_nonfinite": 3})
    with pytest.raises(TrainingError, match=r"3 non-finite losses in a row \(epoch 1"):
        conf.make_trainer(cfg, val=False).fit()

    monkeypatch.setenv("TINY_NAN_AT", "4,9")
    summary = conf.make_trainer(conf.double_config(tmp_path / "c"), val=False).fit()
    assert summary["nonfinite_steps"] == 2  # forward 1 is the preflight step; 4 and 9 are skipped


def test_grad_accumulation_equals_the_large_batch(conf, tmp_path: Path) -> None:
    common = {"epochs": 1, "max_steps_per_epoch": 3, "preflight": False}
    small = conf.make_trainer(
        conf.double_config(
            tmp_path / "s", train={**common, "batch_size": 4, "grad_accum": 2}, model={"freeze_bn": True}
        ),
        val=False,
    )
    small.fit()
    big = conf.make_trainer(
        conf.double_config(tmp_path / "b", train={**common, "batch_size": 8}, model={"freeze_bn": True}),
        val=False,
    )
    big.fit()
    a, b = _weights(small), _weights(big)
    assert small.runner.global_step == big.runner.global_step == 3
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a[k], conf.TinyDetector().state_dict()[k]) for k in a)


def test_channels_last_trains_the_same_weights(conf, tmp_path: Path) -> None:
    # NHWC is a memory layout only: the same steps give the same weights (up to float rounding of
    # a different convolution kernel), and the conv weights are channels-last during training.
    # Adam's eps 1 keeps the update proportional to the gradient: with the default 1e-8 a gradient
    # entry that is rounding noise around 0 moves its weight by +-lr either way.
    common = {"epochs": 1, "max_steps_per_epoch": 3, "preflight": False}
    optim = {"eps": 1.0, "lr": 0.5, "backbone_lr": 0.5}
    nhwc = conf.make_trainer(
        conf.double_config(tmp_path / "cl", train={**common, "channels_last": True}, optim=optim),
        val=False,
    )
    nhwc.fit()
    conv = nhwc.unwrapped.backbone[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    nchw = conf.make_trainer(conf.double_config(tmp_path / "cf", train=common, optim=optim), val=False)
    nchw.fit()
    a, b = _weights(nhwc), _weights(nchw)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a[k], conf.TinyDetector().state_dict()[k]) for k in a)


def test_preflight_leaves_the_run_unchanged_and_dry_run_stops(conf, tmp_path: Path) -> None:
    with_pf = conf.make_trainer(conf.double_config(tmp_path / "p", train={"epochs": 1}))
    report = with_pf.fit()["preflight"]
    without = conf.make_trainer(conf.double_config(tmp_path / "n", train={"epochs": 1, "preflight": False}))
    without.fit()
    a, b = _weights(with_pf), _weights(without)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert report["peak_memory_mb"] > 0 and report["peak_memory_kind"] == "process_max_rss"
    assert report["val_batch_AP50"] is not None and report["checkpoint_mb"] > 0
    assert not (tmp_path / "p" / "checkpoints" / ".preflight.pt").exists()

    dry = conf.make_trainer(conf.double_config(tmp_path / "d")).fit(dry_run=True)
    assert dry["dry_run"] and dry["preflight"]["loss"] > 0
    assert (
        not list((tmp_path / "d" / "checkpoints").glob("*.pt"))
        and not (tmp_path / "d" / "metrics.csv").exists()
    )


def test_ema_weights_are_kept_and_used_for_inference(conf, tmp_path: Path) -> None:
    cfg = conf.double_config(
        tmp_path / "e", train={"epochs": 2, "ema": True, "ema_decay": 0.9, "ema_warmup": 0}
    )
    trainer = conf.make_trainer(cfg)
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / "e" / "checkpoints" / "last.pt")
    assert ckpt["ema"]["updates"] == 16
    ema_w = inference_state_dict(ckpt)
    assert ema_w is ckpt["ema"]["module"]
    assert any(
        not torch.equal(ema_w[k], ckpt["model"][k])
        for k in ckpt["model"]
        if ckpt["model"][k].is_floating_point()
    )
    assert all(torch.equal(ema_w[k], v) for k, v in trainer.ema.module.state_dict().items())


def test_bf16_autocast_runs_on_cpu(conf, tmp_path: Path) -> None:
    cfg = conf.double_config(
        tmp_path / "bf", train={"epochs": 1, "precision": "bf16", "max_steps_per_epoch": 2}
    )
    summary = conf.make_trainer(cfg, val=False).fit()
    assert summary["final"]["train/loss"] > 0 and summary["nonfinite_steps"] == 0


def test_profile_writes_a_trace(conf, tmp_path: Path) -> None:
    cfg = conf.double_config(
        tmp_path / "prof",
        train={"epochs": 1, "profile": True, "profile_steps": 2},
        output={"tensorboard": True},
    )
    conf.make_trainer(cfg, val=False).fit()
    traces = list((tmp_path / "prof" / "profile").glob("*.pt.trace.json*"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000


def test_pretrained_loads_hugging_face_weights(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from detrkit.config import ModelConfig
    from detrkit.engine.builders import build_detector

    hf_cfg = transformers.DetrConfig(
        backbone="resnet18", use_pretrained_backbone=False, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        num_queries=10, num_labels=3,
    )  # fmt: skip
    hf = transformers.DetrForObjectDetection(hf_cfg)
    hf.save_pretrained(tmp_path / "hf")
    overrides = {"backbone": "resnet18", "return_layer": "layer4", "d_model": 64, "num_heads": 4, "num_encoder_layers": 2,
                 "num_decoder_layers": 2, "dim_feedforward": 128, "num_queries": 10}  # fmt: skip
    messages: list[str] = []
    model = build_detector(
        ModelConfig(name="detr-r18", overrides=overrides, pretrained=str(tmp_path / "hf")),
        num_classes=3,
        source="t",
        log=messages.append,
    )
    assert torch.equal(model.query_embed.weight, hf.model.query_position_embeddings.weight)
    assert messages and messages[0].startswith(f"pretrained weights from {tmp_path / 'hf'}")


def test_evaluation_does_not_touch_the_training_random_stream(conf, tmp_path: Path) -> None:
    """Iterating the val loader must leave the global RNG alone, so that ``eval.every`` does not
    change the dropout masks (and so the result) of the training steps that follow."""
    trainer = conf.make_trainer(conf.double_config(tmp_path / "r", train={"epochs": 1}))
    trainer._setup()  # builds the (Accelerate-prepared) loaders, as fit() does first
    state = torch.get_rng_state()
    assert sum(1 for _ in trainer.val_loader) > 0
    assert torch.equal(torch.get_rng_state(), state)
    assert sum(1 for _ in trainer.val_loader) > 0  # a second pass works too


def test_early_stopping_stops_after_patience_stale_validations(conf, tmp_path: Path) -> None:
    # an improvement of more than 1.0 AP is impossible: every validation after the first is stale
    cfg = conf.double_config(tmp_path / "run", train={"epochs": 6, "patience": 2, "min_delta": 1.0})
    summary = conf.make_trainer(cfg).fit()
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # epoch 1 sets the best, 2 and 3 are stale
    assert summary["stopped_early_at_epoch"] == 3 and summary["patience"] == 2
    aps = [r["val/AP"] for r in rows]
    assert summary["best"] == max(aps) and summary["best_epoch"] == 1 + aps.index(max(aps))
    assert summary["best_epoch"] >= 1  # only trained epochs are validated
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["stopped_early_at_epoch"] == 3
    assert "early stopping at epoch 3" in (tmp_path / "run" / "log.txt").read_text()
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best_epoch"]


def test_early_stopping_off_by_default_and_bad_values_are_config_errors(conf, tmp_path: Path) -> None:
    from detrkit.errors import ConfigError

    summary = conf.make_trainer(conf.double_config(tmp_path / "a", train={"epochs": 2})).fit()
    assert summary["stopped_early_at_epoch"] is None and summary["patience"] == 0
    with pytest.raises(ConfigError, match="train.patience"):
        conf.make_trainer(conf.double_config(tmp_path / "b", train={"patience": -1})).fit()


def test_on_epoch_end_hook_stops_the_run(conf, tmp_path: Path) -> None:
    seen = []

    def hook(epoch, row):
        seen.append((epoch, "val/AP" in row))
        return epoch < 2

    cfg = conf.double_config(tmp_path / "run", train={"epochs": 5})
    trainer = conf.make_trainer(cfg)
    trainer.on_epoch_end = hook  # what a sweep's pruner uses
    summary = trainer.fit()
    assert seen == [(1, True), (2, True)] and summary["stopped_early_at_epoch"] == 2


def test_auto_precision_follows_the_hardware(conf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.precision=auto``: bf16 + channels-last where ``fast_bf16`` says so, else fp32;
    the saved config records the choice."""
    import detrkit.devices
    from detrkit.config import load_config
    from detrkit.engine.builders import resolve_auto_precision

    for fast, expected in ((True, ("bf16", True)), (False, ("fp32", False))):
        monkeypatch.setattr(detrkit.devices, "fast_bf16", lambda device, fast=fast: fast)
        cfg = conf.double_config(tmp_path / f"auto{fast}", train={"precision": "auto"})
        resolve_auto_precision(cfg, torch.device("cpu"))
        assert (cfg.train.precision, cfg.train.channels_last) == expected
    cfg = conf.double_config(tmp_path / "fixed", train={"precision": "fp32"})
    resolve_auto_precision(cfg, torch.device("cpu"))  # explicit values are left alone
    assert cfg.train.precision == "fp32"
    monkeypatch.setattr(detrkit.devices, "fast_bf16", lambda device: True)
    cfg = conf.double_config(
        tmp_path / "run", train={"epochs": 1, "precision": "auto", "max_steps_per_epoch": 1}
    )
    conf.make_trainer(cfg, val=False).fit()
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.train.precision, saved.train.channels_last) == ("bf16", True)
