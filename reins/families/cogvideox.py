"""CogVideoX text-to-video and image-to-video adapters.

Facts below are read from diffusers 0.42.1: `pipelines/cogvideo/pipeline_cogvideox.py`,
`pipelines/cogvideo/pipeline_cogvideox_image2video.py`, `models/transformers/cogvideox_transformer_3d.py` and
`models/embeddings.py` (`CogVideoXPatchEmbed`).
"""

from __future__ import annotations

from reins.families import BlockList, ModelFamily

# CogVideoXTransformer3DModel runs `transformer_blocks` in order. Each CogVideoXBlock returns
# (hidden_states, encoder_hidden_states), so the video tokens are at index 0 and the text tokens at index 1.
#
# Both pipelines make one transformer call per step on the doubled batch torch.cat([latents] * 2), with the prompt
# embeddings stacked as [negative, positive], and split the prediction with chunk(2) as (uncond, text). Guidance runs
# when guidance_scale > 1.0.
#
# The VAE compresses time by 4 and the pipelines compute (num_frames - 1) // 4 + 1 latent frames, so frame counts are
# 4k+1 (other counts are rounded down without a warning). The CogVideoX 1.5 checkpoints (patch_size_t=2) pad the
# latent frames to an even count and drop the padding before decoding, so they keep the same rule.
#
# check_inputs only requires multiples of 8, but the transformer's 2x2 patch embedding and its unpatchify need even
# latent sides, so with the 8x spatial VAE the sizes are multiples of 16.
#
# The pipelines' max_sequence_length defaults to 226, the transformer's max_text_seq_length. CogVideoX-2b adds fixed
# positional embeddings that assume exactly this many text tokens.
#
# Defaults are the CogVideoX 1.0 size (2b, 5b and 5b-I2V), which the pipeline docstrings give as 480x720 and 49 frames
# (6 seconds at 8 fps, plus one). They match the transformer's default sample_height=60, sample_width=90 (latents,
# times the VAE's 8) and sample_frames=49.
_COMMON = {
    "block_lists": (BlockList("transformer_blocks", hidden_state_index=0),),
    "guidance_layout": "batched_uncond_first",
    "frame_multiple": 4,
    "spatial_multiple": 16,
    "text_token_limit": 226,
    "default_height": 480,
    "default_width": 720,
    "default_num_frames": 49,
    "guidance_argument": "guidance_scale",
    "guidance_threshold": 1.0,
}

COGVIDEOX = ModelFamily(name="cogvideox", pipeline_class="CogVideoXPipeline", **_COMMON)

# CogVideoXImageToVideoPipeline encodes the image as the first latent frame and stacks it with the noisy latents on
# the channel axis. Its prepare_latents encodes image[i] with generator[i] when the generators are a list, so a batch
# needs one image per sample.
# NOTE: CogVideoX-5b-I2V uses learned positional embeddings, and diffusers raises ValueError for any size other than
# its 480x720. The 1.5 layout, with rotary embeddings only, takes other sizes, so size_error checks only the
# multiple of 16.
COGVIDEOX_I2V = ModelFamily(
    name="cogvideox-i2v",
    pipeline_class="CogVideoXImageToVideoPipeline",
    image_input="required",
    image_per_sample=True,
    **_COMMON,
)

FAMILIES = (COGVIDEOX, COGVIDEOX_I2V)
