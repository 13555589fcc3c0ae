"""Load Hugging Face DETR / Deformable DETR checkpoints (and facebookresearch/detr ones) into ours.

Sources: a local folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), a
weights file (``.safetensors``, ``.bin``, ``.pt``/``.pth``), a state dict already in memory, or a
Hub id such as ``facebook/detr-resnet-50`` (downloaded with ``huggingface_hub`` only when it is
not a local path).

Key names: checkpoints on the Hub were written by older transformers versions; transformers 5.x
renames on load (``backbone.conv_encoder`` -> ``backbone``, ``out_proj`` -> ``o_proj``,
``layers.N.fc1`` -> ``layers.N.mlp.fc1``). Both namings are accepted, with the timm ResNet backbone
of the published checkpoints or transformers' own ``ResNetBackbone``. Deformable DETR checkpoints
(``model_type == "deformable_detr"`` or deformable keys) are mapped by
:func:`detrkit.models.deformable_hf.deformable_state_dict_from_hf`.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detrkit.errors import CheckpointError
from detrkit.models.base import Detector

__all__ = [
    "build_model_from_hf",
    "detr_state_dict_from_hf",
    "detr_state_dict_from_original",
    "load_hf_weights",
    "read_checkpoint",
]

log = logging.getLogger(__name__)

# transformers' conversion_mapping for DetrModel: older key names -> current ones.
_OLD_TO_NEW = [
    (re.compile(r"backbone\.conv_encoder\."), "backbone."),
    (re.compile(r"\.out_proj\."), ".o_proj."),
    (re.compile(r"layers\.(\d+)\.fc([12])\."), r"layers.\1.mlp.fc\2."),
]
_PREFIXES = {
    "model.query_position_embeddings.": "query_embed.",
    "model.input_projection.": "input_proj.",
    "model.decoder.layernorm.": "transformer.decoder_norm.",
    "class_labels_classifier.": "class_embed.",
    "bbox_predictor.": "bbox_embed.",
}
_LAYER_PARTS = {
    "encoder": {"self_attn.o_proj.": "self_attn.out_proj.", "self_attn.": "self_attn.",
                "self_attn_layer_norm.": "norm1.", "mlp.fc1.": "linear1.", "mlp.fc2.": "linear2.",
                "final_layer_norm.": "norm2."},
    "decoder": {"self_attn.o_proj.": "self_attn.out_proj.", "self_attn.": "self_attn.",
                "self_attn_layer_norm.": "norm1.", "encoder_attn.o_proj.": "cross_attn.out_proj.",
                "encoder_attn.": "cross_attn.", "encoder_attn_layer_norm.": "norm2.", "mlp.fc1.": "linear1.",
                "mlp.fc2.": "linear2.", "final_layer_norm.": "norm3."},
}  # fmt: skip
_LAYER_KEY = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")
# transformers' ResNetBackbone (use_timm_backbone=False) -> torchvision names
_HF_RESNET = [
    (re.compile(r"^embedder\.embedder\.convolution\."), "conv1."),
    (re.compile(r"^embedder\.embedder\.normalization\."), "bn1."),
    (
        re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\."),
        "layer{s}.{b}.downsample.0.",
    ),
    (
        re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\."),
        "layer{s}.{b}.downsample.1.",
    ),
    (
        re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\."),
        "layer{s}.{b}.conv{i}.",
    ),
    (
        re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\."),
        "layer{s}.{b}.bn{i}.",
    ),
]


def _backbone_key(rest: str) -> str | None:
    """Backbone key after ``model.backbone.model.`` -> torchvision name (timm names are identical)."""
    for pattern, template in _HF_RESNET:
        if m := pattern.match(rest):
            groups = [int(x) for x in m.groups()]
            names = dict(zip(("s", "b", "i"), groups, strict=False))
            if groups:  # stages and convolutions count from 0 in transformers, from 1 in torchvision
                names["s"] += 1
            if "i" in names:
                names["i"] += 1
            return template.format(**names) + rest[m.end() :]
    return None if rest.startswith(("embedder.", "encoder.")) else rest


def detr_state_dict_from_hf(hf_state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a transformers ``DetrForObjectDetection`` state dict (old or new names) onto :class:`DETR`.

    Args:
        hf_state_dict: name -> tensor (``model.*``, ``class_labels_classifier.*``,
            ``bbox_predictor.*``), with a timm or a transformers ResNet backbone.
    Returns:
        A state dict for ``DETR.load_state_dict`` (same tensors, not copies).
    Raises:
        CheckpointError: for keys without a counterpart (learned position embeddings,
            segmentation heads...), naming them.
    """
    ours: dict[str, Tensor] = {}
    unknown = []
    for key, value in hf_state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        new = key
        for pattern, repl in _OLD_TO_NEW:
            new = pattern.sub(repl, new)
        mapped = None
        if new.startswith("model.backbone.model."):
            rest = _backbone_key(new[len("model.backbone.model.") :])
            mapped = None if rest is None else "backbone.body." + rest
        elif m := _LAYER_KEY.match(new):
            part, index, rest = m.groups()
            for prefix, repl in _LAYER_PARTS[part].items():
                if rest.startswith(prefix):
                    mapped = f"transformer.{part}.{index}.{repl}{rest[len(prefix) :]}"
                    break
        else:
            for prefix, repl in _PREFIXES.items():
                if new.startswith(prefix):
                    mapped = repl + new[len(prefix) :]
                    break
        if mapped is None:
            unknown.append(key)
        else:
            ours[mapped] = value
    if unknown:
        raise CheckpointError(f"no DETR counterpart for {len(unknown)} checkpoint key(s), e.g. {unknown[:3]}")
    return ours


