"""ONNX export with dynamic height/width, and the Predictor's onnxruntime backend, against PyTorch."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import detrkit.inference.export as export_module
from detrkit.errors import ConfigError
from detrkit.inference.export import example_inputs, export_model
from detrkit.inference.onnx_backend import export_path
from detrkit.inference.predictor import Predictor
from detrkit.models.base import Detector
from detrkit.runs.restore import restore

from .conftest import CATEGORY_IDS, CLASS_NAMES

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

RUNS = ["fake_run", "fake_deformable_run"]


@pytest.fixture(scope="module", params=RUNS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A private copy of the run and ``detrkit export --json``'s summary; without ``--out`` the file
    goes where the onnxruntime backend caches it (``RUN/export/best.onnx``), so the predictor reuses it."""
    from detrkit.cli.main import main

    run = Path(
        shutil.copytree(request.getfixturevalue(request.param), tmp_path_factory.mktemp("exp") / "run")
    )
    stdout = io.StringIO()
    # the Triton kernels asked for (they cannot run on CPU tensors): the export traces the reference
    mp = pytest.MonkeyPatch()
    mp.setenv("DETRKIT_MS_DEFORM_ATTN", "triton")
    try:
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as info:
            main(["export", "--run", str(run), "--json"])
        assert os.environ["DETRKIT_MS_DEFORM_ATTN"] == "triton"  # restored after the export
    finally:
        mp.undo()
    assert info.value.code in (0, None)
    summary = json.loads(stdout.getvalue())
    assert (
        summary["path"]
        == str(run / "export" / "best.onnx")
        == str(export_path(run / "checkpoints" / "best.pt"))
    )
    return run, summary


