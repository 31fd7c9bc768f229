"""The toy model's adapter: reins.toy's pixel-space pipeline around a tiny WanTransformer3DModel."""

from __future__ import annotations

from reins.families import BlockList, ModelFamily

# The transformer works on pixels with 1x4x4 patches, so sizes are multiples of 4 and any frame count is accepted.
# It was trained only on 3 frames of 16x16 (reins.toy.world), so other sizes run but show nothing it learned.
# ToyVideoPipeline, like WanPipeline, calls the transformer once per guidance branch inside cache_context.
TOY = ModelFamily(
    name="toy",
    pipeline_class="ToyVideoPipeline",
    block_lists=(BlockList("blocks"),),
    guidance_layout="separate_calls",
    frame_multiple=1,
    spatial_multiple=4,
    text_token_limit=16,
    default_height=16,
    default_width=16,
    default_num_frames=3,
)

FAMILIES = (TOY,)
