"""Offline synthesis: ``per_class`` new images for each rare class, written as a COCO dataset.

Methods:
- ``copy-paste``: 1-3 instances of the class (cut with their masks from other training images) pasted
  into a random training image (see :mod:`detrkit.synth.copy_paste`);
- ``augment``: a training image holding the class, heavily augmented (see :mod:`detrkit.synth.augment`);
- ``diffusion``: the class drawn into a box of a random training image by Stable Diffusion
  inpainting (see :mod:`detrkit.synth.diffusion`);
- ``controlnet``: the same with a ControlNet conditioned on a real instance's mask/edges placed
  at the new box, or on the whole scene's layout (see :mod:`detrkit.synth.controlnet`).

Randomness comes from ``numpy.random.default_rng((seed, class_position))``: the same seed gives the
same files, and adding a class does not change the images of the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detrkit.data.coco import Annotation, CocoIndex, ImageInfo
from detrkit.synth.augment import AugmentParams, augment_sample
from detrkit.synth.bank import InstanceBank, ann_to_dict, load_rgb_array
from detrkit.synth.controlnet import ControlParams, controlnet_object
from detrkit.synth.copy_paste import PasteParams, SceneObject, paste_instance, scene_from_annotations
from detrkit.synth.diffusion import DiffusionParams, inpaint_object, load_inpaint_pipeline
from detrkit.synth.quality import DetectorFilter, FilterTally
from detrkit.synth.rare import SynthError, find_rare_classes, resolve_classes
from detrkit.synth.writer import SynthSample, SynthWriter

METHODS = ("copy-paste", "augment", "diffusion", "controlnet")
_BANKED = ("copy-paste", "controlnet")  # methods that draw real instances from an InstanceBank


@dataclass
class SynthOptions:
    """Everything :func:`synthesize` needs besides the data and the classes."""

    method: str = "copy-paste"
    per_class: int = 100
    seed: int = 0
    #: copy-paste: how many instances of the class go into one image (inclusive range).
    instances_per_image: tuple[int, int] = (1, 3)
    #: instance bank: skip instances under this many pixels; keep at most this many per class.
    min_area: int = 64
    bank_max_per_class: int | None = 2000
    image_format: str = "jpg"
    paste: PasteParams = field(default_factory=PasteParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    diffusion: DiffusionParams = field(default_factory=DiffusionParams)
    control: ControlParams = field(default_factory=ControlParams)


def choose_classes(
    index: CocoIndex,
    *,
    classes: list[str] | None = None,
    rare_k: int | None = None,
    rare_fraction: float | None = None,
) -> list[str]:
    """The classes to synthesize: named ones (checked), or the rare ones found from counts."""
    if classes:
        resolve_classes(index, classes)
        return list(dict.fromkeys(classes))
    if rare_k is None and rare_fraction is None:
        raise SynthError(
            f"{index.source or '<annotations>'}: name the classes (--classes) "
            "or ask for the rare ones (--rare-k / --rare-fraction)"
        )
    try:
        found = find_rare_classes(index, fraction=rare_fraction, k=rare_k)
    except ValueError as err:
        raise SynthError(f"{index.source or '<annotations>'}: {err}") from None
    if not found:
        raise SynthError(
            f"{index.source or '<annotations>'}: no class is under {rare_fraction:.1%} of the instances"
        )
    return found


def synthesize(
    index: CocoIndex,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    classes: list[str],
    options: SynthOptions,
    pipeline: Any = None,
    bank: InstanceBank | None = None,
    progress: Callable[[int, int], None] | None = None,
    quality: DetectorFilter | None = None,
) -> dict[str, Any]:
    """Write ``options.per_class`` synthetic images per class into ``out_dir`` (see :mod:`writer`).

    Args:
        index: the training annotations (sources of instances and backgrounds).
        images_dir: the folder their ``file_name`` entries are relative to.
        out_dir: output folder (``images/``, ``annotations.json``, ``metadata.json``, ``samples.png``).
        classes: class names to synthesize.
        options: method and parameters.
        pipeline: an already built inpainting pipeline (diffusion); loaded from
            ``options.diffusion.model`` when None.
        bank: an already built instance bank (copy-paste); cut from ``index`` when None.
        progress: called as ``progress(done, total)`` after every image.
        quality: keep an image only when this detector finds all its new instances
            (:mod:`detrkit.synth.quality`); its counts go into ``metadata.json`` (``"filter"``).
    Returns:
        the writer's summary (paths, counts per class).
    """
    if options.method not in METHODS:
        raise SynthError(f"unknown method '{options.method}'; choose one of {', '.join(METHODS)}")
    if options.per_class < 1:
        raise SynthError(f"per-class must be >= 1, got {options.per_class}")
    cat_ids = resolve_classes(index, classes)
    if not index.images:
        raise SynthError(f"{index.source or '<annotations>'}: has no images to work from")
    method_params: dict[str, Any] = {
        "paste": asdict(options.paste),
        "instances_per_image": list(options.instances_per_image),
    }
    if options.method == "augment":
        method_params = {"augment": asdict(options.augment)}
    elif options.method in ("diffusion", "controlnet"):
        method_params = {"diffusion": asdict(options.diffusion), "paste": asdict(options.paste)}
        controlnet = None
        if options.method == "controlnet":
            controlnet = options.control.model_id()
            method_params["control"] = {**asdict(options.control), "controlnet": controlnet}
        if pipeline is None:
            pipeline = load_inpaint_pipeline(options.diffusion.model, controlnet=controlnet)
    params = {"classes": list(classes), "per_class": options.per_class, "seed": options.seed, **method_params}
    writer = SynthWriter(
        out_dir, index, method=options.method, params=params, image_format=options.image_format
    )
    if options.method in _BANKED and bank is None:
        bank = InstanceBank.from_coco(
            index,
            images_dir,
            category_ids=cat_ids,
            min_area=options.min_area,
            max_per_class=options.bank_max_per_class,
            seed=options.seed,
        )
    if options.method in _BANKED:
        assert bank is not None
        empty = [n for n, c in zip(classes, cat_ids, strict=True) if not bank.by_category.get(c)]
        if empty:
            raise SynthError(
                f"{index.source or '<annotations>'}: no instance of {', '.join(empty)} to copy "
                f"(at least {options.min_area} px, not crowd)"
            )
    ctx = _Context(index, Path(images_dir), index.image_by_id(), options)
    tally = FilterTally(quality.params) if quality is not None else None
    total, done = options.per_class * len(classes), 0
    for k, (name, cid) in enumerate(zip(classes, cat_ids, strict=True)):
        rng = np.random.default_rng((options.seed, k))
        instances = [
            a for a in index.annotations if a.category_id == cid and not a.iscrowd and a.image_id in ctx.infos
        ]
        if options.method == "augment" and not instances:
            raise SynthError(f"{index.source or '<annotations>'}: no image holds class '{name}' to augment")
        holders = sorted({a.image_id for a in instances})
        kept, tries = 0, options.per_class * (quality.params.max_tries if quality else 1)
        while kept < options.per_class and tries > 0:
            tries -= 1
            if options.method == "copy-paste":
                assert bank is not None
                sample = _copy_paste_one(ctx, bank, cid, name, rng)
            elif options.method == "augment":
                sample = _augment_one(ctx, holders[int(rng.integers(len(holders)))], cid, name, rng)
            elif options.method == "controlnet":
                assert bank is not None
                sample = _controlnet_one(ctx, pipeline, bank, cid, name, rng)
            else:
                sample = _diffusion_one(ctx, pipeline, instances, cid, name, rng)
            if quality is not None and not _passes(quality, tally, sample, cid):
                continue
            writer.add(sample)
            kept += 1
            done += 1
            if progress is not None:
                progress(done, total)
    return writer.finish({"filter": tally.to_dict()} if tally is not None else None)


def _pasted(scene: list[SceneObject]) -> list[int]:
    """Indices of the objects a method added to the scene."""
    return [i for i, obj in enumerate(scene) if obj.pasted]


def _passes(quality: DetectorFilter, tally: FilterTally | None, sample: SynthSample, cid: int) -> bool:
    """Score the sample's new instances, record them (meta ``filter_scores``) and count them."""
    assert tally is not None
    new = (
        sample.new
        if sample.new is not None
        else [i for i, a in enumerate(sample.annotations) if a["category_id"] == cid]
    )
    pairs = [(sample.class_name, sample.annotations[i]["bbox"]) for i in new]  # new ones are of the class
    scores = quality.scores(sample.image, pairs)
    sample.meta["filter_scores"] = [round(s, 4) for s in scores]
    return tally.add(sample.class_name, quality.accepts(scores))


