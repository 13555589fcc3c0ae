"""Export a detector to TorchScript or ONNX and check the export against PyTorch.

The exported graph maps ``images float32 [B, 3, H, W]`` (ImageNet-normalised, zero-padded) and
``pixel_mask bool [B, H, W]`` (True on real pixels) to ``logits [B, Q, C]`` and ``boxes [B, Q, 4]``
(cxcywh normalised to the unpadded image, as :meth:`Detector.forward` returns them). Postprocessing
(softmax/top-k, scaling to pixels) stays outside the graph.

ONNX needs the ``onnx`` package (``pip install 'detrkit[export]'``; TorchScript-based exporter);
the parity check runs the file with ``onnxruntime`` when it is installed. Both exports are traced at
the example ``height x width``: feed inputs padded to that size.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
            ``inference_model()`` method is exported as what that returns.
        out: output file (``.onnx`` or ``.pt``/``.ts``).
        format: ``"onnx"`` or ``"torchscript"``.
        height, width: example input size used for tracing and the check (B=2, the second padded).
        opset: ONNX opset version.
        check: run the exported model and report the max abs difference.
    Raises:
        ConfigError: unknown format, or ``onnx`` requested without the ``onnx`` package.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "inference_model"):  # drop training-only parts (Co-DETR's auxiliary heads)
        model = model.inference_model()
    wrapper = ExportWrapper(model.eval().cpu()).eval()
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
        check_images, check_mask = example_inputs(2, height, width, seed=1)
        with torch.no_grad():
            want = wrapper(check_images, check_mask)
            got = loaded(check_images, check_mask)
        return ExportResult(out, format, *_diffs(got, want), "torch.jit")

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
                "images": {0: "batch"},
                "pixel_mask": {0: "batch"},
                "logits": {0: "batch"},
                "boxes": {0: "batch"},
            },
        )
    if not check or importlib.util.find_spec("onnxruntime") is None:
        return ExportResult(out, format, None, None, None)
    import onnxruntime as ort

    check_images, check_mask = example_inputs(2, height, width, seed=1)
    with torch.no_grad():
        want = wrapper(check_images, check_mask)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = {"images": check_images.numpy(), "pixel_mask": check_mask.numpy()}
    got = tuple(torch.from_numpy(a) for a in session.run(["logits", "boxes"], feed))
    return ExportResult(out, format, *_diffs(got, want), "onnxruntime")


def _diffs(got: tuple[Tensor, Tensor], want: tuple[Tensor, Tensor]) -> tuple[float, float]:
    return tuple(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want, strict=True))  # type: ignore[return-value]
