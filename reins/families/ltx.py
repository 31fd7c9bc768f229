"""LTX-Video adapters: text-to-video (LTXPipeline) and image-to-video (LTXImageToVideoPipeline).

Facts below are read from diffusers 0.42.1: pipelines/ltx/pipeline_ltx.py, pipelines/ltx/pipeline_ltx_image2video.py,
models/transformers/transformer_ltx.py and models/autoencoders/autoencoder_kl_ltx.py.
"""

from __future__ import annotations

from reins.families import BlockList, ModelFamily

# LTXVideoTransformer3DModel runs `transformer_blocks` in order, and each LTXVideoTransformerBlock returns the video
# hidden states as one tensor of shape (batch, tokens, num_attention_heads * attention_head_dim).
#
# With guidance on (guidance_scale > 1), __call__ stacks the prompt embeddings as [negative, positive] and makes one
# transformer call per step on torch.cat([latents] * 2), then splits the prediction with chunk(2) as (uncond, text).
#
# The released VAEs compress time by 8 and space by 32, with patch size 4 and then three blocks that halve space and
# time (the LTX-Video 0.9.0 and 0.9.1 configs in diffusers' scripts/convert_ltx_to_diffusers.py). The transformer's
# patch is 1x1x1, so frame counts are 8k+1 and sizes multiples of 32. check_inputs raises ValueError for sizes that
# are not multiples of 32. Other frame counts are rounded down to 8k+1 without a warning, because the latents get
# (num_frames - 1) // 8 + 1 frames.
#
# __call__ defaults to max_sequence_length=128 and to 512x704 with 161 frames.
#
# The LTX-Video 0.9.1 VAE decoder injects noise, which it draws from the global torch RNG because the pipelines
# call vae.decode without a generator. reins.pipelines.generate seeds that RNG from the request's seed, so two runs
# with the same seed still agree.
# One denoising step fails (IndexError in the scheduler) with the released scheduler config, because
# shift_terminal=0.1 divides by zero when it stretches the one-sigma schedule [1.0], so two steps is the minimum.
_COMMON = dict(
    block_lists=(BlockList("transformer_blocks"),),
    guidance_layout="batched_uncond_first",
    frame_multiple=8,
    spatial_multiple=32,
    text_token_limit=128,
    default_height=512,
    default_width=704,
    default_num_frames=161,
    guidance_argument="guidance_scale",
    guidance_threshold=1.0,
    min_inference_steps=2,
)

LTX = ModelFamily(name="ltx", pipeline_class="LTXPipeline", **_COMMON)

# The VAE encodes the input image into the first latent frame, which keeps timestep 0 and is never updated. With a
# list of generators, prepare_latents encodes image[i] with generator[i], so a batch needs one image per sample.
# NOTE: a batch with a list of generators raises TypeError on a timestep-conditioned VAE (LTX-Video 0.9.1, 0.9.5,
# 0.9.7 and 0.9.8, per diffusers' loaders/single_file_utils.py), because this pipeline draws the decode noise with
# torch.randn, which takes a single generator.
# Single-sample generation works with every VAE.
LTX_I2V = ModelFamily(
    name="ltx-i2v",
    pipeline_class="LTXImageToVideoPipeline",
    image_input="required",
    image_per_sample=True,
    **_COMMON,
)

FAMILIES = (LTX, LTX_I2V)
