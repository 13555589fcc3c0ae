"""Run a trained detector on images: ``Predictor.from_run(dir).predict("images/")``.

A :class:`Predictor` holds a :class:`~detrkit.models.base.Detector` in eval mode, its class names
and COCO category ids, and the run's evaluation transform (the ``val`` preset by default). Images
are preprocessed exactly as in validation (resize, ImageNet normalisation), batched with
:func:`~detrkit.data.collate.collate_detection` (zero padding + ``pixel_mask``), and the model's
:meth:`~detrkit.models.base.Detector.postprocess` maps boxes back to pixels of the *original*
images. Detections below ``threshold`` are dropped.

Two backends run the network between those steps: ``backend="torch"`` (the PyTorch model) and
``backend="onnxruntime"`` (the model exported to ONNX with dynamic batch, height and width, run in
an onnxruntime session; :mod:`detrkit.inference.onnx_backend`). A run's export is made on first
use at ``RUN/export/<checkpoint>.onnx``, traced at the run's evaluation size, and reused until the
checkpoint is newer; preprocessing and postprocessing are the same code for both, so their
detections agree to float precision (about 1e-6 on the tiny models).
"""

from __future__ import annotations

import glob as globlib
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from detrkit.data.images import IMAGE_SUFFIXES, load_image_rgb
from detrkit.devices import resolve_device
from detrkit.errors import DataError, ImageError
from detrkit.evaluation.results import coco_results
from detrkit.runs.restore import Restored, restore

ImageSource = Image.Image | str | Path | Sequence[Image.Image | str | Path]


@dataclass
class Detections:
    """Detections of one image.

    Attributes:
        boxes_xyxy: ``float32 [N, 4]`` xyxy in pixels of the original image.
        scores: ``float32 [N]``, descending.
        labels: ``int64 [N]`` contiguous labels ``0..K-1``.
        class_names: the model's ``K`` class names (``class_names[labels[i]]`` names detection i).
        image_size: ``(height, width)`` of the original image.
        source: the image file, when the image came from one.
    """

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    image_size: tuple[int, int]
    source: Path | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> list[str]:
        """Class name of each detection."""
        return [self.class_names[int(i)] for i in self.labels]

    def to_coco_results(self, image_id: int, category_ids: Sequence[int]) -> list[dict[str, Any]]:
        """COCO results entries ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

        Args:
            image_id: the COCO image id.
            category_ids: COCO category id of each contiguous label (``len == K``).
        """
        return coco_results(image_id, self.boxes_xyxy, self.scores, self.labels, category_ids, score_digits=6)


