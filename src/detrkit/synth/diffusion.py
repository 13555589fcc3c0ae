"""Draw a rare-class object into a box of a real image with Stable Diffusion inpainting.

``diffusers.StableDiffusionInpaintPipeline`` repaints a box chosen like a copy-paste spot (sized
like a real instance of the class, hiding at most ``max_cover`` of any object) from a prompt
(``"a photo of a {class}"`` by default). The model sees a square context crop around the box,
resized to ``resolution``; only the box's pixels are written back, so every pixel outside the box
is the original one. The new object is annotated with the box (box-only: no mask, since the model
decides the object's shape); objects it hides are shrunk or dropped as in copy-paste.

Needs the ``[diffusion]`` extra (``pip install detrkit[diffusion]``); ``--model`` is a Hub id or a
local folder saved with ``save_pretrained``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from detrkit.synth.copy_paste import PasteParams, SceneObject, add_to_scene, choose_position
from detrkit.synth.masks import LocalMask
from detrkit.synth.rare import SynthError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"


@dataclass(frozen=True)
class DiffusionParams:
    """Inpainting settings.

    Attributes:
        model: Hub id or local folder of an inpainting pipeline.
        prompt: prompt template; ``{class}`` is replaced by the class name.
        negative_prompt: what to steer away from.
        steps: denoising steps.
        guidance: classifier-free guidance scale.
        resolution: side of the square the model works at (multiple of 8).
        context: the crop around the box is ``context`` times the box's longer side.
        box_scale_range: jitter of the box size relative to a real instance of the class.
        min_box: the box's shorter side is at least this many pixels.
    """

    model: str = DEFAULT_MODEL
    prompt: str = "a photo of a {class}"
    negative_prompt: str = "blurry, distorted, low quality, text, watermark"
    steps: int = 30
    guidance: float = 7.5
    resolution: int = 512
    context: float = 2.0
    box_scale_range: tuple[float, float] = (0.8, 1.3)
    min_box: int = 24


def require_diffusers() -> Any:
    """Import ``diffusers`` or raise :class:`SynthError` saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise SynthError(
            "diffusers: not installed; --method diffusion needs it: pip install 'detrkit[diffusion]'"
        ) from None
    return diffusers


