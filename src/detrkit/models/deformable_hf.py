"""Hugging Face ``DeformableDetrForObjectDetection`` state dicts -> :class:`~detrkit.models.deformable_detr.DeformableDETR`'s.

SenseTime/deformable-detr and its refine / two-stage variants, in the key naming of the installed
transformers version and in the older one of the files published on the Hub.
"""

from __future__ import annotations

import re

from torch import Tensor

__all__ = ["deformable_state_dict_from_hf"]


# Older transformers names -> current ones (transformers' conversion_mapping for deformable_detr).
_HF_OLD_TO_NEW = [
    (re.compile(r"backbone\.conv_encoder\."), "backbone."),
    (re.compile(r"self_attn\.out_proj\."), "self_attn.o_proj."),
    (re.compile(r"layers\.(\d+)\.fc([12])\."), r"layers.\1.mlp.fc\2."),
]
# Current transformers names -> ours: top-level prefixes, then per encoder/decoder layer.
_HF_PREFIXES = {
    "model.backbone.model.": "backbone.body.",
    "model.input_proj.": "input_proj.",
    "model.level_embed": "transformer.level_embed",
    "model.query_position_embeddings.": "transformer.query_embed.",
    "model.reference_points.": "transformer.reference_points.",
    "model.enc_output.": "transformer.enc_output.",
    "model.enc_output_norm.": "transformer.enc_output_norm.",
    "model.pos_trans.": "transformer.pos_trans.",
    "model.pos_trans_norm.": "transformer.pos_trans_norm.",
}
_HF_LAYER = {
    "encoder": {"self_attn.": "self_attn.", "self_attn_layer_norm.": "norm1.", "mlp.fc1.": "linear1.",
                "mlp.fc2.": "linear2.", "final_layer_norm.": "norm2."},
    "decoder": {"self_attn.q_proj.": "q_proj.", "self_attn.k_proj.": "k_proj.", "self_attn.v_proj.": "v_proj.",
                "self_attn.o_proj.": "out_proj.", "self_attn_layer_norm.": "norm1.", "encoder_attn.": "cross_attn.",
                "encoder_attn_layer_norm.": "norm2.", "mlp.fc1.": "linear1.", "mlp.fc2.": "linear2.",
                "final_layer_norm.": "norm3."},
}  # fmt: skip
_HF_LAYER_KEY = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_HF_HEAD_KEY = re.compile(r"^(model\.decoder\.)?(class_embed|bbox_embed)\.(\d+)\.(.+)$")


_TIMM_RESNET_KEY = re.compile(r"^(conv1|bn1|layer[1-4])\.")


def _hf_key_to_ours(key: str) -> str | None:
    for prefix, repl in _HF_PREFIXES.items():
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if prefix == "model.backbone.model." and not _TIMM_RESNET_KEY.match(rest):
                return None
            return repl + rest
    if m := _HF_LAYER_KEY.match(key):
        part, index, rest = m.groups()
        for prefix, repl in _HF_LAYER[part].items():
            if rest.startswith(prefix):
                return f"transformer.{part}_layers.{index}.{repl}{rest[len(prefix) :]}"
    return None


def deformable_state_dict_from_hf(hf_state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a ``DeformableDetrForObjectDetection`` state dict onto :class:`DeformableDETR`'s.

    Accepts the current transformers names and the older ones of checkpoints published on the Hub
    (``backbone.conv_encoder``, ``self_attn.out_proj``, ``layers.N.fc1``), with the timm ResNet
    backbone of the SenseTime checkpoints. Heads that transformers ties (shared across layers, or
    duplicated under ``model.decoder``) may be absent from a saved file: head ``i`` of the ``N``
    (+1 with two-stage) is ``class_embed.i``, else ``model.decoder.class_embed.i``, else
    ``class_embed.0`` (likewise ``bbox_embed``).

    Args:
        hf_state_dict: name -> tensor, as from ``model.state_dict()`` or a checkpoint file.
    Returns:
        A state dict for ``DeformableDETR.load_state_dict`` (the same tensors, not copies).
    Raises:
        ValueError: for keys without a counterpart (e.g. a non-timm backbone), naming them.
    """
    ours: dict[str, Tensor] = {}
    heads: dict[tuple[str, str], dict[int, dict[bool, Tensor]]] = {}  # (name, param) -> i -> copy -> t
    unknown = []
    for key, value in hf_state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, repl in _HF_OLD_TO_NEW:
            key = pattern.sub(repl, key)
        if m := _HF_HEAD_KEY.match(key):
            decoder_copy, name, index, rest = m.groups()
            heads.setdefault((name, rest), {}).setdefault(int(index), {})[decoder_copy is not None] = value
        elif (new_key := _hf_key_to_ours(key)) is not None:
            ours[new_key] = value
        else:
            unknown.append(key)
    if unknown:
        hint = ""
        if any(k.startswith("model.backbone.") for k in unknown):
            hint = " (only the timm ResNet backbone of the SenseTime checkpoints is supported)"
        raise ValueError(
            f"no Deformable DETR counterpart for {len(unknown)} key(s), e.g. {unknown[:3]}{hint}"
        )
    decoder_layers = {k.split(".")[2] for k in ours if k.startswith("transformer.decoder_layers.")}
    num_pred = len(decoder_layers) + int("transformer.enc_output.weight" in ours)
    for (name, rest), by_index in heads.items():
        for i in range(num_pred):
            copies = by_index.get(i) or by_index.get(0)
            if copies:
                ours[f"{name}.{i}.{rest}"] = copies.get(False, copies.get(True))
    return ours