@dataclass
class _Context:
    index: CocoIndex
    images_dir: Path
    infos: dict[int, ImageInfo]
    options: SynthOptions

    def random_image(self, rng: np.random.Generator) -> ImageInfo:
        return self.index.images[int(rng.integers(len(self.index.images)))]

    def anns_of(self, image_id: int) -> list[dict[str, Any]]:
        return [ann_to_dict(a) for a in self.index.anns_by_image(image_id)]


def _copy_paste_one(
    ctx: _Context, bank: InstanceBank, cid: int, name: str, rng: np.random.Generator
) -> SynthSample:
    info = ctx.random_image(rng)
    image = load_rgb_array(ctx.images_dir, info)
    scene = scene_from_annotations(ctx.anns_of(info.id), info.height, info.width)
    lo, hi = ctx.options.instances_per_image
    pastes = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        record = paste_instance(
            image, scene, bank.sample(cid, rng, avoid_image_id=info.id), rng, ctx.options.paste
        )
        if record is not None:
            pastes.append(record)
    meta = {
        "method": "copy-paste",
        "source_image": info.file_name,
        "source_image_id": info.id,
        "pastes": pastes,
    }
    return SynthSample(image, [obj.annotation() for obj in scene], name, meta, _pasted(scene))


def _augment_one(ctx: _Context, image_id: int, cid: int, name: str, rng: np.random.Generator) -> SynthSample:
    info = ctx.infos[image_id]
    image = load_rgb_array(ctx.images_dir, info)
    out, anns, ops = augment_sample(
        image, ctx.anns_of(info.id), rng, ctx.options.augment, required_category=cid
    )
    meta = {"method": "augment", "source_image": info.file_name, "source_image_id": info.id, "ops": ops}
    return SynthSample(out, anns, name, meta)


