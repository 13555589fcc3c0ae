"""Stable Diffusion + ControlNet plumbing with a tiny, randomly initialised pipeline (offline).

Checks the control image (where the placed instance is), boxes, annotations, metadata, seeds and
that pixels outside the box are untouched -- never image quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from detrkit.data.coco import CocoIndex
from detrkit.synth.controlnet import ControlParams, control_image, layout_colour
from detrkit.synth.copy_paste import SceneObject
from detrkit.synth.diffusion import DiffusionParams, load_inpaint_pipeline
from detrkit.synth.generate import SynthOptions, synthesize
from detrkit.synth.masks import LocalMask
from detrkit.synth.rare import SynthError

from .tiny_sd import tiny_controlnet, tiny_sd_components

diffusers = pytest.importorskip("diffusers")

FAST = DiffusionParams(model="tiny", steps=2, resolution=32, guidance=2.0)


class _Recorder:
    """Passes calls to the pipeline and keeps each call's control and mask images."""

    def __init__(self, pipe) -> None:
        self.pipe, self.calls = pipe, []

    def __call__(self, **kwargs):
        self.calls.append(
            {k: np.asarray(kwargs[k]) for k in ("control_image", "mask_image")}
            | {"scale": kwargs["controlnet_conditioning_scale"]}
        )
        return self.pipe(**kwargs)


@pytest.fixture(scope="module")
def tiny_cn_pipe(tmp_path_factory: pytest.TempPathFactory):
    from diffusers import StableDiffusionControlNetInpaintPipeline

    parts = tiny_sd_components(tmp_path_factory.mktemp("tok"))
    pipe = StableDiffusionControlNetInpaintPipeline(**parts, controlnet=tiny_controlnet())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_control_images_put_the_instance_where_it_was_placed() -> None:
    yy, xx = np.mgrid[:12, :16]
    disc = (yy - 5.5) ** 2 / 36 + (xx - 7.5) ** 2 / 64 <= 1
    placed = LocalMask(20, 10, disc)
    full = np.zeros((40, 60), bool)
    full[10:22, 20:36] = disc
    mask = control_image("mask", placed, category_id=3, scene=[], image_hw=(40, 60))
    assert mask.shape == (40, 60, 3) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask.any(2), full)
    edges = control_image("edges", placed, category_id=3, scene=[], image_hw=(40, 60), edge_width=2)
    outline = full & ~ndimage.binary_erosion(full, iterations=2)
    np.testing.assert_array_equal(edges.any(2), outline)
    assert (edges[outline] == 255).all() and outline.sum() < full.sum()
    other = SceneObject.from_annotation(
        {"bbox": [0, 0, 30, 20], "category_id": 1, "segmentation": [[0, 0, 30, 0, 30, 20, 0, 20]]}, 40, 60
    )
    layout = control_image("layout", placed, category_id=3, scene=[other], image_hw=(40, 60))
    assert (layout[full] == layout_colour(3)).all()  # the new object on top
    under = np.zeros((40, 60), bool)
    under[:20, :30] = True
    assert (layout[under & ~full] == layout_colour(1)).all() and not layout[~(under | full)].any()
    with pytest.raises(SynthError, match="unknown control"):
        control_image("depth", placed, category_id=3, scene=[], image_hw=(40, 60))