@dataclass
class Predictor:
    """A detector ready for inference (see the module docstring).

    Attributes:
        model: the :class:`Detector` (eval mode, on ``device``).
        class_names: ``K`` names of the contiguous labels.
        category_ids: ``K`` COCO category ids of the contiguous labels.
        transform: ``(image uint8 [3,H,W], target) -> (image, target)`` evaluation transform.
        size_divisibility: pad batches to a multiple of this (0: no rounding).
        device: where the network runs (the onnxruntime backend: its execution provider, ``cpu``
            or ``cuda``; the PyTorch model, kept for ``postprocess``, then stays on the CPU).
        backend: ``"torch"`` or ``"onnxruntime"``.
        onnx_path: the exported model for ``backend="onnxruntime"``; ``None``: :meth:`from_run`
            and :meth:`from_checkpoint` give the run's cached export, a predictor built otherwise
            exports ``model`` once to a temporary folder.
        precision: ``"fp32"``, ``"bf16"`` (autocast of the torch backend: several times faster on
            CPUs with AMX and on recent GPUs; scores differ from fp32 in the second or third
            digit) or ``"auto"`` (bf16 where :func:`detrkit.devices.fast_bf16` says so, else fp32).
        optimize: the torch backend runs an inference copy of the model with frozen BatchNorm
            folded into the convolutions (:func:`detrkit.models.fuse.fold_frozen_batchnorm`) in
            channels-last memory format (same outputs to float rounding; ``model`` is unchanged).
            The copy is made when the predictor is built: after changing ``model``'s weights, build
            a new predictor. The ONNX export (:func:`detrkit.inference.export.export_model`) always folds.
        compile: ``torch.compile`` the torch backend's network (inductor). Measured on DETR-R50 at
            2x384x512 on one CPU core: +37 % images/s in bf16 and +4 % in fp32, after a first call
            of 35-38 s, repeated for every new input shape; so it is off by default and pays off
            for long runs over images of one size (``bench/compile_check.py``).
    """

    model: nn.Module
    class_names: list[str]
    category_ids: list[int]
    transform: Callable[..., Any] | None = None
    size_divisibility: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "torch"
    onnx_path: Path | None = None
    precision: str = "fp32"
    optimize: bool = True
    compile: bool = False
    _onnx: Any = field(default=None, init=False, repr=False)
    _net: nn.Module | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from detrkit.inference.onnx_backend import OnnxRuntimeModel, check_backend

        check_backend(self.backend)
        if self.transform is None:
            from detrkit.data.transforms import build_transforms

            self.transform = build_transforms("val", train=False)
        self.precision = resolve_precision(self.precision, self.device if self.backend == "torch" else None)
        if self.backend == "torch":
            self.model.eval().to(self.device)
            self._net = inference_network(self.model) if self.optimize else self.model
            if self.compile:
                self._net = torch.compile(self._net)
            return
        self.model.eval().cpu()
        if self.onnx_path is None:  # no run folder: export once to a temporary folder
            from detrkit.inference.export import check_exportable, eval_size, export_model

            check_exportable(self.model)
            folder = tempfile.mkdtemp(prefix="detrkit-onnx-")
            weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
            height, width = eval_size(self.transform, self.size_divisibility)
            self.onnx_path = Path(folder) / "model.onnx"
            export_model(self.model, self.onnx_path, format="onnx", height=height, width=width, check=False)
        self._onnx = OnnxRuntimeModel(self.onnx_path, self.device)

    # ------------------------------------------------------------------------------ constructors

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        checkpoint: str = "best",
        device: str | torch.device | None = None,
        backend: str = "torch",
        **options: Any,
    ) -> Predictor:
        """Load ``run_dir/checkpoints/{checkpoint}.pt`` (``best`` falls back to ``last``);
        ``options``: ``precision``, ``optimize``, ``compile`` (see :class:`Predictor`)."""
        return cls.from_restored(
            restore(run_dir, which=checkpoint), device=device, backend=backend, **options
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        backend: str = "torch",
        **options: Any,
    ) -> Predictor:
        """Rebuild the model from a detrkit checkpoint (``model_name``, ``config``, ``classes``)."""
        return cls.from_restored(restore(path), device=device, backend=backend, **options)

    @classmethod
    def from_restored(
        cls,
        restored: Restored,
        *,
        device: str | torch.device | None = None,
        backend: str = "torch",
        precision: str = "fp32",
        optimize: bool = True,
        compile: bool = False,
    ) -> Predictor:
        """A predictor for what :func:`detrkit.runs.restore` rebuilt (the run's eval transform).

        Args:
            restored: the restored checkpoint.
            device: ``None``: the best device present for ``torch``, the CPU for ``onnxruntime``.
            backend: ``"torch"`` or ``"onnxruntime"`` (the run's ONNX export, made or refreshed
                here: :func:`detrkit.inference.onnx_backend.cached_onnx`).
            precision, optimize, compile: see :class:`Predictor`.
        Raises:
            ConfigError: an unknown backend; ``onnxruntime`` not installed; a model that cannot be
                exported; a device the backend cannot use.
        """
        from detrkit.inference.onnx_backend import cached_onnx, check_backend

        check_backend(backend)
        resolve_precision(precision, torch.device("cpu") if backend == "torch" else None)  # before exporting
        size_divisibility = restored.config.data.size_divisibility
        onnx_path = None
        if backend == "onnxruntime":
            from detrkit.inference.export import eval_size

            height, width = eval_size(restored.transform, size_divisibility)
            onnx_path = cached_onnx(
                restored.model,
                restored.path,
                height=height,
                width=width,
                name=restored.checkpoint.get("model_name"),
            )
        return cls(
            model=restored.model,
            class_names=list(restored.classes["names"]),
            category_ids=list(restored.classes["category_ids"]),
            transform=restored.transform,
            size_divisibility=size_divisibility,
            device=_backend_device(device, backend),
            backend=backend,
            onnx_path=onnx_path,
            precision=precision,
            optimize=optimize,
            compile=compile,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        size: int | None = None,
        backend: str = "torch",
        **options: Any,
    ) -> Predictor:
        """Hugging Face DETR / Deformable DETR weights (Hub id or local folder with ``config.json``).

        The architecture comes from ``config.json`` (:func:`detrkit.models.hf_weights.build_model_from_hf`),
        class names from its ``id2label``; the labels are the checkpoint's class indices and are
        used as category ids (for COCO checkpoints they *are* the COCO ids). ``size`` is the
        shorter side images are resized to (default 800, as these checkpoints were trained).
        ``backend="onnxruntime"`` exports the model to a temporary folder first.
        """
        from detrkit.data.transforms import build_transforms
        from detrkit.models.hf_weights import build_model_from_hf

        model = build_model_from_hf(name_or_path)
        names = [str(n) for n in (getattr(model, "class_names", None) or [])]
        if len(names) != model.num_classes:
            names = [f"class{i}" for i in range(model.num_classes)]
        return cls(
            model=model,
            class_names=names,
            category_ids=list(range(model.num_classes)),
            transform=build_transforms("val", train=False, size=size),
            device=_backend_device(device, backend),
            backend=backend,
            **options,
        )

    # ------------------------------------------------------------------------------ prediction

    def predict(
        self, images: ImageSource, *, threshold: float = 0.5, batch_size: int = 8
    ) -> list[Detections]:
        """Detect objects in one image, a list of images/paths, a folder or a glob pattern.

        Args:
            images: a PIL image, a path (file, folder or glob such as ``"imgs/*.jpg"``) or a list.
            threshold: minimum score kept.
            batch_size: images per forward pass.
        Returns:
            One :class:`Detections` per image, in input order (folders: sorted file names).
        """
        return [det for _, _, det in self.iter_predict(images, threshold=threshold, batch_size=batch_size)]

    def iter_predict(
        self,
        images: ImageSource,
        *,
        threshold: float = 0.5,
        batch_size: int = 8,
        skip_unreadable: bool = False,
    ) -> Iterator[tuple[Path | None, Image.Image | None, Detections | ImageError]]:
        """:meth:`predict` one batch at a time: yields ``(file or None, the RGB image as loaded,
        its Detections)`` in input order, so callers that draw or save need not load it again.

        With ``skip_unreadable``, a missing, corrupt or truncated file does not cost the others: it
        is yielded as ``(file, None, ImageError)`` and the rest of its batch runs as usual.
        """
        items = resolve_images(images)
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + batch_size]
            loaded: list[tuple[Image.Image | Path, Image.Image]] = []
            errors: dict[int, ImageError] = {}
            for k, item in enumerate(chunk):
                try:
                    loaded.append(
                        (item, load_image_rgb(item) if isinstance(item, Path) else item.convert("RGB"))
                    )
                except ImageError as err:
                    if not skip_unreadable:
                        raise
                    errors[k] = err
            good = [i for i, _ in loaded]
            pils = [im for _, im in loaded]
            dets = iter(zip(pils, self._predict_batch(good, pils, threshold), strict=True) if loaded else [])
            for k, item in enumerate(chunk):
                path = item if isinstance(item, Path) else None
                if k in errors:
                    yield path, None, errors[k]
                else:
                    im, det = next(dets)
                    yield path, im, det

    @torch.inference_mode()
    def _predict_batch(
        self, items: list[Image.Image | Path], pils: list[Image.Image], threshold: float
    ) -> list[Detections]:
        from detrkit.data.collate import collate_detection

        batch = collate_detection(
            [self.preprocess(im) for im in pils], size_divisibility=self.size_divisibility
        )
        device = self.device if self._onnx is None else torch.device("cpu")
        sizes_hw = torch.tensor([[im.height, im.width] for im in pils], device=device)
        batch = batch.to(device)
        results = self.run_model(batch.normalized(), batch.pixel_mask, sizes_hw)
        dets = []
        for item, im, r in zip(items, pils, results, strict=True):
            keep = r["scores"] >= threshold
            dets.append(
                Detections(
                    boxes_xyxy=r["boxes"][keep].float().cpu().numpy(),
                    scores=r["scores"][keep].float().cpu().numpy(),
                    labels=r["labels"][keep].cpu().numpy().astype(np.int64),
                    class_names=self.class_names,
                    image_size=(im.height, im.width),
                    source=item if isinstance(item, Path) else None,
                )
            )
        return dets

    @torch.inference_mode()
    def run_model(
        self, images: torch.Tensor, pixel_mask: torch.Tensor, orig_sizes_hw: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """The network (this predictor's backend) and the model's ``postprocess`` on a batch.

        Args:
            images: ``float32 [B, 3, H, W]`` normalised, zero-padded (:meth:`Batch.normalized`).
            pixel_mask: ``bool [B, H, W]``, True on real pixels.
            orig_sizes_hw: ``[B, 2]`` (height, width) the boxes are scaled to.
        Returns:
            ``B`` dicts ``{"scores", "labels", "boxes"}`` (xyxy pixels), unthresholded.
        """
        if self._onnx is not None:
            return self.model.postprocess(self._onnx(images, pixel_mask), orig_sizes_hw)
        net = self._net if self._net is not None else self.model
        if self.optimize:
            images = images.contiguous(memory_format=torch.channels_last)
        bf16 = self.precision == "bf16"
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = net(images, pixel_mask)
        if bf16:
            outputs = _to_float(outputs)
        return self.model.postprocess(outputs, orig_sizes_hw)

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, dict[str, Any]]:
        """PIL RGB -> ``(uint8 [3, h, w], target dict)`` through the eval transform (batches are
        normalised on the device, :meth:`detrkit.data.collate.Batch.normalized`)."""
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        from detrkit.data.transforms import make_target

        tensor = tv_tensors.Image(F.pil_to_tensor(image))
        target = make_target(
            torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), (image.height, image.width)
        )
        tensor, target = self.transform(tensor, target)
        return tensor.as_subclass(torch.Tensor), {"orig_size": (image.height, image.width)}


PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str, device: torch.device | None) -> str:
    """``"auto"`` -> ``"bf16"`` where bf16 is fast on ``device`` (None: the onnxruntime backend,
    always fp32), else ``"fp32"``; other values are checked and returned."""
    from detrkit.errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        from detrkit.devices import fast_bf16

        return "bf16" if device is not None and fast_bf16(device) else "fp32"
    if precision == "bf16" and device is None:
        raise ConfigError("precision=bf16 runs the torch backend only (onnxruntime runs the fp32 export)")
    return precision


def inference_network(model: nn.Module) -> nn.Module:
    """The network the torch backend runs: ``model`` with frozen BatchNorm folded into its
    convolutions (a copy sharing the other weights, made when the predictor is built: later changes
    to ``model``'s backbone weights are not seen), in channels-last memory format."""
    from detrkit.models.fuse import fold_frozen_batchnorm

    net, _ = fold_frozen_batchnorm(model)
    return net.eval().to(memory_format=torch.channels_last)


def _to_float(outputs: Any) -> Any:
    """Model outputs (tensors in dicts/lists) with floating tensors cast to float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float(v) for v in outputs)
    return outputs


def _backend_device(device: str | torch.device | None, backend: str) -> torch.device:
    """``None`` means the best device for ``torch`` and the CPU for ``onnxruntime`` (whose CUDA
    provider needs onnxruntime-gpu)."""
    if device is None and backend == "onnxruntime":
        return torch.device("cpu")
    return resolve_device(device)


def resolve_images(images: ImageSource) -> list[Image.Image | Path]:
    """Expand a path/folder/glob/list into PIL images and existing image files (sorted per folder)."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (str, Path)):
        return _expand(images)
    out: list[Image.Image | Path] = []
    for item in images:
        out.extend([item] if isinstance(item, Image.Image) else _expand(item))
    return out


def _expand(source: str | Path) -> list[Image.Image | Path]:
    p = Path(source)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        if not files:
            raise DataError(f"{p}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
        return list(files)
    if any(ch in str(source) for ch in "*?["):
        files = sorted(
            Path(f)
            for f in globlib.glob(str(source), recursive=True)
            if Path(f).suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataError(f"{source}: the pattern matches no image file")
        return list(files)
    raise DataError(f"{p}: no such image file or folder")
