"""Tiny Wan 2.1 and Wan 2.2 pipelines."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reins.tiny import GenerationDefaults, TinyModel
from reins.tiny.text import t5_encoder, t5_tokenizer


@dataclass(frozen=True)
class _Shape:
    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    ffn_dim: int
    text_dim: int
    vae_base_dim: int


_SHAPES = {
    "tiny": _Shape(4, 2, 12, 48, 32, 3),
    "small": _Shape(8, 4, 16, 128, 64, 8),
}
_DEFAULTS = {
    "tiny": GenerationDefaults(height=32, width=32, num_frames=9, num_inference_steps=4),
    "small": GenerationDefaults(height=128, width=128, num_frames=17, num_inference_steps=8),
}
_LATENT_CHANNELS = 4


def _transformer(shape: _Shape, in_channels: int = _LATENT_CHANNELS, **extra):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=shape.num_attention_heads,
        attention_head_dim=shape.attention_head_dim,
        in_channels=in_channels,
        out_channels=_LATENT_CHANNELS,
        text_dim=shape.text_dim,
        freq_dim=32,
        ffn_dim=shape.ffn_dim,
        num_layers=shape.num_layers,
        rope_max_seq_len=64,
        **extra,
    )


def _vae(shape: _Shape, **extra):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=shape.vae_base_dim,
        z_dim=_LATENT_CHANNELS,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * _LATENT_CHANNELS,
        latents_std=[1.0] * _LATENT_CHANNELS,
        **extra,
    )


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def build_wan(size: str, seed: int):
    """Wan 2.1 text-to-video: UMT5 text encoder, one transformer, the 8x spatial VAE."""
    from diffusers import WanPipeline

    shape = _SHAPES[size]
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = t5_encoder(tokenizer, shape.text_dim, umt5=True)
    transformer = _transformer(shape)
    vae = _vae(shape)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=_scheduler())


def build_wan_i2v(size: str, seed: int):
    """Wan 2.1 image-to-video: adds a CLIP image encoder, image cross-attention and the image latents as input."""
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    shape = _SHAPES[size]
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = t5_encoder(tokenizer, shape.text_dim, umt5=True)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=16, projection_dim=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, image_size=32, patch_size=8)
    )
    hidden = shape.num_attention_heads * shape.attention_head_dim
    # The transformer receives the noisy latents, a 4-channel frame mask and the encoded input image, stacked.
    transformer = _transformer(shape, in_channels=2 * _LATENT_CHANNELS + 4, image_dim=16, added_kv_proj_dim=hidden)
    vae = _vae(shape)
    image_processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    return WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=_scheduler(),
        image_processor=image_processor, image_encoder=image_encoder, transformer=transformer,
    )


def build_wan22_ti2v(size: str, seed: int):
    """Wan 2.2 TI2V-5B layout: a residual VAE with 16x spatial compression and per-token timesteps."""
    from diffusers import WanPipeline

    shape = _SHAPES[size]
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = t5_encoder(tokenizer, shape.text_dim, umt5=True)
    transformer = _transformer(shape)
    vae = _vae(shape, is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=_scheduler(), expand_timesteps=True)


def build_wan22_a14b(size: str, seed: int):
    """Wan 2.2 A14B layout: a second transformer (the low-noise expert) below the boundary timestep."""
    from diffusers import WanPipeline

    shape = _SHAPES[size]
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = t5_encoder(tokenizer, shape.text_dim, umt5=True)
    transformer = _transformer(shape)
    transformer_2 = _transformer(shape)
    vae = _vae(shape)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                       transformer_2=transformer_2, vae=vae, scheduler=_scheduler(), boundary_ratio=0.875)


_DEFAULTS_32 = {
    "tiny": GenerationDefaults(height=64, width=64, num_frames=9, num_inference_steps=4),
    "small": GenerationDefaults(height=128, width=128, num_frames=17, num_inference_steps=8),
}

TINY_MODELS = (
    TinyModel("wan", "wan", build_wan, _DEFAULTS),
    TinyModel("wan-i2v", "wan-i2v", build_wan_i2v, _DEFAULTS),
    TinyModel("wan2.2-ti2v", "wan2.2-ti2v", build_wan22_ti2v, _DEFAULTS_32),
    TinyModel("wan2.2-a14b", "wan2.2-a14b", build_wan22_a14b, _DEFAULTS),
)
