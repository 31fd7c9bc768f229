"""Tiny LTX-Video pipelines: text-to-video and image-to-video."""

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
    text_dim: int
    latent_channels: int
    # Channels of the first VAE encoder block. Later blocks have 2x and 4x as many, like the released encoder. It is
    # a multiple of 8 because the 0.9.1 decoder's residual upsamplers fold channels into 2x2x2 blocks.
    vae_width: int


_SHAPES = {
    "tiny": _Shape(4, 2, 12, 32, 8, 8),
    "small": _Shape(8, 4, 16, 64, 16, 16),
}
# The VAE below compresses like the released one (32x in space, 8x in time), so these sizes obey the adapter's rules.
# 64x64 with 9 frames makes 2 latent frames of 2x2 tokens, and 128x128 with 17 frames makes 3 of 4x4 tokens.
_DEFAULTS = {
    "tiny": GenerationDefaults(height=64, width=64, num_frames=9, num_inference_steps=4),
    "small": GenerationDefaults(height=128, width=128, num_frames=17, num_inference_steps=8),
}


def _transformer(shape: _Shape):
    from diffusers import LTXVideoTransformer3DModel

    hidden = shape.num_attention_heads * shape.attention_head_dim
    # Patch size 1 in space and time, as in the released checkpoints, so one latent pixel is one token.
    # The caption projection maps the text encoder's width to `hidden`, which cross-attention then reads.
    return LTXVideoTransformer3DModel(
        in_channels=shape.latent_channels,
        out_channels=shape.latent_channels,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=shape.num_attention_heads,
        attention_head_dim=shape.attention_head_dim,
        cross_attention_dim=hidden,
        num_layers=shape.num_layers,
        caption_channels=shape.text_dim,
    )


def _vae(shape: _Shape, timestep_conditioning: bool):
    from diffusers import AutoencoderKLLTXVideo

    # Both layouts keep the released compression: patch size 4 and three encoder blocks that halve space and time
    # give 32x spatial and 8x temporal compression. The decoder_* arguments default to the full-size decoder, so
    # they are always set.
    width = shape.vae_width
    if timestep_conditioning:
        # The LTX-Video 0.9.1 decoder: three timestep-conditioned blocks whose residual upsamplers also halve the
        # channels. Its noise injection stays off, because diffusers 0.42.1 draws that noise from the global torch
        # RNG, so two runs with the same seed would differ.
        decoder = dict(
            decoder_block_out_channels=(width, 2 * width, 4 * width),
            decoder_layers_per_block=(1, 1, 1, 1),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(False,) * 4,
            upsample_residual=(True,) * 3,
            upsample_factor=(2,) * 3,
        )
    else:
        # The LTX-Video 0.9.0 decoder: the encoder's layout mirrored, with no timestep conditioning.
        decoder = dict(
            decoder_block_out_channels=(width, 2 * width, 4 * width, 4 * width),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            decoder_spatio_temporal_scaling=(True, True, True, False),
            decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4,
            upsample_factor=(1,) * 4,
        )
    return AutoencoderKLLTXVideo(
        latent_channels=shape.latent_channels,
        block_out_channels=(width, 2 * width, 4 * width, 4 * width),
        layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        timestep_conditioning=timestep_conditioning,
        patch_size=4,
        patch_size_t=1,
        **decoder,
    )


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # The scheduler that diffusers' scripts/convert_ltx_to_diffusers.py saves with LTX-Video. The pipelines compute
    # `mu` from the latent sequence length, which needs dynamic shifting.
    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )


def _components(size: str, seed: int, timestep_conditioning: bool) -> dict:
    shape = _SHAPES[size]
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    return dict(
        tokenizer=tokenizer,
        text_encoder=t5_encoder(tokenizer, shape.text_dim),
        transformer=_transformer(shape),
        vae=_vae(shape, timestep_conditioning),
        scheduler=_scheduler(),
    )


def build_ltx(size: str, seed: int):
    """LTX-Video text-to-video with the timestep-conditioned LTX-Video 0.9.1 decoder, without its noise injection."""
    from diffusers import LTXPipeline

    return LTXPipeline(**_components(size, seed, timestep_conditioning=True))


def build_ltx_i2v(size: str, seed: int):
    """LTX-Video image-to-video: the input image is encoded as the first latent frame, which is never denoised."""
    from diffusers import LTXImageToVideoPipeline

    # The LTX-Video 0.9.0 decoder has no timestep conditioning. A timestep-conditioned one would fail batches here,
    # because in diffusers 0.42.1 this pipeline draws its decode noise with torch.randn, which rejects the list of
    # generators (one seed per sample) that a batch passes.
    return LTXImageToVideoPipeline(**_components(size, seed, timestep_conditioning=False))


TINY_MODELS = (
    TinyModel("ltx", "ltx", build_ltx, _DEFAULTS),
    TinyModel("ltx-i2v", "ltx-i2v", build_ltx_i2v, _DEFAULTS),
)
