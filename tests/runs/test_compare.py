"""``detrkit compare``: arms from configs minus seed/output, deltas, seed spread (Welch by hand)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml
from scipy import stats as sps

from detrkit.cli.main import main
from detrkit.errors import ConfigError
from detrkit.runs.compare import compare_runs
from detrkit.runs.folder import RunFolder

CLASSES = ["person", "car", "train", "cat"]


def make_run(
    root: Path, name: str, *, seed: int, synth: bool, ap: float, per_class: dict[str, float]
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = {
        "model": {"name": "detr-r50"},
        "train": {"seed": seed, "epochs": 10, "lr": 1e-5},
        "data": {"train_ann": "synth.json" if synth else "train.json"},
        "output": {"dir": str(run), "name": name},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "classes.json").write_text(json.dumps({"names": CLASSES, "category_ids": [1, 3, 7, 17]}))
    final = {"epoch": 10, "val/AP": ap, "val/AP50": 2 * ap, "val/AP75": ap / 2, "train/loss": 1.0}
    pcs = [
        {"category_id": i, "name": n, "AP": per_class.get(n, -1.0), "AP50": -1.0}
        for i, n in enumerate(CLASSES)
    ]
    (run / "metrics.json").write_text(json.dumps({"final": final, "per_class": pcs}))
    return run


def _welch_p(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    t = (mb - ma) / math.sqrt(se2)
    df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    return 2 * sps.t.sf(abs(t), df)


def test_seed_noise_is_not_called_a_gain(tmp_path: Path) -> None:
    # The users' case: +13% relative at ~0.5 AP points absolute, with a seed spread of ~0.5 points.
    base = [0.040, 0.035, 0.045]
    synth = [0.045, 0.041, 0.049]
    runs = [
        RunFolder.load(
            make_run(tmp_path, f"base_s{i}", seed=i, synth=False, ap=v, per_class={"person": 0.1, "train": v})
        )
        for i, v in enumerate(base)
    ]
    runs += [
        RunFolder.load(
            make_run(
                tmp_path,
                f"synth_s{i}",
                seed=i,
                synth=True,
                ap=v,
                per_class={"person": 0.1, "train": v + 0.05},
            )
        )
        for i, v in enumerate(synth)
    ]
    cmp = compare_runs(runs, rare=["train", "cat"])
    assert [len(a.runs) for a in cmp.arms] == [3, 3]
    assert cmp.arms[1].changes == {"data.train_ann": "synth.json"}
    rows = dict(cmp.rows)
    ap = rows["AP"][1]
    assert ap.mean == pytest.approx(100 * sum(synth) / 3)
    assert ap.delta == pytest.approx(100 * (sum(synth) - sum(base)) / 3)
    assert ap.rel == pytest.approx(sum(synth) / sum(base) - 1)
    assert 0.10 < ap.rel < 0.16
    assert ap.test == "welch"
    assert ap.p_value == pytest.approx(_welch_p([100 * v for v in base], [100 * v for v in synth]), rel=1e-9)
    assert ap.significant is False
    # rare mAP: mean over the rare classes that have GT (cat has none -> left out)
    rare = rows["rare mAP"][1]
    assert rare.mean == pytest.approx(100 * (sum(synth) / 3 + 0.05))
    assert rare.significant is True  # +5 points with the same small spread
    md = cmp.to_markdown()
    assert "| AP |" in md and "no (p=" in md and "yes (p=" in md


def test_single_runs_and_2sigma(tmp_path: Path) -> None:
    a = RunFolder.load(make_run(tmp_path, "a", seed=0, synth=False, ap=0.30, per_class={"car": 0.3}))
    b = RunFolder.load(make_run(tmp_path, "b", seed=0, synth=True, ap=0.31, per_class={"car": 0.31}))
    cmp = compare_runs([a, b])
    cell = dict(cmp.rows)["AP"][1]
    assert cell.significant is None and cell.test == ""
    assert "unknown (1 run per arm)" in cmp.to_markdown()
    b2 = RunFolder.load(make_run(tmp_path, "b2", seed=1, synth=True, ap=0.33, per_class={"car": 0.33}))
    cell = dict(compare_runs([a, b, b2]).rows)["AP"][1]
    # b-arm std = std([31, 33]) = 1.414 -> 2 sigma = 2.83 > |delta| = 2.0
    assert cell.test == "2sigma" and cell.significant is False


def test_cli_writes_markdown_and_csv(tmp_path: Path) -> None:
    r1 = make_run(tmp_path, "base", seed=0, synth=False, ap=0.2, per_class={"cat": 0.2})
    r2 = make_run(tmp_path, "synth", seed=0, synth=True, ap=0.25, per_class={"cat": 0.3})
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(r1), str(r2), "--rare", "cat", "--out", str(tmp_path / "ablation")])
    assert exc.value.code == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "ablation.csv").read_text())))
    cat = [r for r in rows if r["metric"] == "AP[cat]" and r["arm"] == "synth"][0]
    assert float(cat["mean"]) == pytest.approx(30.0) and float(cat["delta_abs"]) == pytest.approx(10.0)
    assert float(cat["delta_rel"]) == pytest.approx(0.5)
    assert "rare mAP" in (tmp_path / "ablation.md").read_text()


def test_user_errors(tmp_path: Path) -> None:
    r1 = make_run(tmp_path, "x", seed=0, synth=False, ap=0.2, per_class={"cat": 0.2})
    with pytest.raises(ConfigError, match="at least two"):
        compare_runs([RunFolder.load(r1)])
    r2 = make_run(tmp_path, "y", seed=1, synth=False, ap=0.2, per_class={"cat": 0.2})
    with pytest.raises(ConfigError, match="dog"):
        compare_runs([RunFolder.load(r1), RunFolder.load(r2)], rare=["dog"])
    (r2 / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="metrics.json"):
        compare_runs([RunFolder.load(r1), RunFolder.load(r2)])
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(r1), str(tmp_path / "nope")])
    assert exc.value.code == 2


def test_config_paths_resolve_against_the_training_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from detrkit.runs.folder import resolve_run_path, run_train_cwd

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "val.json").write_text("{}")
    run = project / "runs" / "r"
    run.mkdir(parents=True)
    (run / "env.json").write_text(json.dumps({"cwd": str(project)}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cwd = run_train_cwd(run)
    assert cwd == str(project)
    assert resolve_run_path("data/val.json", cwd) == project / "data" / "val.json"
    assert resolve_run_path("data/missing.json", cwd) == Path(
        "data/missing.json"
    )  # error names it as written
    assert resolve_run_path("", cwd) is None and run_train_cwd(elsewhere) is None
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "val.json").write_text("{}")
    assert resolve_run_path("data/val.json", cwd) == Path("data/val.json")  # found as written: used as is


def test_compare_skips_a_crashed_run_and_warns_on_other_val_sets(tmp_path: Path, capsys) -> None:
    pcs = {"person": 0.5, "car": 0.4}
    a = make_run(tmp_path, "a", seed=1, synth=False, ap=0.40, per_class=pcs)
    b = make_run(tmp_path, "b", seed=2, synth=False, ap=0.42, per_class=pcs)
    crashed = make_run(tmp_path, "crashed", seed=3, synth=True, ap=0.1, per_class=pcs)
    (crashed / "metrics.json").unlink()  # died before the first evaluation
    empty = tmp_path / "empty"  # died before writing config.yaml
    empty.mkdir()
    with pytest.raises(SystemExit) as info:
        main(["compare", str(a), str(crashed), str(empty), str(b), "--json"])
    assert info.value.code in (0, None)
    captured = capsys.readouterr()
    arms = json.loads(captured.out)["arms"]
    assert [r for arm in arms for r in arm["runs"]] == [str(a), str(b)]
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and str(crashed) in warnings[0] and str(empty) in warnings[1]
    assert "val sets" not in captured.err  # both runs: the same (default) val set

    for run, val in ((a, "val_a.json"), (b, "val_b.json")):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["data"]["val_ann"] = str(tmp_path / val)
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        main(["compare", str(a), str(b), "--json"])
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "different val sets" in line)
    assert "val_a.json (a)" in line and "val_b.json (b)" in line
