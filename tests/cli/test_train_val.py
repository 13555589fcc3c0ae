"""``detrkit train`` / ``detrkit val`` end to end with the real detr-tiny on a tiny shapes dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detrkit.runs.checkpoint import load_checkpoint, transfer_weights

ENV_OVERRIDES = [
    "model.name=detr-tiny",  # the demo trains deformable-detr-tiny; these tests use the smaller DETR
    "model.overrides.loss=focal",
    "model.overrides.num_queries=30",
    "train.epochs=1",
    "train.batch_size=4",
    "eval.batch_size=4",
    "data.shapes.train=8",
    "data.shapes.val=4",
    "data.shapes.size=64",
    "data.transform_args.size=64",
    "optim.warmup_steps=1",
]


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    code = "import sys; from detrkit.cli.main import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"},
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cli")
    res = _cli(
        "train",
        "--config",
        "demo",
        f"data.shapes.out={root / 'shapes'}",
        f"output.dir={root / 'run'}",
        *ENV_OVERRIDES,
        "--json",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return root, json.loads(res.stdout)


@pytest.mark.slow
def test_train_cli_runs_detr_tiny_and_writes_the_run(tiny_run: tuple[Path, dict]) -> None:
    root, summary = tiny_run
    run = root / "run"
    assert summary["run_dir"] == str(run) and summary["epochs"] == 1
    assert summary["preflight"]["peak_memory_mb"] > 0
    final = summary["final"]
    assert final["train/loss"] > 0 and "val/AP50" in final and "train/loss_giou" in final
    assert any(k.startswith("train/loss_ce_") for k in final)  # per decoder layer losses
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["model_name"] == "detr-tiny" and len(ckpt["classes"]["names"]) == 8
    assert (root / "shapes" / "annotations" / "val.json").is_file()


@pytest.mark.slow
def test_val_cli_reevaluates_the_checkpoint(tiny_run: tuple[Path, dict]) -> None:
    root, summary = tiny_run
    res = _cli("val", "--run", str(root / "run"), "--checkpoint", "last", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["num_images"] == 4 and out["checkpoint"].endswith("last.pt")
    # the same weights on the same data give the same AP as the end-of-epoch validation
    assert out["metrics"]["AP"] == pytest.approx(summary["final"]["val/AP"], abs=1e-9)
    assert len(out["metrics"]["per_class"]) == 8
    table = _cli(
        "val",
        "--run",
        str(root / "run"),
        "--data",
        str(root / "shapes" / "annotations" / "val.json"),
        "--images",
        str(root / "shapes" / "val"),
    )
    assert table.returncode == 0 and "per class" in table.stdout and "AP50" in table.stdout


@pytest.mark.slow
def test_dry_run_and_user_errors(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny_run
    dry = _cli(
        "train",
        "--config",
        "demo",
        f"data.shapes.out={root / 'shapes'}",
        f"output.dir={tmp_path / 'dry'}",
        *ENV_OVERRIDES,
        "--dry-run",
        "--json",
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert json.loads(dry.stdout)["dry_run"] is True
    assert not list((tmp_path / "dry" / "checkpoints").glob("*.pt"))
    bad = _cli("train", "--config", "demo", "optim.lr=fast")
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "error: <command line>: optim.lr: expected a number, got 'fast'"
    )
    taken = _cli(
        "train", "--config", "demo", f"output.dir={root / 'run'}", f"data.shapes.out={root / 'shapes'}"
    )
    assert taken.returncode == 2 and "already holds a run; use --resume" in taken.stderr
    missing = _cli("val", "--run", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such run folder" in missing.stderr


@pytest.mark.slow
def test_init_from_transfers_matching_tensors(tiny_run: tuple[Path, dict]) -> None:
    from detrkit.models.registry import build_model

    root, _ = tiny_run
    bigger = build_model("detr-tiny", num_classes=8, loss="focal", num_queries=40)  # query table differs
    loaded, skipped = transfer_weights(bigger, root / "run")
    src = load_checkpoint(root / "run" / "checkpoints" / "best.pt")["model"]
    assert "query_embed.weight" in skipped and loaded
    for name in loaded:
        assert torch.equal(bigger.state_dict()[name], src[name])
