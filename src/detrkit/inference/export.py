"""Export a detector to TorchScript or ONNX and check the export against PyTorch.

The exported graph maps ``images float32 [B, 3, H, W]`` (ImageNet-normalised, zero-padded) and
``pixel_mask bool [B, H, W]`` (True on real pixels) to ``logits [B, Q, C]`` and ``boxes [B, Q, 4]``
(cxcywh normalised to the unpadded image, as :meth:`Detector.forward` returns them). Postprocessing
(softmax/top-k, scaling to pixels) stays outside the graph.

ONNX needs the ``onnx`` package (``pip install 'detrkit[export]'``; TorchScript-based exporter);
the parity check runs the file with ``onnxruntime`` when it is installed. Both exports are traced
once at an example ``height x width`` (by default the run's evaluation size, :func:`eval_size`) but
take any batch size, height and width: the ONNX inputs have dynamic axes ``batch``, ``height``,
``width``, and what depends on the input size (DETR's sine position embedding and masks, Deformable
DETR's level shapes, start indices, reference points and proposals) is computed from the input's
shape in the graph, not frozen at the tracing size. The check runs the file at the tracing size and
at a second size.

Only the DETR family (DETR, Deformable DETR, Co-Deformable-DETR, whose export is the plain
Deformable DETR) maps to this contract; :func:`check_exportable` refuses other models.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from detrkit.errors import ConfigError

FORMATS = ("onnx", "torchscript")


class ExportWrapper(nn.Module):
    """``(images [B,3,H,W], pixel_mask bool [B,H,W]) -> (logits [B,Q,C], boxes [B,Q,4] cxcywh)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images, pixel_mask)
        return out["pred_logits"], out["pred_boxes"]


@dataclass(frozen=True)
class ExportResult:
    """Where the model went and how far the export is from PyTorch on a random input."""

    path: Path
    format: str
    max_abs_diff_logits: float | None
    max_abs_diff_boxes: float | None
    checked_with: str | None  # "torch.jit" or "onnxruntime"; None when no runtime was available

    @property
    def max_abs_diff(self) -> float | None:
        if self.max_abs_diff_logits is None or self.max_abs_diff_boxes is None:
            return None
        return max(self.max_abs_diff_logits, self.max_abs_diff_boxes)


