"""Tiny CogVideoX text-to-video and image-to-video pipelines.

Both keep the real checkpoints' rules: a VAE with 8x spatial and 4x temporal compression, a 2x2 patch, 226 text
tokens. The text-to-video model has the CogVideoX-5b layout (rotary position embeddings, CogVideoXDPMScheduler). The
image-to-video model has the CogVideoX1.5-5B-I2V layout (patches of 2 latent frames, the "ofs" embedding that
diffusers documents as 1.5-I2V only, rotary position embeddings), so the tests also cover the pipelines' 1.5 code
paths.
"""

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
    time_embed_dim: int
    text_dim: int
    vae_block_out_channels: tuple[int, int, int, int]


_SHAPES = {
    "tiny": _Shape(4, 2, 16, 32, 32, (8, 8, 16, 16)),
    "small": _Shape(8, 4, 16, 64, 64, (16, 16, 32, 32)),
}
_DEFAULTS = {
    "tiny": GenerationDefaults(height=32, width=32, num_frames=9, num_inference_steps=4),
    "small": GenerationDefaults(height=128, width=128, num_frames=17, num_inference_steps=8),
}
_LATENT_CHANNELS = 4
_VAE_SPATIAL_COMPRESSION = 8
# CogVideoXPatchEmbed adds its fixed positional embeddings (when used) to exactly this many text tokens, and the
# pipelines pad every prompt to it.
_MAX_TEXT_TOKENS = 226


def _vae(shape: _Shape, size: str, **extra):
    from diffusers import AutoencoderKLCogVideoX

    # Four blocks give 2**3 = 8x spatial compression (the pipelines read it from len(block_out_channels)), and
    # temporal_compression_ratio=4 makes the first two blocks halve time.
    defaults = _DEFAULTS[size]
    return AutoencoderKLCogVideoX(
        block_out_channels=shape.vae_block_out_channels,
        latent_channels=_LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        sample_height=defaults.height,
        sample_width=defaults.width,
        **extra,
    )


def _transformer(shape: _Shape, size: str, **extra):
    from diffusers import CogVideoXTransformer3DModel

    defaults = _DEFAULTS[size]
    return CogVideoXTransformer3DModel(
        num_attention_heads=shape.num_attention_heads,
        attention_head_dim=shape.attention_head_dim,
        out_channels=_LATENT_CHANNELS,
        time_embed_dim=shape.time_embed_dim,
        text_embed_dim=shape.text_dim,
        num_layers=shape.num_layers,
        sample_frames=defaults.num_frames,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=_MAX_TEXT_TOKENS,
        use_rotary_positional_embeddings=True,
        **extra,
    )


def _scheduler():
    from diffusers import CogVideoXDPMScheduler

    # v-prediction on a zero-terminal-SNR schedule with trailing timesteps.
    # NOTE: these values are not checked against a released scheduler_config.json.
    return CogVideoXDPMScheduler(
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=1.0,
        timestep_spacing="trailing",
    )


def build_cogvideox(size: str, seed: int):
    """Build a CogVideoX-5b layout: T5 text encoder, one transformer with rotary position embeddings."""
    from diffusers import CogVideoXPipeline

    shape = _SHAPES[size]
    latent_side = _DEFAULTS[size].height // _VAE_SPATIAL_COMPRESSION
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = t5_encoder(tokenizer, shape.text_dim)
    # The sample size sets the pipeline's default height and width and the crop grid of the 1.0 rotary embeddings.
    transformer = _transformer(shape, size, in_channels=_LATENT_CHANNELS, sample_height=latent_side,
                               sample_width=latent_side)
    vae = _vae(shape, size)
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=_scheduler())


def build_cogvideox_i2v(size: str, seed: int):
    """Build a CogVideoX1.5-5B-I2V layout, which concatenates the encoded image to the noisy latents by channel."""
    from diffusers import CogVideoXImageToVideoPipeline

    shape = _SHAPES[size]
    latent_side = _DEFAULTS[size].height // _VAE_SPATIAL_COMPRESSION
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = t5_encoder(tokenizer, shape.text_dim)
    # The 1.5 rotary embeddings slice a grid of sample_height x sample_width latents, so that is the largest latent
    # size the model takes. Twice the default side leaves room for sizes up to twice the default.
    # NOTE: the pipeline's own default height and width (sample size times 8) are therefore twice the tiny defaults;
    # `generate` always passes the size.
    transformer = _transformer(
        shape,
        size,
        in_channels=2 * _LATENT_CHANNELS,
        sample_height=2 * latent_side,
        sample_width=2 * latent_side,
        patch_size_t=2,
        patch_bias=False,
        # The transformer adds the ofs embedding to the time embedding, so both have the same width.
        ofs_embed_dim=shape.time_embed_dim,
    )
    # With invert_scale_latents the pipeline divides the image latents by the scaling factor instead of multiplying
    # them. Setting it covers that branch; which released VAE config sets it is not checked here.
    vae = _vae(shape, size, invert_scale_latents=True)
    return CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                         transformer=transformer, scheduler=_scheduler())


TINY_MODELS = (
    TinyModel("cogvideox", "cogvideox", build_cogvideox, _DEFAULTS),
    TinyModel("cogvideox-i2v", "cogvideox-i2v", build_cogvideox_i2v, _DEFAULTS),
)
