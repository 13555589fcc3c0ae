"""Stable Diffusion inpainting plumbing with a tiny, randomly initialised pipeline (offline).

Checks boxes, annotations, metadata and that pixels outside the box are untouched -- never quality.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from detrkit.data.coco import CocoIndex
from detrkit.synth.diffusion import (
    DiffusionParams,
    context_crop,
    inpaint_box,
    load_inpaint_pipeline,
    require_diffusers,
)
from detrkit.synth.generate import SynthOptions, synthesize
from detrkit.synth.rare import SynthError

from .tiny_sd import tiny_sd_components

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory: pytest.TempPathFactory):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(**tiny_sd_components(tmp_path_factory.mktemp("tok")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


FAST = DiffusionParams(model="tiny", steps=2, resolution=32, guidance=2.0)


def test_inpaint_box_changes_only_the_box(tiny_pipe) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    box = (30, 20, 52, 44)
    out, call = inpaint_box(tiny_pipe, image, box, "a photo of a disc", params=FAST, seed=5)
    outside = np.ones((70, 90), bool)
    outside[20:44, 30:52] = False
    np.testing.assert_array_equal(out[outside], image[outside])
    assert not np.array_equal(out[20:44, 30:52], image[20:44, 30:52])
    cx0, cy0, side, _ = call["context_crop"]
    assert cx0 <= 30 and cy0 <= 20 and cx0 + side >= 52 and cy0 + side >= 44 and side <= 70
    again, _ = inpaint_box(tiny_pipe, image, box, "a photo of a disc", params=FAST, seed=5)
    np.testing.assert_array_equal(out, again)  # seeded


@pytest.mark.parametrize(
    ("box", "hw"), [((0, 0, 10, 10), (50, 60)), ((55, 40, 60, 50), (50, 60)), ((5, 5, 45, 15), (50, 60))]
)
def test_context_crop_holds_the_box_inside_the_image(box, hw) -> None:
    x0, y0, side = context_crop(box, hw, 2.0)
    assert 0 <= x0 <= box[0] and 0 <= y0 <= box[1] and x0 + side >= box[2] and y0 + side >= box[3]
    assert x0 + side <= hw[1] and y0 + side <= hw[0]


def test_synthesize_diffusion_annotations_and_metadata(tiny_pipe, solid_dataset, tmp_path) -> None:
    ann_path, images = solid_dataset
    index = CocoIndex.load(ann_path)
    opts = SynthOptions(method="diffusion", per_class=3, seed=0, image_format="png", diffusion=FAST)
    summary = synthesize(index, images, tmp_path, classes=["disc"], options=opts, pipeline=tiny_pipe)
    assert summary["images"] == 3
    coco = json.loads((tmp_path / "annotations.json").read_text())
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["params"]["diffusion"]["prompt"] == "a photo of a {class}"
    for im, m in zip(coco["images"], meta["images"], strict=True):
        assert m["prompt"] == "a photo of a disc" and m["model"] == "tiny" and isinstance(m["seed"], int)
        x, y, w, h = m["bbox"]
        new = [a for a in coco["annotations"] if a["image_id"] == im["id"] and a["bbox"] == [x, y, w, h]]
        assert (
            len(new) == 1
            and new[0]["category_id"] == 2
            and new[0]["segmentation"] == []
            and new[0]["area"] == w * h
        )
        src = np.asarray(Image.open(images / m["source_image"]).convert("RGB"))
        out = np.asarray(Image.open(tmp_path / "images" / im["file_name"]).convert("RGB"))
        outside = np.ones(src.shape[:2], bool)
        outside[y : y + h, x : x + w] = False
        np.testing.assert_array_equal(out[outside], src[outside])
        assert min(w, h) >= FAST.min_box


def test_pipeline_saved_to_a_folder_loads_through_model_path(tiny_pipe, tmp_path) -> None:
    tiny_pipe.save_pretrained(tmp_path / "model")
    pipe = load_inpaint_pipeline(str(tmp_path / "model"), device="cpu")
    image = np.full((40, 40, 3), 90, np.uint8)
    out, _ = inpaint_box(pipe, image, (10, 10, 30, 30), "a photo of a disc", params=FAST, seed=1)
    assert out.shape == image.shape and (out[:10] == 90).all()


def test_missing_model_folder_is_one_line(tmp_path) -> None:
    with pytest.raises(SynthError, match="cannot load an inpainting pipeline") as err:
        load_inpaint_pipeline(str(tmp_path / "nope"), device="cpu")
    assert "\n" not in str(err.value)


def test_missing_diffusers_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(SynthError, match=r"pip install 'detrkit\[diffusion\]'") as err:
        require_diffusers()
    assert "\n" not in str(err.value)


def test_cli_diffusion_with_a_local_model_folder(tiny_pipe, synth_cmd, tmp_path) -> None:
    from typer.testing import CliRunner

    from detrkit.cli.main import app

    tiny_pipe.save_pretrained(tmp_path / "model")
    args = synth_cmd(
        tmp_path / "o",
        *(
            "--classes",
            "disc",
            "--per-class",
            "2",
            "--method",
            "diffusion",
            "--model",
            str(tmp_path / "model"),
        ),
        *("--device", "cpu", "--steps", "2", "--resolution", "32", "--prompt", "a drawing of a {class}"),
        *("--format", "png", "--json"),
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "o" / "metadata.json").read_text())
    assert [m["prompt"] for m in meta["images"]] == ["a drawing of a disc"] * 2
    assert meta["images"][0]["model"] == str(tmp_path / "model") and meta["params"]["diffusion"]["steps"] == 2