def detr_state_dict_from_original(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a facebookresearch/detr checkpoint (``checkpoint["model"]``) onto :class:`DETR`.

    Splits ``nn.MultiheadAttention``'s packed ``in_proj_weight``/``in_proj_bias`` into
    ``q/k/v_proj`` and renames ``backbone.0.body`` -> ``backbone.body``, ``multihead_attn`` ->
    ``cross_attn``, ``transformer.decoder.norm`` -> ``transformer.decoder_norm``,
    ``transformer.{encoder,decoder}.layers.N`` -> ``transformer.{encoder,decoder}.N``.
    """
    ours: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        new = key.replace("backbone.0.body.", "backbone.body.").replace(
            "transformer.decoder.norm.", "transformer.decoder_norm."
        )
        new = re.sub(r"^transformer\.(encoder|decoder)\.layers\.", r"transformer.\1.", new)
        new = new.replace(".multihead_attn.", ".cross_attn.")
        if new.endswith((".in_proj_weight", ".in_proj_bias")):
            base, kind = new.rsplit(".in_proj_", 1)
            for name, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                ours[f"{base}.{name}_proj.{kind}"] = chunk
        else:
            ours[new] = value
    return ours


def _is_deformable(state: Mapping[str, Tensor], config: Mapping[str, Any] | None) -> bool:
    if config is not None and "model_type" in config:
        return config["model_type"] == "deformable_detr"
    return any("sampling_offsets" in k or k.endswith("level_embed") for k in state)


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                return dict(obj[key])
        if all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
    raise CheckpointError("not a state dict (nor a dict with a 'model' or 'state_dict' entry)", path=path)


def _load_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad checkpoint for the user
        raise CheckpointError(
            f"cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})", path=path
        ) from e
    return _unwrap(obj, path)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id, allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin"]
        )
    except Exception as e:  # noqa: BLE001 - network/cache failures become one user-facing line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{repo_id}: not a local path and could not be fetched from the Hugging Face Hub "
            f"(offline or unknown repo?): {first}"
        ) from e
    return Path(folder)


def read_checkpoint(source: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read ``(state_dict, config or None)`` from a folder, a file or a Hub id.

    Raises:
        CheckpointError: missing files, unreadable checkpoint, or a Hub id that cannot be fetched.
    """
    path = Path(source)
    if not path.exists():
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(source)) and not path.suffix:
            path = _download(str(source))
        else:
            raise CheckpointError("checkpoint not found", path=path)
    if path.is_dir():
        config_path = path / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else None
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return _load_file(path / name), config
        raise CheckpointError("folder holds neither model.safetensors nor pytorch_model.bin", path=path)
    config_path = path.with_name("config.json")
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    return _load_file(path), config


