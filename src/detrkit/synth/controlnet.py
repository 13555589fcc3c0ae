"""Draw a rare-class object at a chosen box with Stable Diffusion + ControlNet.

The condition comes from the source annotation: a real instance of the class (its mask, from the
:class:`~detrkit.synth.bank.InstanceBank`) is scaled, maybe flipped, and placed at a new box of a
real image, chosen like a copy-paste spot (hiding at most ``max_cover`` of any object). The control
image holds, at exactly that place:

- ``edges``: the outline of the placed mask (white on black, ``edge_width`` pixels), for an
  edge/Canny ControlNet;
- ``mask``: the placed mask filled white, for a segmentation/scribble ControlNet;
- ``layout``: the whole scene, every object's visible region filled with its class colour
  (:func:`layout_colour`) and the new object on top, for a segmentation ControlNet.

``diffusers.StableDiffusionControlNetInpaintPipeline`` then repaints the box (the same square
context crop as :mod:`detrkit.synth.diffusion`, and only the box's pixels are written back), so the
generated object lands in its box. The new object is annotated with that box (the tight box of the
placed mask; box-only, no segmentation: the model draws its exact pixels); objects it hides are
shrunk or dropped as in copy-paste.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from detrkit.synth.copy_paste import (
    Instance,
    PasteParams,
    SceneObject,
    add_to_scene,
    choose_position,
    prepare_instance,
)
from detrkit.synth.diffusion import DiffusionParams, inpaint_box
from detrkit.synth.masks import LocalMask
from detrkit.synth.rare import SynthError

CONTROLS = ("edges", "mask", "layout")
#: default ControlNet per control kind (SD 1.5 ControlNet 1.1).
DEFAULT_CONTROLNETS = {
    "edges": "lllyasviel/control_v11p_sd15_canny",
    "mask": "lllyasviel/control_v11p_sd15_seg",
    "layout": "lllyasviel/control_v11p_sd15_seg",
}


@dataclass(frozen=True)
class ControlParams:
    """ControlNet settings.

    Attributes:
        controlnet: Hub id or local folder of a ``ControlNetModel``; None: the default of ``control``.
        control: ``edges``, ``mask`` or ``layout`` (module docstring).
        conditioning_scale: ``controlnet_conditioning_scale`` of the pipeline.
        edge_width: outline width in pixels (``edges``).
    """

    controlnet: str | None = None
    control: str = "edges"
    conditioning_scale: float = 1.0
    edge_width: int = 2

    def model_id(self) -> str:
        """The ControlNet to load."""
        if self.control not in CONTROLS:
            raise SynthError(f"unknown control '{self.control}'; choose one of {', '.join(CONTROLS)}")
        return self.controlnet or DEFAULT_CONTROLNETS[self.control]


def layout_colour(category_id: int) -> tuple[int, int, int]:
    """A fixed, distinct RGB colour per category id (never black, the background)."""
    return (40 + (category_id * 67) % 216, 40 + (category_id * 137) % 216, 40 + (category_id * 211) % 216)


def control_image(
    kind: str,
    placed: LocalMask,
    *,
    category_id: int,
    scene: list[SceneObject],
    image_hw: tuple[int, int],
    edge_width: int = 2,
) -> np.ndarray:
    """The ``uint8 [H, W, 3]`` condition for a new object whose pixels are ``placed``.

    ``edges``/``mask`` are white on black; ``layout`` draws the visible region of every object of
    ``scene`` (before the new one is added) in :func:`layout_colour`, the new object last.
    """
    out = np.zeros((*image_hw, 3), dtype=np.uint8)

    def fill(region: LocalMask, colour: tuple[int, int, int], mask: np.ndarray | None = None) -> None:
        view = out[region.y0 : region.y1, region.x0 : region.x1]
        view[region.mask if mask is None else mask] = colour

    if kind == "edges":
        inner = ndimage.binary_erosion(placed.mask, iterations=max(1, edge_width), border_value=0)
        fill(placed, (255, 255, 255), placed.mask & ~inner)
    elif kind == "mask":
        fill(placed, (255, 255, 255))
    elif kind == "layout":
        for obj in scene:
            fill(obj.region, layout_colour(obj.category_id))
        fill(placed, layout_colour(category_id))
    else:
        raise SynthError(f"unknown control '{kind}'; choose one of {', '.join(CONTROLS)}")
    return out


def controlnet_object(
    pipe: Any,
    image: np.ndarray,
    scene: list[SceneObject],
    instance: Instance,
    *,
    category_id: int,
    class_name: str,
    rng: np.random.Generator,
    params: DiffusionParams,
    control: ControlParams,
    paste: PasteParams,
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Place ``instance``'s mask at a new box, generate a ``class_name`` there, add it to ``scene``.

    ``image`` is ``uint8 [H, W, 3]`` (not modified); ``scene`` is updated in place. Returns the new
    image and JSON-ready metadata, or None when the instance does not fit at ``params.min_box``.
    """
    height, width = image.shape[:2]
    scale = float(rng.uniform(*paste.scale_range))
    flip = bool(rng.random() < paste.flip_prob)
    max_hw = (max(1, int(height * paste.max_size_frac)), max(1, int(width * paste.max_size_frac)))
    prepared = prepare_instance(
        instance, scale=scale, flip=flip, feather=0, max_hw=max_hw, min_size=params.min_box
    )
    if prepared is None:
        return None
    h, w = prepared.mask.shape
    x0, y0, worst = choose_position(scene, (h, w), (height, width), prepared.mask, rng, paste)
    placed = LocalMask(x0, y0, prepared.mask)
    cond = control_image(
        control.control,
        placed,
        category_id=category_id,
        scene=scene,
        image_hw=(height, width),
        edge_width=control.edge_width,
    )
    prompt = params.prompt.replace("{class}", class_name)
    seed = int(rng.integers(2**31))
    box = (x0, y0, x0 + w, y0 + h)
    out, call = inpaint_box(
        pipe,
        image,
        box,
        prompt,
        params=params,
        seed=seed,
        control=cond,
        conditioning_scale=control.conditioning_scale,
    )
    region = LocalMask(x0, y0, np.ones((h, w), dtype=bool))
    shrunk, dropped = add_to_scene(scene, region, category_id, False, (height, width), paste)
    meta = {
        "prompt": prompt,
        "bbox": [x0, y0, w, h],
        "control": control.control,
        "controlnet": control.model_id(),
        "conditioning_scale": control.conditioning_scale,
        "instance_image_id": instance.source_image_id,
        "instance_ann_id": instance.source_ann_id,
        "scale": round(prepared.scale, 4),
        "flip": prepared.flipped,
        "hidden_max": round(worst, 4),
        "shrunk": shrunk,
        "dropped": dropped,
        **call,
    }
    return out, meta
