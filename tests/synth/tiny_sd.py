"""A tiny, randomly initialised Stable Diffusion (+ ControlNet) for plumbing tests, offline."""

from __future__ import annotations

import json
from pathlib import Path


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2's ``bytes_to_unicode`` table)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def _tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single bytes: a 514-entry vocab file and an empty merges file."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _byte_chars():
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(str(folder), model_max_length=16)
    ids = tok("a photo of a disc").input_ids
    assert ids[0] == 0 and ids[-1] == 1 and len(ids) == len("aphotoofadisc") + 2  # one token per letter
    return tok


def tiny_sd_components(tok_folder: Path, *, unet_in_channels: int = 9) -> dict:
    """Randomly initialised SD components (UNet, VAE, CLIP text encoder, tokenizer, DDIM), tiny:
    keyword arguments of ``StableDiffusionInpaintPipeline`` (plus ``controlnet=`` for the
    ControlNet one)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=unet_in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=32,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=600,
            max_position_embeddings=16,
        )
    )
    return {
        "vae": vae,
        "text_encoder": text,
        "tokenizer": _tokenizer(tok_folder),
        "unet": unet,
        "scheduler": DDIMScheduler(steps_offset=1),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def tiny_controlnet():
    """A randomly initialised ``ControlNetModel`` matching :func:`tiny_sd_components`' UNet."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(1)
    return ControlNetModel(
        in_channels=4,
        conditioning_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        conditioning_embedding_out_channels=(16, 32),
    )
