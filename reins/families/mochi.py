"""Mochi 1 text-to-video adapter.

Facts below are read from diffusers 0.42 (pipelines/mochi/pipeline_mochi.py, models/transformers/transformer_mochi.py
and models/autoencoders/autoencoder_kl_mochi.py).
"""

from __future__ import annotations

from reins.families import BlockList, ModelFamily

MOCHI = ModelFamily(
    name="mochi",
    pipeline_class="MochiPipeline",
    # MochiTransformerBlock returns (hidden_states, encoder_hidden_states). The last block only reads the text
    # (context_pre_only) and returns it unchanged, which leaves index 0 the video tokens in every block.
    block_lists=(BlockList("transformer_blocks", 0),),
    # With guidance_scale > 1 the pipeline concatenates [negative, positive] prompt embeddings and runs one
    # transformer call on the doubled batch, inside cache_context("cond_uncond").
    guidance_layout="batched_uncond_first",
    guidance_threshold=1.0,
    # The pipeline fixes the VAE's temporal compression at 6 and makes (num_frames - 1) // 6 + 1 latent frames;
    # the VAE decodes 6 frames per latent frame and drops the first 5, giving 6k+1 frames.
    frame_multiple=6,
    # The pipeline fixes the VAE's spatial compression at 8 and the transformer's patch is 2. check_inputs only
    # requires multiples of 8, but a latent side that is not even breaks the transformer's unpatchify reshape.
    spatial_multiple=16,
    # MochiPipeline's max_sequence_length default (T5 tokens).
    text_token_limit=256,
    # MochiPipeline's default_height, default_width and __call__'s num_frames default.
    default_height=480,
    default_width=848,
    default_num_frames=19,
)

FAMILIES = (MOCHI,)