def example_inputs(
    batch: int = 1, height: int = 256, width: int = 320, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Random ``images [B,3,H,W]`` and a ``pixel_mask`` whose last image is padded on the right/bottom."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=gen)
    mask = torch.ones(batch, height, width, dtype=torch.bool)
    mask[-1, height * 3 // 4 :, :] = False
    mask[-1, :, width * 3 // 4 :] = False
    images[~mask[:, None].expand_as(images)] = 0
    return images, mask


def check_exportable(model: nn.Module, name: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``model`` is of the DETR family (see the module docstring).

    Args:
        model: the model (``inference_model()`` already applied or not).
        name: how the message names the model (default ``model <class name>``).
    """
    from detrkit.models.detr import DETR

    families: tuple[type, ...] = (DETR,)
    try:
        from detrkit.models.deformable_detr import DeformableDETR

        families = (DETR, DeformableDETR)
    except ImportError:  # an optional model module that could not be imported
        pass
    if not isinstance(model, families):
        raise ConfigError(
            f"{name or 'model ' + type(model).__name__} cannot be exported to ONNX/TorchScript: only the DETR and "
            "Deformable DETR families map to (images, pixel_mask) -> (logits, boxes); use the torch backend"
        )


def eval_size(transform: Callable[..., Any] | None, size_divisibility: int = 0) -> tuple[int, int]:
    """``(height, width)`` of a 480 x 640 (4:3 landscape) image after the evaluation ``transform``,
    rounded up to ``size_divisibility``: the default tracing size of an export (``(256, 320)``
    without a transform)."""
    if transform is None:
        return 256, 320
    from torchvision import tv_tensors

    from detrkit.data.transforms import make_target

    image = tv_tensors.Image(torch.zeros(3, 480, 640, dtype=torch.uint8))
    target = make_target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), (480, 640))
    out, _ = transform(image, target)
    h, w = (int(v) for v in out.shape[-2:])
    if size_divisibility > 1:
        h, w = (-(-v // size_divisibility) * size_divisibility for v in (h, w))
    return h, w


@contextlib.contextmanager
def _reference_ops() -> Iterator[None]:
    """Trace the pure-PyTorch multi-scale deformable attention: the Triton kernels
    (``DETRKIT_MS_DEFORM_ATTN=triton``) have no ONNX or TorchScript form."""
    from detrkit.models.ops.ms_deform_attn import BACKEND_ENV

    before = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = "torch"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = before


def export_model(
    model: nn.Module,
    out: str | Path,
    *,
    format: Literal["onnx", "torchscript"],
    height: int = 256,
    width: int = 320,
    opset: int = 17,
    check: bool = True,
) -> ExportResult:
    """Export ``model`` to ``out`` and compare the exported model with PyTorch on a random batch.

    Args:
        model: a :class:`~detrkit.models.base.Detector` (put in eval mode, on CPU); one with an
            ``inference_model()`` method is exported as what that returns. Frozen BatchNorm is
            folded into the convolutions of the exported graph
            (:func:`detrkit.models.fuse.fold_frozen_batchnorm`; ``model`` is unchanged).
        out: output file (``.onnx`` or ``.pt``/``.ts``).
        format: ``"onnx"`` or ``"torchscript"``.
        height, width: example input size used for tracing (B=2, the second padded); the
            exported model takes other sizes too.
        opset: ONNX opset version.
        check: run the exported model and report the max abs difference (over the tracing size
            and :func:`check_sizes`' second size).
    Raises:
        ConfigError: unknown format, a model outside the DETR family, or ``onnx`` requested
            without the ``onnx`` package.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    check_exportable(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "inference_model"):  # drop training-only parts (Co-DETR's auxiliary heads)
        model = model.inference_model()
    from detrkit.models.fuse import fold_frozen_batchnorm

    model, _ = fold_frozen_batchnorm(model.eval().cpu())  # one Conv node per conv + frozen BatchNorm
    wrapper = ExportWrapper(model.eval()).eval()
    with _reference_ops():
        return _export(wrapper, out, format, height, width, opset, check)


def _export(
    wrapper: ExportWrapper, out: Path, format: str, height: int, width: int, opset: int, check: bool
) -> ExportResult:
    images, mask = example_inputs(2, height, width)
    if format == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            traced = torch.jit.trace(wrapper, (images, mask), check_trace=False)
        with warnings.catch_warnings():
            # torch >= 2.9 deprecates TorchScript in favour of torch.export: the format still works
            # and is what `--format torchscript` asks for; ONNX is the recommended format.
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            traced.save(str(out))
            if not check:
                return ExportResult(out, format, None, None, None)
            loaded = torch.jit.load(str(out))
        with torch.no_grad():
            diffs = [_diffs(loaded(*x), wrapper(*x)) for x in _check_inputs(height, width)]
        return ExportResult(out, format, *_worst(diffs), "torch.jit")

    if importlib.util.find_spec("onnx") is None:
        raise ConfigError(
            "exporting to ONNX needs the 'onnx' package: pip install 'detrkit[export]' (or pip install onnx onnxruntime)"
        )
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(
            wrapper,
            (images, mask),
            str(out),
            input_names=["images", "pixel_mask"],
            output_names=["logits", "boxes"],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "pixel_mask": {0: "batch", 1: "height", 2: "width"},
                "logits": {0: "batch"},
                "boxes": {0: "batch"},
            },
        )
    if not check or importlib.util.find_spec("onnxruntime") is None:
        return ExportResult(out, format, None, None, None)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    diffs = []
    for images, mask in _check_inputs(height, width):
        with torch.no_grad():
            want = wrapper(images, mask)
        feed = {"images": images.numpy(), "pixel_mask": mask.numpy()}
        got = tuple(torch.from_numpy(a) for a in session.run(["logits", "boxes"], feed))
        diffs.append(_diffs(got, want))  # type: ignore[arg-type]
    return ExportResult(out, format, *_worst(diffs), "onnxruntime")


def check_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The sizes an export is checked at: the tracing size and one of another height and width
    (an export that froze the tracing size fails at the second)."""
    return [(height, width), (max(32, height * 3 // 4), width + max(32, width // 4))]


def _check_inputs(height: int, width: int) -> list[tuple[Tensor, Tensor]]:
    return [example_inputs(2, h, w, seed=1 + i) for i, (h, w) in enumerate(check_sizes(height, width))]


def _diffs(got: tuple[Tensor, Tensor], want: tuple[Tensor, Tensor]) -> tuple[float, float]:
    return tuple(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want, strict=True))  # type: ignore[return-value]


def _worst(diffs: list[tuple[float, float]]) -> tuple[float, float]:
    return max(d[0] for d in diffs), max(d[1] for d in diffs)
