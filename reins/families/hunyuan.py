"""HunyuanVideo text-to-video adapter.

Facts below are read from diffusers 0.42 (pipelines/hunyuan_video/pipeline_hunyuan_video.py and
models/transformers/transformer_hunyuan_video.py).
"""

from __future__ import annotations

from reins.families import BlockList, ModelFamily

HUNYUAN = ModelFamily(
    name="hunyuan",
    pipeline_class="HunyuanVideoPipeline",
    # The transformer runs its dual-stream blocks, then its single-stream blocks (20 and 40 in the released model).
    # Both kinds return (hidden_states, encoder_hidden_states). Single-stream blocks split the joint sequence back
    # into video and text before returning, so index 0 is the video tokens alone.
    block_lists=(BlockList("transformer_blocks", 0), BlockList("single_transformer_blocks", 0)),
    # `guidance_scale` only feeds the transformer's embedded (distilled) guidance and never runs an unconditional
    # pass. Real classifier-free guidance runs when true_cfg_scale > 1 and a negative prompt is given, as a second
    # transformer call inside cache_context("uncond") after the conditional call in cache_context("cond").
    guidance_layout="separate_calls",
    guidance_argument="true_cfg_scale",
    guidance_threshold=1.0,
    # The VAE compresses time by 4 and prepare_latents makes (num_frames - 1) // 4 + 1 latent frames.
    frame_multiple=4,
    # check_inputs requires multiples of 16: the VAE compresses space by 8 and the transformer's patch is 2.
    spatial_multiple=16,
    # max_sequence_length defaults to 256 Llama tokens after the prompt template's 95 tokens are cropped off.
    text_token_limit=256,
    # HunyuanVideoPipeline.__call__ defaults.
    default_height=720,
    default_width=1280,
    default_num_frames=129,
)

FAMILIES = (HUNYUAN,)
