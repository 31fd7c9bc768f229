"""Wan 2.1 and Wan 2.2 adapters."""

from __future__ import annotations

from typing import Any

from reins.families import BlockList, ModelFamily

# Wan's VAE compresses time by 4, so frame counts are 4k+1 (diffusers rounds other counts down, with a warning).
# Wan 2.1's VAE compresses space by 8 and the transformer's patch is 2, so sizes are multiples of 16.
# WanPipeline encodes prompts with max_sequence_length=512.
_COMMON = dict(
    block_lists=(BlockList("blocks"),),
    guidance_layout="separate_calls",
    frame_multiple=4,
    spatial_multiple=16,
    text_token_limit=512,
    default_height=480,
    default_width=832,
    default_num_frames=81,
)


def _is_wan22_ti2v(pipeline: Any) -> bool:
    return bool(getattr(pipeline.config, "expand_timesteps", False))


def _is_two_expert(pipeline: Any) -> bool:
    return getattr(pipeline, "transformer_2", None) is not None


WAN = ModelFamily(name="wan", pipeline_class="WanPipeline", **_COMMON)

WAN_I2V = ModelFamily(
    name="wan-i2v",
    pipeline_class="WanImageToVideoPipeline",
    image_input="required",
    transformer_attrs=("transformer", "transformer_2"),
    **_COMMON,
)

# Wan 2.2 TI2V-5B: a VAE with 16x spatial compression, so sizes are multiples of 32; text-to-video through
# WanPipeline with expand_timesteps set.
WAN22_TI2V = ModelFamily(
    name="wan2.2-ti2v",
    pipeline_class="WanPipeline",
    matches=_is_wan22_ti2v,
    **{**_COMMON, "spatial_multiple": 32, "default_height": 704, "default_width": 1280, "default_num_frames": 121},
)

# Wan 2.2 A14B: a second transformer takes the low-noise steps (below the pipeline's boundary_ratio). Both experts
# carry a steering hook; one that is absent is skipped.
WAN22_A14B = ModelFamily(
    name="wan2.2-a14b",
    pipeline_class="WanPipeline",
    matches=_is_two_expert,
    transformer_attrs=("transformer", "transformer_2"),
    **_COMMON,
)

FAMILIES = (WAN, WAN_I2V, WAN22_TI2V, WAN22_A14B)