def test_synthesize_controlnet_boxes_controls_metadata_and_seeds(
    tiny_cn_pipe, solid_dataset, tmp_path
) -> None:
    ann_path, images = solid_dataset
    index = CocoIndex.load(ann_path)
    rec = _Recorder(tiny_cn_pipe)
    control = ControlParams(controlnet="tiny-cn", control="mask", conditioning_scale=0.8)
    opts = SynthOptions(
        method="controlnet", per_class=3, seed=4, image_format="png", diffusion=FAST, control=control
    )
    summary = synthesize(index, images, tmp_path / "a", classes=["disc"], options=opts, pipeline=rec)
    assert summary["images"] == 3 and len(rec.calls) == 3
    coco = json.loads((tmp_path / "a" / "annotations.json").read_text())
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["method"] == "controlnet" and meta["params"]["control"]["controlnet"] == "tiny-cn"
    disc_anns = {a.id for a in index.annotations if a.category_id == 2}
    for im, m, call in zip(coco["images"], meta["images"], rec.calls, strict=True):
        assert m["control"] == "mask" and m["controlnet"] == "tiny-cn" and call["scale"] == 0.8
        assert m["instance_ann_id"] in disc_anns and isinstance(m["seed"], int)
        x, y, w, h = m["bbox"]
        new = [a for a in coco["annotations"] if a["image_id"] == im["id"] and a["bbox"] == [x, y, w, h]]
        assert len(new) == 1 and new[0]["category_id"] == 2 and new[0]["segmentation"] == []
        assert min(w, h) >= FAST.min_box
        # The control (at the model's resolution) holds the placed mask inside the box's place in
        # the context crop, touching all four sides of the box (the box is the mask's tight box).
        cx0, cy0, side, _ = m["context_crop"]
        k = FAST.resolution / side
        ys, xs = np.nonzero(call["control_image"].any(2))
        assert abs(xs.min() - (x - cx0) * k) <= 1 and abs(xs.max() + 1 - (x + w - cx0) * k) <= 1
        assert abs(ys.min() - (y - cy0) * k) <= 1 and abs(ys.max() + 1 - (y + h - cy0) * k) <= 1
        src = np.asarray(Image.open(images / m["source_image"]).convert("RGB"))
        out = np.asarray(Image.open(tmp_path / "a" / "images" / im["file_name"]).convert("RGB"))
        outside = np.ones(src.shape[:2], bool)
        outside[y : y + h, x : x + w] = False
        np.testing.assert_array_equal(out[outside], src[outside])
    again = synthesize(index, images, tmp_path / "b", classes=["disc"], options=opts, pipeline=tiny_cn_pipe)
    assert again["images"] == 3
    for name in ("annotations.json", *(f"images/{im['file_name']}" for im in coco["images"])):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = SynthOptions(**{**opts.__dict__, "seed": 5})
    synthesize(index, images, tmp_path / "c", classes=["disc"], options=other, pipeline=tiny_cn_pipe)
    assert (tmp_path / "c" / "annotations.json").read_bytes() != (
        tmp_path / "a" / "annotations.json"
    ).read_bytes()


def test_cli_controlnet_with_local_model_folders(tiny_cn_pipe, synth_cmd, tmp_path) -> None:
    from typer.testing import CliRunner

    from detrkit.cli.main import app

    tiny_cn_pipe.save_pretrained(tmp_path / "sd")
    tiny_cn_pipe.controlnet.save_pretrained(tmp_path / "cn")
    pipe = load_inpaint_pipeline(str(tmp_path / "sd"), device="cpu", controlnet=str(tmp_path / "cn"))
    assert type(pipe).__name__ == "StableDiffusionControlNetInpaintPipeline"
    args = synth_cmd(
        tmp_path / "o",
        *("--classes", "disc", "--per-class", "2", "--method", "controlnet"),
        *("--model", str(tmp_path / "sd"), "--controlnet", str(tmp_path / "cn"), "--control", "edges"),
        *("--device", "cpu", "--steps", "2", "--resolution", "32", "--format", "png", "--json"),
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "o" / "metadata.json").read_text())
    assert [m["control"] for m in meta["images"]] == ["edges"] * 2
    assert meta["images"][0]["controlnet"] == str(tmp_path / "cn")
    with pytest.raises(SynthError, match="cannot load a ControlNet") as err:
        load_inpaint_pipeline(str(tmp_path / "sd"), device="cpu", controlnet=str(tmp_path / "nope"))
    assert "\n" not in str(err.value)
