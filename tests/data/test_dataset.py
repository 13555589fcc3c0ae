"""CocoDetection targets, bad-box policies, extra files, collate padding, skip-and-count in a DataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from detrkit.data.collate import DetectionCollator, collate_detection, normalize_images
from detrkit.data.dataset import CocoDetection
from detrkit.data.images import load_image_rgb
from detrkit.data.transforms import build_transforms, normalize_uint8
from detrkit.errors import AnnotationError, DataError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def test_targets_by_hand(make_dataset) -> None:
    ann, images = make_dataset()
    ds = CocoDetection(ann, images)
    assert len(ds) == 3 and ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    img, t = ds[0]
    ref = torch.from_numpy(np.asarray(load_image_rgb(images / "a.jpg")).copy()).permute(2, 0, 1)
    assert img.dtype == torch.uint8 and torch.equal(img, ref)  # the decoded pixels, not normalised
    batch = collate_detection([(img, t)])
    torch.testing.assert_close(batch.normalized()[0], (ref.float() / 255 - MEAN) / STD, atol=1e-5, rtol=1e-5)
    # ann 10: dog (id 7 -> label 1) [10, 8, 20, 16]; ann 11: cat (id 3 -> label 0) [50, 20, 30, 30]
    expected = torch.tensor([[20 / 96, 16 / 64, 20 / 96, 16 / 64], [65 / 96, 35 / 64, 30 / 96, 30 / 64]])
    torch.testing.assert_close(t["boxes"], expected)
    assert t["labels"].tolist() == [1, 0] and t["labels"].dtype == torch.int64
    assert t["image_id"] == 1
    assert t["orig_size"].tolist() == [64, 96] and t["size"].tolist() == [64, 96]
    _, t2 = ds[1]  # only a crowd box: left out of the target
    assert t2["boxes"].shape == (0, 4) and t2["labels"].shape == (0,)
    _, t3 = ds[2]
    torch.testing.assert_close(t3["boxes"], torch.tensor([[24 / 64, 58 / 80, 40 / 64, 36 / 80]]))


def test_targets_follow_the_transform(make_dataset) -> None:
    ann, images = make_dataset()
    ds = CocoDetection(ann, images, transforms=build_transforms("val", train=False, size=32))
    img, t = ds[0]
    assert tuple(img.shape) == (3, 32, 48)
    assert t["size"].tolist() == [32, 48] and t["orig_size"].tolist() == [64, 96]
    # normalised boxes do not change under a pure resize
    torch.testing.assert_close(t["boxes"][0], torch.tensor([20 / 96, 16 / 64, 20 / 96, 16 / 64]))


def _with_bad_boxes(tiny_coco: dict) -> dict:
    anns = tiny_coco["annotations"]
    anns += [
        {"id": 20, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},
        {"id": 21, "image_id": 1, "category_id": 3, "bbox": [90, 10, 20, 10], "area": 200, "iscrowd": 0},
        {"id": 22, "image_id": 1, "category_id": 99, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 23, "image_id": 5, "category_id": 3, "bbox": [40, 60, 24.5, 20], "area": 490, "iscrowd": 0},
    ]
    return tiny_coco


def test_on_bad_box_error_names_file_and_annotation(make_dataset, tiny_coco) -> None:
    ann, images = make_dataset(_with_bad_boxes(tiny_coco))
    with pytest.raises(AnnotationError) as err:
        CocoDetection(ann, images, on_bad_box="error")
    msg = str(err.value)
    assert str(ann) in msg and "annotation 20" in msg and "3 bad annotation(s)" in msg


def test_on_bad_box_drop_and_clip(make_dataset, tiny_coco) -> None:
    ann, images = make_dataset(_with_bad_boxes(tiny_coco))
    drop = CocoDetection(ann, images, on_bad_box="drop")
    assert drop.bad_boxes == {"degenerate": 1, "outside": 1, "unknown_category": 1, "clipped": 0}
    assert len(drop[0][1]["boxes"]) == 2  # 10 and 11 only
    # ann 23 overshoots by 0.5 px (within tolerance): clipped to x1 = 64 in every policy
    b = drop[2][1]["boxes"][1]
    torch.testing.assert_close(b, torch.tensor([52 / 64, 70 / 80, 24 / 64, 20 / 80]))

    clip = CocoDetection(ann, images, on_bad_box="clip")
    assert clip.bad_boxes["clipped"] == 1
    boxes = clip[0][1]["boxes"]
    assert len(boxes) == 3  # ann 21 [90, 10, 110, 20] clipped to [90, 10, 96, 20]
    torch.testing.assert_close(boxes[2], torch.tensor([93 / 96, 15 / 64, 6 / 96, 10 / 64]))


def test_extra_files_map_classes_by_name(make_dataset, tiny_coco, tmp_path: Path) -> None:
    ann, images = make_dataset()
    extra = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "dog"}],
    }
    extra_ann, extra_images = make_dataset(extra, name="synth.json", root="synth")
    ds = CocoDetection(ann, images, extra=[(extra_ann, extra_images)])
    assert len(ds) == 4
    assert ds[3][1]["labels"].tolist() == [1]  # "dog" is label 1 in the main file
    assert ds.labels_per_image()[3].tolist() == [1]
    extra["categories"][0]["name"] = "zebra"
    bad_ann, _ = make_dataset(extra, name="bad.json", root="synth")
    with pytest.raises(DataError, match=r"bad\.json: categories \['zebra'\]"):
        CocoDetection(ann, images, extra=[(bad_ann, extra_images)])


def test_duplicate_image_ids_and_missing_folder(make_dataset, tiny_coco, tmp_path: Path) -> None:
    tiny_coco["images"][1]["id"] = 1
    ann, images = make_dataset(tiny_coco)
    with pytest.raises(AnnotationError, match="duplicate image id 1"):
        CocoDetection(ann, images)
    with pytest.raises(DataError, match="images folder not found"):
        CocoDetection(ann, tmp_path / "nowhere")


def test_collate_pads_and_masks() -> None:
    a = (torch.ones(3, 10, 20), {"image_id": 1})
    b = (torch.full((3, 15, 12), 2.0), {"image_id": 2})
    batch = collate_detection([a, None, b])
    assert batch.skipped == 1 and len(batch) == 2
    assert tuple(batch.images.shape) == (2, 3, 15, 20)
    ref_mask = torch.zeros(2, 15, 20, dtype=torch.bool)
    ref_mask[0, :10, :20] = True
    ref_mask[1, :15, :12] = True
    assert torch.equal(batch.pixel_mask, ref_mask)
    ref = torch.zeros(2, 3, 15, 20)
    ref[0, :, :10, :20] = 1.0
    ref[1, :, :15, :12] = 2.0
    assert torch.equal(batch.images, ref)
    assert [t["image_id"] for t in batch.targets] == [1, 2]

    padded = DetectionCollator(size_divisibility=32)([a, b])
    assert tuple(padded.images.shape) == (2, 3, 32, 32) and padded.pixel_mask.sum() == 200 + 180

    empty = collate_detection([None, None])
    assert len(empty) == 0 and empty.skipped == 2 and empty.targets == []
    assert empty.images.dtype == torch.uint8 and empty.normalized().shape == (0, 3, 0, 0)
    assert batch.normalized() is batch.images  # float samples are already normalised: passed through


def test_normalize_images_by_hand() -> None:
    images = torch.tensor([0, 255, 128, 7], dtype=torch.uint8).view(1, 1, 1, 4).repeat(1, 3, 1, 1)
    mask = torch.tensor([[[True, True, True, False]]])
    out = normalize_images(images, mask)
    assert out.dtype == torch.float32
    want = (torch.tensor([0.0, 255.0, 128.0]).view(1, 3) / 255 - MEAN.view(3, 1)) / STD.view(3, 1)
    torch.testing.assert_close(out[0, :, 0, :3], want, atol=1e-6, rtol=1e-6)
    assert (out[0, :, 0, 3] == 0).all() and not torch.signbit(out[0, :, 0, 3]).any()  # padding is +0
    assert normalize_images(images, mask, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="uint8"):
        normalize_images(images.to(torch.int32))


@pytest.mark.parametrize("preset", ["val", "light", "detr"])
def test_uint8_batches_normalised_equal_the_float32_batches(make_dataset, preset) -> None:
    """The old path (each image normalised on the CPU, float32 batch) and the new one (uint8 batch,
    normalised at once) give the same tensor, bit for bit, for the same pixels."""
    ann, images = make_dataset()
    ds = CocoDetection(ann, images, transforms=build_transforms(preset, train=preset != "val", size=40))
    torch.manual_seed(0)
    samples = [ds[i] for i in range(len(ds))]
    assert all(img.dtype == torch.uint8 for img, _ in samples)
    assert len({tuple(img.shape) for img, _ in samples}) > 1 or preset == "light"  # padding is exercised
    new = DetectionCollator(size_divisibility=32)(samples)
    old = DetectionCollator(size_divisibility=32)([(normalize_uint8(img), t) for img, t in samples])
    assert new.images.dtype == torch.uint8 and old.images.dtype == torch.float32
    assert torch.equal(new.pixel_mask, old.pixel_mask)
    assert torch.equal(new.normalized(), old.images)
    assert torch.equal(new.normalized(torch.bfloat16), old.images.to(torch.bfloat16))


def test_bad_images_are_skipped_and_counted_across_workers(make_dataset, tiny_coco, image_writer) -> None:
    tiny_coco["images"].append({"id": 6, "file_name": "wrong_size.jpg", "width": 50, "height": 50})
    tiny_coco["images"].append({"id": 7, "file_name": "missing.jpg", "width": 64, "height": 64})
    ann, images = make_dataset(tiny_coco)
    (images / "missing.jpg").unlink()
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))  # corrupt PNG (image 2)
    image_writer(images / "wrong_size.jpg", 40, 30)  # JSON says 50x50
    ds = CocoDetection(ann, images, transforms=build_transforms("light", train=True, size=64))

    for workers in (0, 2):
        loader = DataLoader(
            ds, batch_size=2, num_workers=workers, collate_fn=DetectionCollator(size_divisibility=32)
        )
        seen, skipped = [], 0
        for batch in loader:
            skipped += batch.skipped
            seen += [t["image_id"] for t in batch.targets]
            if len(batch):
                assert batch.images.shape[-2:] == (64, 64) and batch.pixel_mask.all()
        assert sorted(seen) == [1, 5] and skipped == 3
    assert ds.skipped == 3 and sorted(ds.skipped_ids) == [2, 6, 7]  # main-process count (workers=0)
