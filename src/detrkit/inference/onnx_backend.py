"""The ``onnxruntime`` backend of :class:`~detrkit.inference.predictor.Predictor`.

:func:`cached_onnx` exports a checkpoint's model once, with :func:`detrkit.inference.export.export_model`
(dynamic batch, height and width; traced at the run's evaluation size), to
``RUN/export/<checkpoint stem>.onnx`` and reuses that file until the checkpoint is newer than it.
:class:`OnnxRuntimeModel` runs the file and returns what the PyTorch model's forward returns for
inference (``pred_logits``, ``pred_boxes``), so the predictor's preprocessing and the model's own
``postprocess`` are shared by both backends.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detrkit.errors import ConfigError

BACKENDS = ("torch", "onnxruntime")


def check_backend(backend: str) -> None:
    """Raise :class:`ConfigError` for an unknown backend, or ``onnxruntime`` without its package
    (checked before anything is exported)."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime":
        missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"--backend onnxruntime needs the {' and '.join(repr(m) for m in missing)} package"
                f"{'s' if len(missing) > 1 else ''}: pip install 'detrkit[export]' (or pip install onnx onnxruntime)"
            )


def export_path(checkpoint: Path) -> Path:
    """Where the ONNX file of ``checkpoint`` is cached: ``RUN/export/<stem>.onnx`` for
    ``RUN/checkpoints/<stem>.pt``, else ``export/<stem>.onnx`` next to the checkpoint file."""
    base = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return base / "export" / f"{checkpoint.stem}.onnx"


def cached_onnx(
    model: nn.Module,
    checkpoint: Path,
    *,
    height: int,
    width: int,
    out: Path | None = None,
    name: str | None = None,
) -> Path:
    """The ONNX file of ``checkpoint``'s ``model``: exported (traced at ``height x width``) when
    missing or older than the checkpoint, reused otherwise.

    The file is written under a temporary name and renamed, so a concurrent reader never sees a
    half-written model.

    Args:
        model: the restored model (from :func:`detrkit.runs.restore`).
        checkpoint: its checkpoint file (compared by modification time).
        height, width: tracing size (the run's evaluation size).
        out: the file (default :func:`export_path`).
        name: how errors name the model (its registry name).
    Raises:
        ConfigError: the model cannot be exported, or the folder cannot be written.
    """
    from detrkit.inference.export import check_exportable, export_model

    out = export_path(checkpoint) if out is None else out
    if out.is_file() and out.stat().st_mtime >= checkpoint.stat().st_mtime:
        return out
    check_exportable(model, name=f"{checkpoint}: model {name or type(model).__name__!r}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".onnx", prefix=f".{out.stem}-", dir=out.parent)
    except OSError as err:
        raise ConfigError(f"{out.parent}: cannot write the ONNX export there ({err.strerror})") from None
    os.close(fd)
    try:
        export_model(model, tmp, format="onnx", height=height, width=width, check=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class OnnxRuntimeModel:
    """An exported detector in an ``onnxruntime.InferenceSession``.

    ``model(images float32 [B, 3, H, W], pixel_mask bool [B, H, W])`` returns
    ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}`` as CPU tensors, what the PyTorch
    model's ``postprocess`` reads. The session uses as many threads as PyTorch
    (``torch.get_num_threads()``).

    Args:
        path: the ``.onnx`` file.
        device: ``cpu`` (``CPUExecutionProvider``) or ``cuda[:N]`` (``CUDAExecutionProvider``,
            which needs the ``onnxruntime-gpu`` package).
    Raises:
        ConfigError: onnxruntime is missing, or has no provider for ``device``.
    """

    def __init__(self, path: str | Path, device: torch.device = torch.device("cpu")) -> None:
        check_backend("onnxruntime")
        import onnxruntime as ort

        self.path = Path(path)
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(
                    f"--device {device} with --backend onnxruntime needs onnxruntime-gpu "
                    f"(this onnxruntime has {', '.join(ort.get_available_providers())}); use --device cpu"
                )
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
        elif device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ConfigError(f"--device {device}: the onnxruntime backend runs on cpu or cuda only")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)

    def __call__(self, images: Tensor, pixel_mask: Tensor) -> dict[str, Tensor]:
        feed = {
            "images": images.detach().float().cpu().contiguous().numpy(),
            "pixel_mask": pixel_mask.detach().to(torch.bool).cpu().contiguous().numpy(),
        }
        logits, boxes = self.session.run(["logits", "boxes"], feed)
        return {"pred_logits": torch.from_numpy(logits), "pred_boxes": torch.from_numpy(boxes)}
