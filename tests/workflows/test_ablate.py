"""``detrkit ablate`` plumbing on a tiny shapes run: arms, equal budget, synthetic extras, table, resume."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from detrkit.config import load_config
from detrkit.errors import ConfigError
from detrkit.synth.rare import SynthError
from detrkit.workflows.ablate import AblationSettings, arm_overrides, run_ablation, steps_per_epoch

TINY = [
    "data.shapes.train=24",
    "data.shapes.val=6",
    "data.shapes.size=64",
    "data.transform_args.size=64",
    "train.epochs=1",
    "train.batch_size=4",
    "eval.batch_size=6",
    "optim.warmup_steps=1",
    "train.preflight=false",
    "output.tensorboard=false",
    "output.plots=false",
]


def _last_step(run_dir) -> int:
    with open(run_dir / "metrics.csv") as f:
        return int(list(csv.DictReader(f))[-1]["step"])


@pytest.mark.slow
def test_arms_share_the_budget_and_the_table_has_rare_ap(tmp_path) -> None:
    cfg = load_config("demo", [f"data.shapes.out={tmp_path / 'shapes'}", *TINY])
    arms = ["copy-paste", "copy-paste-online", "rfs"]  # baseline is added first
    logs: list[str] = []

    def ablate() -> dict:
        return run_ablation(
            cfg,
            tmp_path / "abl",
            arms=arms,
            seeds=[3],
            rare=["star", "cross"],
            settings=AblationSettings(per_class=3, online_p=1.0),
            quiet=True,
            log=logs.append,
        )

    res = ablate()
    assert res["arms"] == ["baseline", *arms] and res["steps_per_epoch"] == 24 // 4
    runs = {a: [tmp_path / "abl" / "runs" / f"{a}-3"] for a in res["arms"]}
    assert {a: [str(p) for p in ps] for a, ps in runs.items()} == res["runs"]
    for arm, (run_dir,) in runs.items():
        meta = json.loads((run_dir / "ablation.json").read_text())
        assert meta["arm"] == arm and meta["seed"] == 3
        assert _last_step(run_dir) == 6  # the same number of optimizer steps for every arm
        assert json.loads((run_dir / "metrics.json").read_text())["per_class"]
    synth = json.loads((tmp_path / "abl" / "synth" / "copy-paste-3" / "annotations.json").read_text())
    assert len(synth["images"]) == 6  # 3 per rare class
    # Each arm is config overrides only: the saved configs differ exactly by them.
    configs = {a: yaml.safe_load((ps[0] / "config.yaml").read_text()) for a, ps in runs.items()}
    base_data = configs["baseline"]["data"]
    assert base_data["extra"] == [] and base_data["copy_paste"] is None and base_data["sampler"] == "random"
    (extra,) = configs["copy-paste"]["data"]["extra"]
    assert extra["ann"].endswith("copy-paste-{seed}/annotations.json")
    assert configs["copy-paste-online"]["data"]["copy_paste"]["classes"] == ["star", "cross"]
    assert configs["copy-paste-online"]["data"]["copy_paste"]["prob"] == 1.0
    assert (configs["rfs"]["data"]["sampler"], configs["rfs"]["data"]["rfs_threshold"]) == (
        "repeat_factor",
        0.3,
    )
    for arm, cfg_ in configs.items():
        changed = arm_overrides(
            arm,
            out_dir=tmp_path / "abl",
            rare=["star", "cross"],
            settings=AblationSettings(per_class=3, online_p=1.0),
        ).get("data", {})
        assert {k: v for k, v in cfg_["data"].items() if k not in changed} == {
            k: v for k, v in base_data.items() if k not in changed
        }, arm
        for key, value in changed.items():  # copy_paste is saved with its defaults filled in
            saved = cfg_["data"][key]
            assert (saved | value if isinstance(value, dict) else value) == saved != base_data[key], (
                arm,
                key,
            )
        assert {k: v for k, v in cfg_.items() if k not in ("data", "output")} == {
            k: v for k, v in configs["baseline"].items() if k not in ("data", "output")
        }
        assert json.loads((runs[arm][0] / "classes.json").read_text())["rare"] == ["star", "cross"]
    assert len({json.dumps(c["data"], sort_keys=True) for c in configs.values()}) == len(configs)
    table = (tmp_path / "abl" / "comparison.md").read_text()
    for needle in (
        "rare mAP",
        "AP[star]",
        "AP[cross]",
        "baseline-3",
        "copy-paste-online-3",
        "Rare classes: star, cross",
    ):
        assert needle in table
    assert "repeat_factor" in table
    assert "training baseline-3 (the config as given)" in logs
    assert "training rfs-3 (data.sampler=repeat_factor, data.rfs_threshold=0.3)" in logs
    # detrkit compare on the run folders alone (no ablation help) finds the same arms and rare classes.
    from detrkit.runs.compare import compare_runs
    from detrkit.runs.folder import RunFolder

    alone = compare_runs([RunFolder.load(p) for ps in runs.values() for p in ps])
    assert len(alone.arms) == 4 and alone.rare == ["star", "cross"]
    # Resuming: finished runs are kept, not trained again.
    before = (runs["rfs"][0] / "metrics.json").stat().st_mtime_ns
    logs.clear()
    ablate()
    assert (runs["rfs"][0] / "metrics.json").stat().st_mtime_ns == before
    assert sum("done before, kept" in m for m in logs) == 4


def test_bad_requests_fail_before_training(tmp_path) -> None:
    cfg = load_config("demo", [f"data.shapes.out={tmp_path / 'shapes'}", *TINY])
    with pytest.raises(ConfigError, match="unknown arm"):
        run_ablation(cfg, tmp_path / "x", arms=["baseline", "mixup"], seeds=[0], rare=["star"])
    with pytest.raises(SynthError, match="no class named 'starr'"):
        run_ablation(cfg, tmp_path / "x", arms=["baseline", "rfs"], seeds=[0], rare=["starr"])
    with pytest.raises(SynthError, match="--rare-k"):
        run_ablation(cfg, tmp_path / "x", arms=["baseline", "rfs"], seeds=[0])
    big = load_config("demo", ["train.batch_size=64"])
    with pytest.raises(ConfigError, match="larger than the 16 training images"):
        steps_per_epoch(big, 16)


@pytest.mark.slow
def test_a_stopped_run_continues_where_it_stopped(tmp_path) -> None:
    # A run stopped after epoch 1 of 2 (what the trainer leaves: last.pt of epoch 1, the rows so
    # far, no metrics.json) is resumed, not restarted, and ends exactly where the whole run ended.
    import shutil

    cfg = load_config(
        "demo",
        [f"data.shapes.out={tmp_path / 'shapes'}", *TINY, "train.epochs=2", "train.checkpoint_every=1"],
    )

    def ablate(out: str, logs: list[str]) -> None:
        run_ablation(  # two runs: the comparison needs two
            cfg,
            tmp_path / out,
            arms=["baseline", "rfs"],
            seeds=[1],
            rare=["star"],
            quiet=True,
            log=logs.append,
        )

    ablate("whole", [])
    shutil.copytree(tmp_path / "whole", tmp_path / "stopped")
    run = tmp_path / "stopped" / "runs" / "baseline-1"
    shutil.copy(run / "checkpoints" / "epoch_1.pt", run / "checkpoints" / "last.pt")
    (run / "metrics.json").unlink()
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    (run / "metrics.csv").write_text("".join(lines[:2]))
    logs: list[str] = []
    ablate("stopped", logs)
    assert any(m.startswith("resuming baseline-1") for m in logs)
    assert sum("done before, kept" in m for m in logs) == 1  # rfs-1
    rows = {}
    for out in ("whole", "stopped"):
        with open(tmp_path / out / "runs" / "baseline-1" / "metrics.csv") as f:
            rows[out] = list(csv.DictReader(f))
    assert [r["step"] for r in rows["stopped"]] == [r["step"] for r in rows["whole"]] == ["6", "12"]
    for key in ("train/loss", "val/AP", "val/AP50"):
        assert rows["stopped"][-1][key] == rows["whole"][-1][key], key


def test_combined_arms_merge_their_overrides(tmp_path) -> None:
    settings = AblationSettings(online_p=0.7, online_scale=(0.1, 2.0))
    both = arm_overrides("copy-paste-online+rfs", out_dir=tmp_path, rare=["star"], settings=settings)
    online = arm_overrides("copy-paste-online", out_dir=tmp_path, rare=["star"], settings=settings)
    rfs = arm_overrides("rfs", out_dir=tmp_path, rare=["star"], settings=settings)
    assert both["data"] == {**online["data"], **rfs["data"]}
    assert both["data"]["copy_paste"]["scale"] == [0.1, 2.0] and both["data"]["sampler"] == "repeat_factor"
    offline = arm_overrides("copy-paste+rfs", out_dir=tmp_path, rare=["star"], settings=settings)
    assert offline["data"]["extra"][0]["ann"] == str(
        tmp_path / "synth" / "copy-paste-{seed}" / "annotations.json"
    )
    for bad in ("rfs+mixup", "baseline+rfs", "rfs+rfs"):
        with pytest.raises(ConfigError, match="unknown arm"):
            arm_overrides(bad, out_dir=tmp_path, rare=["star"], settings=settings)


def test_no_baseline_trains_the_other_arms_and_compares_a_finished_baseline(tmp_path) -> None:
    # Two processes on one --out: one trains the baseline, the other (train_baseline=False) the
    # remedy. The second trains no baseline; its comparison has the baseline once it has finished.
    import shutil

    cfg = load_config("demo", [f"data.shapes.out={tmp_path / 'shapes'}", *TINY])
    kw = {"seeds": [0], "rare": ["star"], "quiet": True}
    logs: list[str] = []
    alone = run_ablation(cfg, tmp_path / "a", arms=["rfs"], train_baseline=False, log=logs.append, **kw)
    assert not any("baseline-0" in m for m in logs) and not (tmp_path / "a" / "runs" / "baseline-0").exists()
    assert alone["runs"] == {"baseline": [], "rfs": [str(tmp_path / "a" / "runs" / "rfs-0")]}
    both = run_ablation(cfg, tmp_path / "b", arms=["baseline"], log=logs.append, **kw)
    shutil.copytree(tmp_path / "b" / "runs" / "baseline-0", tmp_path / "a" / "runs" / "baseline-0")
    logs.clear()
    again = run_ablation(cfg, tmp_path / "a", arms=["rfs"], train_baseline=False, log=logs.append, **kw)
    assert sum("done before, kept" in m for m in logs) == 1  # rfs-0; the baseline is only read
    assert len(again["runs"]["baseline"]) == 1 and "baseline" in again["table"] and "rfs" in again["table"]
    assert both["steps_per_epoch"] == again["steps_per_epoch"]
