"""Registry: names, metadata, overrides, errors."""

from __future__ import annotations

import pytest

from detrkit.models import registry
from detrkit.models.registry import build_model, list_models, model_info, register_model


def test_list_and_info() -> None:
    names = list_models()
    assert names == sorted(names) and "detr-tiny" in names
    assert list_models("fasterrcnn") == ["fasterrcnn-r50-fpn", "fasterrcnn-vgg16", "fasterrcnn-vgg19"]
    assert list_models("co-deformable") == ["co-deformable-detr-r50", "co-deformable-detr-tiny"]
    info = model_info("detr-r50")
    assert info.info["hf_id"] == "facebook/detr-resnet-50" and info.info["family"] == "detr"
    assert info.module == "detrkit.models.detr" and "ResNet-50" in info.description
    assert info.to_dict()["name"] == "detr-r50"


def test_overrides_reach_the_model() -> None:
    model = build_model("detr-tiny", num_classes=5, num_queries=7, d_model=32, num_heads=2)
    assert model.num_queries == 7 and model.query_embed.weight.shape == (7, 32)
    assert model.class_embed.out_features == 6 and model.model_name == "detr-tiny"


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="available models: .*detr-tiny"):
        build_model("detr-r42", num_classes=2)
    with pytest.raises(ValueError, match="available models"):
        model_info("nope")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build_model("detr-tiny", num_classes=0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build_model("detr-tiny", num_classes=True)
    with pytest.raises(
        ValueError, match=r"does not accept option\(s\) \['num_querys'\]; valid options: .*num_queries"
    ):
        build_model("detr-tiny", num_classes=2, num_querys=5)
    with pytest.raises(ValueError, match="does not accept"):
        build_model("fasterrcnn-vgg16", num_classes=2, d_model=5)


def test_register_rejects_a_second_builder_for_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def other(*, num_classes: int):
        """Another builder."""

    with pytest.raises(ValueError, match="already registered"):
        register_model("detr-tiny")(other)
    register_model("my-model", family="test")(other)
    assert model_info("my-model").description == "Another builder."