def _to_ours(
    model: Detector, state: Mapping[str, Tensor], config: Mapping[str, Any] | None
) -> dict[str, Tensor]:
    own = model.state_dict()
    if set(state) <= set(own):  # already our naming (e.g. a detrkit export)
        return dict(state)
    if _is_deformable(state, config):
        from detrkit.models.deformable_detr import deformable_state_dict_from_hf

        try:
            return deformable_state_dict_from_hf(dict(state))
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    if any(k.startswith("model.") or k.startswith("class_labels_classifier.") for k in state):
        return detr_state_dict_from_hf(state)
    return detr_state_dict_from_original(state)


def load_hf_weights(
    model: Detector, source: str | Path | Mapping[str, Tensor], *, strict: bool = True
) -> dict[str, list[str]]:
    """Load a Hugging Face (or facebookresearch) DETR / Deformable DETR checkpoint into ``model``.

    A class head of another size (different number of classes) is left at its initialisation,
    with a warning; every other shape mismatch is an error.

    Args:
        model: a detrkit DETR or Deformable DETR of the same architecture.
        source: folder, file, Hub id, or an in-memory state dict.
        strict: raise when keys are missing or unexpected (the class head excepted).
    Returns:
        ``{"missing": [...], "unexpected": [...], "reinitialized": [...], "fresh": [...]}`` key
        lists; ``fresh``: the model's training-only parts (``Detector.training_only_prefixes``,
        e.g. Co-DETR's auxiliary heads), absent from the checkpoint and left at their initialisation.
    Raises:
        CheckpointError: unreadable source, unknown keys, shape mismatches, or (strict) missing keys.
    """
    if isinstance(source, Mapping):
        state, config = dict(source), None
    else:
        state, config = read_checkpoint(source)
    return _load_state(model, state, config, strict=strict)


def _load_state(
    model: Detector, state: Mapping[str, Tensor], config: Mapping[str, Any] | None, *, strict: bool
) -> dict[str, list[str]]:
    mapped = _to_ours(model, state, config)
    own = model.state_dict()
    reinitialized, bad = [], []
    for key in list(mapped):
        if key in own and mapped[key].shape != own[key].shape:
            if key.startswith("class_embed"):
                reinitialized.append(key)
                del mapped[key]
            else:
                bad.append(f"{key} {list(mapped[key].shape)} vs {list(own[key].shape)}")
    if bad:
        raise CheckpointError(f"checkpoint does not fit {model.model_name}: shape mismatch for {bad[:3]}")
    result = model.load_state_dict(mapped, strict=False)
    training_only = tuple(getattr(model, "training_only_prefixes", ()))
    fresh = [k for k in result.missing_keys if training_only and k.startswith(training_only)]
    missing = [k for k in result.missing_keys if k not in reinitialized and k not in fresh]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint does not fit {model.model_name}: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}; pass strict=False to load the rest"
        )
    if reinitialized:
        msg = (
            f"class head re-initialised for {model.num_classes} classes (checkpoint has another count): "
            f"{', '.join(reinitialized)}"
        )
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
    return {"missing": missing, "unexpected": unexpected, "reinitialized": reinitialized, "fresh": fresh}


_RESNET_DEPTHS = {((2, 2, 2, 2), "basic"): "resnet18", ((3, 4, 6, 3), "basic"): "resnet34",
                  ((3, 4, 6, 3), "bottleneck"): "resnet50", ((3, 4, 23, 3), "bottleneck"): "resnet101"}  # fmt: skip


def _backbone_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """``backbone``, ``return_layer``, ``dilation`` from a DETR/Deformable config."""
    bc = config.get("backbone_config") or {}
    dilation = bool(config.get("dilation", False))
    if bc.get("model_type") == "resnet":
        key = (tuple(bc.get("depths", ())), bc.get("layer_type", "bottleneck"))
        if key not in _RESNET_DEPTHS:
            raise CheckpointError(f"unsupported transformers ResNet backbone (depths/layer_type {key})")
        stage = (bc.get("out_features") or ["stage4"])[-1]
        return {"backbone": _RESNET_DEPTHS[key], "return_layer": "layer" + stage[-1], "dilation": dilation}
    name = bc.get("backbone") or config.get("backbone") or "resnet50"
    name = name.split("/")[-1].split(".")[0]  # "timm/resnet50.a1_in1k" -> "resnet50"
    out_indices = bc.get("out_indices") or config.get("backbone_kwargs", {}).get("out_indices") or [4]
    dilation = dilation or bc.get("output_stride") == 16
    return {"backbone": name, "return_layer": f"layer{out_indices[-1]}", "dilation": dilation}