def test_export_runs_at_other_sizes(exported: tuple[Path, dict]) -> None:
    run, summary = exported
    # the run's eval transform (shorter side 96, longer <= 160) on a 480x640 image gives 96x128
    assert summary["traced_at"] == [96, 128] and len(summary["checked_at"]) == 2
    assert summary["max_abs_diff_logits"] < 1e-4 and summary["max_abs_diff_boxes"] < 1e-4
    import onnx

    graph = onnx.load(summary["path"]).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"images": ["batch", 3, "height", "width"], "pixel_mask": ["batch", "height", "width"]}

    model = restore(run).model
    session = ort.InferenceSession(summary["path"], providers=["CPUExecutionProvider"])
    # batch 2: the second image padded on the right and bottom
    for seed, (batch, h, w) in enumerate([(2, 96, 128), (2, 160, 112), (1, 64, 96)]):
        images, mask = example_inputs(batch, h, w, seed=10 + seed)
        with torch.no_grad():
            ref = model(images, mask)
        logits, boxes = session.run(
            ["logits", "boxes"], {"images": images.numpy(), "pixel_mask": mask.numpy()}
        )
        assert logits.shape == tuple(ref["pred_logits"].shape) and logits.shape[:2] == (batch, 20)
        np.testing.assert_allclose(logits, ref["pred_logits"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(boxes, ref["pred_boxes"].numpy(), atol=1e-4, rtol=0)


def test_onnxruntime_predictor_equals_torch(exported: tuple[Path, dict], sample_images: list[Path]) -> None:
    run, summary = exported
    stamp = Path(summary["path"]).stat().st_mtime_ns
    torch_p = Predictor.from_run(run, device="cpu")
    ort_p = Predictor.from_run(run, backend="onnxruntime")
    assert ort_p.onnx_path == run / "export" / "best.onnx" == Path(summary["path"])
    assert ort_p.onnx_path.stat().st_mtime_ns == stamp  # the export newer than the checkpoint is reused
    assert ort_p.class_names == CLASS_NAMES and ort_p.category_ids == CATEGORY_IDS
    # three image sizes (none the tracing size), in one padded batch and one at a time
    for batch_size in (3, 1):
        want = torch_p.predict(sample_images, threshold=0.0, batch_size=batch_size)
        got = ort_p.predict(sample_images, threshold=0.0, batch_size=batch_size)
        assert sum(len(d) for d in want) >= 3 * 20  # threshold 0: every query, so nothing vacuous
        for g, w in zip(got, want, strict=True):
            assert g.source == w.source and g.image_size == w.image_size and len(g) == len(w)
            np.testing.assert_array_equal(g.labels, w.labels)
            np.testing.assert_allclose(g.scores, w.scores, atol=1e-4, rtol=0)
            np.testing.assert_allclose(g.boxes_xyxy, w.boxes_xyxy, atol=1e-4, rtol=0)


def test_export_is_cached_until_the_checkpoint_is_newer(
    fake_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Path(shutil.copytree(fake_run, tmp_path / "run"))
    calls: list[tuple[int, int]] = []
    real = export_module.export_model

    def counting(*args, **kwargs):
        calls.append((kwargs["height"], kwargs["width"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "export_model", counting)
    onnx_file = export_path(run / "checkpoints" / "best.pt")
    Predictor.from_run(run, backend="onnxruntime")
    assert calls == [(96, 128)] and onnx_file.is_file()  # traced at the run's eval size
    assert not [p for p in onnx_file.parent.iterdir() if p != onnx_file]  # no temporary left behind
    Predictor.from_checkpoint(run / "checkpoints" / "best.pt", backend="onnxruntime")
    assert len(calls) == 1  # reused
    stamp = onnx_file.stat().st_mtime
    os.utime(run / "checkpoints" / "best.pt", (stamp + 10, stamp + 10))  # a newer checkpoint
    Predictor.from_run(run, backend="onnxruntime")
    assert len(calls) == 2 and onnx_file.stat().st_mtime > stamp
    Predictor.from_run(run, checkpoint="last", backend="onnxruntime")  # another checkpoint, another file
    assert len(calls) == 3 and (run / "export" / "last.onnx").is_file()


class _NotDetr(Detector):
    """A detector outside the DETR family (stands in for the Faster R-CNN baselines)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, images, pixel_mask, targets=None):  # type: ignore[override]
        return {"detections": [self.conv(images)]}

    def postprocess(self, outputs, orig_sizes_hw):  # type: ignore[override]
        return []


def test_backend_errors_are_one_line(fake_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="cannot be exported to ONNX") as info:
        Predictor(model=_NotDetr(), class_names=CLASS_NAMES, category_ids=CATEGORY_IDS, backend="onnxruntime")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot be exported"):
        export_model(_NotDetr(), tmp_path / "x.onnx", format="onnx")
    with pytest.raises(ConfigError, match="--backend must be one of torch, onnxruntime"):
        Predictor.from_run(fake_run, backend="tensorrt")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a)
    )
    run = Path(shutil.copytree(fake_run, tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"needs the 'onnxruntime' package: pip install") as info:
        Predictor.from_run(run, backend="onnxruntime")
    assert "\n" not in str(info.value) and not (run / "export").exists()  # checked before exporting


def test_bare_model_exports_to_a_temporary_folder(fake_run: Path, sample_images: list[Path]) -> None:
    torch_p = Predictor.from_run(fake_run, device="cpu")
    ort_p = Predictor(
        model=torch_p.model,
        class_names=torch_p.class_names,
        category_ids=torch_p.category_ids,
        transform=torch_p.transform,
        backend="onnxruntime",
    )
    assert (
        ort_p.onnx_path is not None and ort_p.onnx_path.is_file() and fake_run not in ort_p.onnx_path.parents
    )
    got, want = (
        ort_p.predict(sample_images[0], threshold=0.0)[0],
        torch_p.predict(sample_images[0], threshold=0.0)[0],
    )
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4, rtol=0)
    folder = ort_p.onnx_path.parent
    del ort_p
    import gc

    gc.collect()
    assert not folder.exists()


def test_two_stage_refine_export_runs_at_other_sizes(tmp_path: Path) -> None:
    """Two-stage proposals (one anchor per encoder position) follow the input size too."""
    from detrkit.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("deformable-detr-tiny", num_classes=3, two_stage=True, with_box_refine=True).eval()
    result = export_model(model, tmp_path / "m.onnx", format="onnx", height=96, width=128, check=False)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for batch, h, w in [(2, 160, 112), (1, 64, 96)]:  # 64x96: a coarsest level one row high
        images, mask = example_inputs(batch, h, w, seed=3)
        with torch.no_grad():
            ref = model(images, mask)
        logits, boxes = session.run(
            ["logits", "boxes"], {"images": images.numpy(), "pixel_mask": mask.numpy()}
        )
        np.testing.assert_allclose(logits, ref["pred_logits"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(boxes, ref["pred_boxes"].numpy(), atol=1e-4, rtol=0)
