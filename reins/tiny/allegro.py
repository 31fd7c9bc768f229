"""Tiny Allegro text-to-video pipelines."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reins.families import get_family
from reins.tiny import GenerationDefaults, TinyModel
from reins.tiny.text import t5_encoder, t5_tokenizer


@dataclass(frozen=True)
class _Shape:
    num_layers: int
    num_attention_heads: int
    # Allegro's rotary embedding gives a third of each head to frames, height and width, so this is a multiple of 6.
    attention_head_dim: int
    text_dim: int
    vae_channels: int


_SHAPES = {
    "tiny": _Shape(2, 2, 12, 32, 8),
    "small": _Shape(8, 4, 18, 64, 16),
}
# 24 frames are 6 latent frames, one whole decoding tile of the VAE and the fewest that decode at all.
_DEFAULTS = {
    "tiny": GenerationDefaults(height=32, width=32, num_frames=24, num_inference_steps=4),
    "small": GenerationDefaults(height=128, width=128, num_frames=24, num_inference_steps=8),
}
_LATENT_CHANNELS = 4


def _transformer(shape: _Shape, height: int, width: int):
    from diffusers import AllegroTransformer3DModel

    hidden = shape.num_attention_heads * shape.attention_head_dim
    return AllegroTransformer3DModel(
        patch_size=2,
        patch_size_t=1,
        num_attention_heads=shape.num_attention_heads,
        attention_head_dim=shape.attention_head_dim,
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        num_layers=shape.num_layers,
        # Cross-attention reads the caption projected to the hidden width, as in diffusers' defaults (2304 = 24 x 96).
        cross_attention_dim=hidden,
        caption_channels=shape.text_dim,
        # The pipeline's size when none is given, in latent units.
        sample_height=height // 8,
        sample_width=width // 8,
        sample_frames=6,
    )


def _vae(shape: _Shape, size: int):
    from diffusers import AutoencoderKLAllegro

    # Four blocks give the released VAE's 8x spatial compression, and the default temporal blocks give 4x in time.
    # sample_size sets the VAE's square decoding tile (320 pixels by default). Neighbouring tiles overlap by a fixed
    # 120 and 80 pixels, more than a tiny frame, so here one tile is exactly the default frame and has no neighbour.
    return AutoencoderKLAllegro(
        block_out_channels=(shape.vae_channels,) * 4,
        latent_channels=_LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=size,
    )


def build_allegro(size: str, seed: int):
    """Allegro text-to-video: T5 text encoder, one transformer, a VAE that decodes in tiles."""
    from diffusers import AllegroPipeline, EulerAncestralDiscreteScheduler

    shape = _SHAPES[size]
    defaults = _DEFAULTS[size]
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = t5_encoder(tokenizer, shape.text_dim)
    transformer = _transformer(shape, defaults.height, defaults.width)
    vae = _vae(shape, defaults.height)
    pipeline = AllegroPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=EulerAncestralDiscreteScheduler())
    # The same VAE settings that loading applies, so a pipeline built in memory decodes too.
    get_family("allegro").prepare_pipeline(pipeline)
    # T5 and the VAE's temporal layers have dropout, which a freshly built module applies until it is in eval mode.
    for component in (text_encoder, transformer, vae):
        component.eval()
    return pipeline


TINY_MODELS = (TinyModel("allegro", "allegro", build_allegro, _DEFAULTS),)