def _class_names(config: Mapping[str, Any]) -> list[str]:
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return [id2label.get(i, "N/A") for i in range(max(id2label) + 1)] if id2label else []


def build_model_from_hf(source: str | Path, *, num_classes: int | None = None) -> Detector:
    """Build the detrkit model described by a checkpoint's ``config.json`` and load its weights.

    Args:
        source: folder or Hub id holding ``config.json`` and the weights.
        num_classes: classes of the new model; default: the checkpoint's (``len(id2label)``).
            Another count re-initialises the class head (with a warning).
    Returns:
        The model, with ``model.class_names`` (from ``id2label``, or None when ``num_classes``
        differs) and ``model.build_options`` (the ``build_model`` overrides that rebuild it).
    Raises:
        CheckpointError: no config, unsupported architecture options.
    """
    from detrkit.models.registry import build_model

    state, config = read_checkpoint(source)
    if config is None:
        raise CheckpointError(
            "config.json not found next to the weights; use build_model + load_hf_weights", path=source
        )
    names = _class_names(config)
    n = num_classes if num_classes is not None else len(names)
    if n < 1:
        raise CheckpointError("config.json has no id2label; pass num_classes", path=source)
    bb = _backbone_options(config)
    common = {"d_model": config["d_model"], "dropout": config.get("dropout", 0.1), "num_queries": config["num_queries"],
              "cost_bbox": config.get("bbox_cost", 5),
              "cost_giou": config.get("giou_cost", 2), "weight_bbox": config.get("bbox_loss_coefficient", 5),
              "weight_giou": config.get("giou_loss_coefficient", 2), "backbone": bb["backbone"]}  # fmt: skip
    if config.get("encoder_ffn_dim") != config.get("decoder_ffn_dim") or config.get(
        "encoder_attention_heads"
    ) != config.get("decoder_attention_heads"):
        raise CheckpointError("encoder and decoder must share ffn size and head count", path=source)
    if config.get("model_type") == "deformable_detr":
        name = "deformable-detr-r50"
        if config.get("with_box_refine"):
            name = (
                "deformable-detr-r50-two-stage" if config.get("two_stage") else "deformable-detr-r50-refine"
            )
        options = {**common, "num_heads": config["encoder_attention_heads"], "num_encoder_layers": config["encoder_layers"],
                   "num_decoder_layers": config["decoder_layers"], "dim_feedforward": config["encoder_ffn_dim"],
                   "num_feature_levels": config.get("num_feature_levels", 4), "enc_n_points": config.get("encoder_n_points", 4),
                   "dec_n_points": config.get("decoder_n_points", 4), "with_box_refine": bool(config.get("with_box_refine")),
                   "two_stage": bool(config.get("two_stage")), "cost_class": config.get("class_cost", 2),
                   "focal_alpha": config.get("focal_alpha", 0.25)}  # fmt: skip
    else:
        if config.get("position_embedding_type", "sine") != "sine":
            raise CheckpointError("only sine position embeddings are supported (DETR's default)", path=source)
        if config.get("activation_function", "relu") != "relu":
            raise CheckpointError("only ReLU feed-forward activations are supported", path=source)
        name = {"resnet18": "detr-r18", "resnet101": "detr-r101"}.get(bb["backbone"], "detr-r50")
        options = {**common, **bb, "num_heads": config["encoder_attention_heads"], "num_encoder_layers": config["encoder_layers"],
                   "num_decoder_layers": config["decoder_layers"], "dim_feedforward": config["encoder_ffn_dim"],
                   "eos_coef": config.get("eos_coefficient", 0.1), "cost_class": config.get("class_cost", 1)}  # fmt: skip
    model = build_model(name, num_classes=n, **options)
    _load_state(model, state, config, strict=True)
    model.class_names = names if n == len(names) else None
    model.build_options = options
    return model
