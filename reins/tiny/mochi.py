"""Tiny Mochi 1 text-to-video pipelines."""

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
    # The caption's attention pool has 8 heads, so this is a multiple of 8.
    text_dim: int
    # The VAE's group norms have 32 groups, so this is a multiple of 32.
    vae_channels: int


_SHAPES = {
    "tiny": _Shape(2, 2, 12, 32, 32),
    "small": _Shape(8, 4, 16, 64, 32),
}
_DEFAULTS = {
    "tiny": GenerationDefaults(height=32, width=32, num_frames=7, num_inference_steps=4),
    "small": GenerationDefaults(height=128, width=128, num_frames=19, num_inference_steps=8),
}
# MochiPipeline denormalises latents with a view of 12 channels, so every Mochi VAE has 12 latent channels.
_LATENT_CHANNELS = 12


def _transformer(shape: _Shape):
    from diffusers import MochiTransformer3DModel

    return MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=shape.num_attention_heads,
        attention_head_dim=shape.attention_head_dim,
        num_layers=shape.num_layers,
        pooled_projection_dim=16,
        in_channels=_LATENT_CHANNELS,
        text_embed_dim=shape.text_dim,
        time_embed_dim=16,
    )


def _vae(shape: _Shape):
    from diffusers import AutoencoderKLMochi

    channels = (shape.vae_channels,) * 4
    # The pipeline assumes the released VAE's compression: 2 x 2 x 2 in space and 1 x 2 x 3 in time, as here.
    return AutoencoderKLMochi(
        encoder_block_out_channels=channels,
        decoder_block_out_channels=channels,
        latent_channels=_LATENT_CHANNELS,
        layers_per_block=(1, 1, 1, 1, 1),
        temporal_expansions=(1, 2, 3),
        spatial_expansions=(2, 2, 2),
        add_attention_block=(False, False, False, False, False),
    )


def build_mochi(size: str, seed: int):
    """Mochi 1 text-to-video: T5 text encoder, one transformer, the 8x spatial and 6x temporal VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline

    shape = _SHAPES[size]
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = t5_encoder(tokenizer, shape.text_dim)
    transformer = _transformer(shape)
    vae = _vae(shape)
    # MochiPipeline passes sigmas that fall from 1 and relies on the scheduler to invert them into Mochi's reversed
    # timesteps (FlowMatchEulerDiscreteScheduler documents invert_sigmas as needed only for Mochi).
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    pipeline = MochiPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             transformer=transformer)
    # T5 has dropout, which a freshly built module applies until it is in eval mode.
    for component in (text_encoder, transformer, vae):
        component.eval()
    return pipeline


TINY_MODELS = (TinyModel("mochi", "mochi", build_mochi, _DEFAULTS),)