def _diffusion_one(
    ctx: _Context, pipe: Any, instances: list[Annotation], cid: int, name: str, rng: np.random.Generator
) -> SynthSample:
    opts = ctx.options
    for _ in range(10):
        info = ctx.random_image(rng)
        if instances:
            ref = instances[int(rng.integers(len(instances)))]
            src = ctx.infos[ref.image_id]
            like = (ref.bbox_xywh[2] * info.width / src.width, ref.bbox_xywh[3] * info.height / src.height)
        else:
            like = (0.25 * min(info.width, info.height),) * 2
        image = load_rgb_array(ctx.images_dir, info)
        scene = scene_from_annotations(ctx.anns_of(info.id), info.height, info.width)
        done = inpaint_object(
            pipe,
            image,
            scene,
            category_id=cid,
            class_name=name,
            like_wh=like,
            rng=rng,
            params=opts.diffusion,
            paste=opts.paste,
        )
        if done is not None:
            out, call = done
            meta = {
                "method": "diffusion",
                "source_image": info.file_name,
                "source_image_id": info.id,
                "model": opts.diffusion.model,
                **call,
            }
            return SynthSample(out, [obj.annotation() for obj in scene], name, meta, _pasted(scene))
    raise SynthError(
        f"{ctx.index.source or '<annotations>'}: images are too small for a {opts.diffusion.min_box}px box"
    )


def _controlnet_one(
    ctx: _Context, pipe: Any, bank: InstanceBank, cid: int, name: str, rng: np.random.Generator
) -> SynthSample:
    opts = ctx.options
    for _ in range(10):
        info = ctx.random_image(rng)
        image = load_rgb_array(ctx.images_dir, info)
        scene = scene_from_annotations(ctx.anns_of(info.id), info.height, info.width)
        instance = bank.sample(cid, rng, avoid_image_id=info.id)
        done = controlnet_object(
            pipe,
            image,
            scene,
            instance,
            category_id=cid,
            class_name=name,
            rng=rng,
            params=opts.diffusion,
            control=opts.control,
            paste=opts.paste,
        )
        if done is not None:
            out, call = done
            meta = {
                "method": "controlnet",
                "source_image": info.file_name,
                "source_image_id": info.id,
                "model": opts.diffusion.model,
                **call,
            }
            return SynthSample(out, [obj.annotation() for obj in scene], name, meta, _pasted(scene))
    raise SynthError(
        f"{ctx.index.source or '<annotations>'}: instances of '{name}' do not fit as a "
        f"{opts.diffusion.min_box}px box (lower --scale or the box size)"
    )