def load_inpaint_pipeline(
    model: str, *, device: str | None = None, half: bool | None = None, controlnet: str | None = None
) -> Any:
    """Load ``StableDiffusionInpaintPipeline`` from a Hub id or local folder (progress bar off).

    With ``controlnet`` (a Hub id or local folder of a ``ControlNetModel``) the pipeline is
    ``StableDiffusionControlNetInpaintPipeline`` over the same ``model``. ``half`` defaults to fp16
    on CUDA and fp32 elsewhere; ``device`` to CUDA when available.
    """
    import torch

    from detrkit.devices import resolve_device

    diffusers = require_diffusers()
    device = str(resolve_device(device))
    half = device.startswith("cuda") if half is None else half
    # diffusers renamed `torch_dtype` to `dtype` (the old name warns); pass the one it knows.
    from diffusers.utils import deprecation_utils

    dtype_key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    dtype = {dtype_key: torch.float16 if half else torch.float32}
    extra: dict[str, Any] = {}
    cls = diffusers.StableDiffusionInpaintPipeline
    if controlnet is not None:
        try:
            extra["controlnet"] = diffusers.ControlNetModel.from_pretrained(controlnet, **dtype)
        except (OSError, ValueError) as err:
            raise SynthError(f"{controlnet}: cannot load a ControlNet ({_first_line(err)})") from None
        cls = diffusers.StableDiffusionControlNetInpaintPipeline
    try:
        pipe = cls.from_pretrained(
            model, safety_checker=None, requires_safety_checker=False, **dtype, **extra
        )
    except (OSError, ValueError) as err:
        raise SynthError(f"{model}: cannot load an inpainting pipeline ({_first_line(err)})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def context_crop(
    box_xyxy: tuple[int, int, int, int], image_hw: tuple[int, int], context: float
) -> tuple[int, int, int]:
    """Square crop ``(x0, y0, side)`` holding the box, ``context`` times its longer side, in the image."""
    height, width = image_hw
    x0, y0, x1, y1 = box_xyxy
    longest = max(x1 - x0, y1 - y0)
    side = int(min(min(height, width), max(longest, round(longest * context))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cx0 = int(np.clip(round(cx - side / 2), max(0, x1 - side), min(x0, width - side)))
    cy0 = int(np.clip(round(cy - side / 2), max(0, y1 - side), min(y0, height - side)))
    return cx0, cy0, side


def inpaint_box(
    pipe: Any,
    image: np.ndarray,
    box_xyxy: tuple[int, int, int, int],
    prompt: str,
    *,
    params: DiffusionParams,
    seed: int,
    control: np.ndarray | None = None,
    conditioning_scale: float = 1.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Repaint ``box_xyxy`` of ``uint8 [H, W, 3]``; returns the new image and the call's details.

    ``control``: a ``uint8 [H, W, 3]`` ControlNet condition aligned with ``image`` (a ControlNet
    pipeline); it is cropped and resized (nearest) like the image. Only the box's pixels differ
    from ``image`` in the result.
    """
    import torch

    x0, y0, x1, y1 = box_xyxy
    cx0, cy0, side = context_crop(box_xyxy, image.shape[:2], params.context)
    res = params.resolution
    crop = Image.fromarray(image[cy0 : cy0 + side, cx0 : cx0 + side]).resize((res, res), Image.BICUBIC)
    mask = np.zeros((side, side), dtype=np.uint8)
    mask[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0] = 255
    mask_image = Image.fromarray(mask).resize((res, res), Image.NEAREST)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    extra: dict[str, Any] = {}
    if control is not None:
        crop_control = control[cy0 : cy0 + side, cx0 : cx0 + side]
        extra["control_image"] = Image.fromarray(crop_control).resize((res, res), Image.NEAREST)
        extra["controlnet_conditioning_scale"] = conditioning_scale
    result = pipe(
        prompt=prompt,
        negative_prompt=params.negative_prompt or None,
        image=crop,
        mask_image=mask_image,
        height=res,
        width=res,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance,
        generator=generator,
        output_type="pil",
        **extra,
    ).images[0]
    painted = np.asarray(result.convert("RGB").resize((side, side), Image.BICUBIC))
    out = image.copy()
    out[y0:y1, x0:x1] = painted[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
    return out, {"context_crop": [cx0, cy0, side, side], "seed": seed}


def choose_box(
    scene: list[SceneObject],
    image_hw: tuple[int, int],
    like_wh: tuple[float, float],
    rng: np.random.Generator,
    params: DiffusionParams,
    paste: PasteParams,
) -> tuple[int, int, int, int] | None:
    """A box sized like ``like_wh`` (jittered, clamped to the image) where it hides at most
    ``paste.max_cover`` of any object (best of ``paste.attempts`` tries); None if it cannot fit."""
    height, width = image_hw
    s = float(rng.uniform(*params.box_scale_range))
    w = int(min(round(like_wh[0] * s), width * paste.max_size_frac))
    h = int(min(round(like_wh[1] * s), height * paste.max_size_frac))
    if w < params.min_box or h < params.min_box:
        grow = params.min_box / max(1, min(w, h))
        w, h = round(w * grow), round(h * grow)
    if w > width or h > height:
        return None
    x0, y0, _ = choose_position(scene, (h, w), image_hw, np.ones((h, w), dtype=bool), rng, paste)
    return x0, y0, x0 + w, y0 + h


def inpaint_object(
    pipe: Any,
    image: np.ndarray,
    scene: list[SceneObject],
    *,
    category_id: int,
    class_name: str,
    like_wh: tuple[float, float],
    rng: np.random.Generator,
    params: DiffusionParams,
    paste: PasteParams,
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Choose a box, inpaint a ``class_name`` into it and add it to ``scene`` (in place).

    Returns the new image and JSON-ready metadata, or None when no box fits.
    """
    box = choose_box(scene, image.shape[:2], like_wh, rng, params, paste)
    if box is None:
        return None
    prompt = params.prompt.replace("{class}", class_name)
    seed = int(rng.integers(2**31))
    out, call = inpaint_box(pipe, image, box, prompt, params=params, seed=seed)
    x0, y0, x1, y1 = box
    region = LocalMask(x0, y0, np.ones((y1 - y0, x1 - x0), dtype=bool))
    shrunk, dropped = add_to_scene(scene, region, category_id, False, image.shape[:2], paste)
    meta = {
        "prompt": prompt,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "shrunk": shrunk,
        "dropped": dropped,
        **call,
    }
    return out, meta


def params_dict(params: DiffusionParams) -> dict[str, Any]:
    """JSON-ready copy of the parameters (for metadata.json)."""
    return asdict(params)
