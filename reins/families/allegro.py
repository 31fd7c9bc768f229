"""Allegro text-to-video adapter.

Facts below are read from diffusers 0.42 (pipelines/allegro/pipeline_allegro.py,
models/transformers/transformer_allegro.py and models/autoencoders/autoencoder_kl_allegro.py).
"""

from __future__ import annotations

import math
from typing import Any

from reins.families import BlockList, ModelFamily

# AutoencoderKLAllegro decodes only through tiles of 24 frames, which are 6 latent frames, and moves each tile on by
# 16 frames, which are 4 latent frames. The frame tile size is fixed in the VAE's code, not in its config.
_TEMPORAL_COMPRESSION = 4
_TILE_LATENT_FRAMES = 6
_TILE_LATENT_STRIDE = 4
# Valid counts come in groups every 16 frames, so a search this far either side of a count always finds one.
_SEARCH_SPAN = 32


def latent_frame_count(num_frames: int) -> int:
    """Return how many latent frames AllegroPipeline.prepare_latents makes for `num_frames` video frames."""
    if num_frames % 2 == 0:
        return math.ceil(num_frames / _TEMPORAL_COMPRESSION)
    return math.ceil((num_frames - 1) / _TEMPORAL_COMPRESSION) + 1


def _decodes_every_frame(num_frames: int) -> bool:
    latent_frames = latent_frame_count(num_frames)
    return latent_frames >= _TILE_LATENT_FRAMES and (latent_frames - _TILE_LATENT_FRAMES) % _TILE_LATENT_STRIDE == 0


class AllegroFamily(ModelFamily):
    """Adapter whose frame rule follows the VAE's fixed decoding tiles instead of the base (num_frames - 1) rule."""

    def frame_count_error(self, num_frames: int) -> str | None:
        """Return why `num_frames` is invalid for Allegro, with the nearest valid count, or None if valid.

        A count is valid when its latent frames fill whole decoding tiles: 6, 10, 14, ... latent frames. With fewer
        than 6 latent frames the VAE decodes nothing, and latent frames past the last whole tile decode to blank
        frames. The pipeline crops the decoded frames to `num_frames`, so four counts share each latent length
        (19, 21, 22 and 24 all make 6 latent frames).
        """
        if num_frames < 1:
            return f"must be at least 1, got {num_frames}"
        if self.max_num_frames is not None and num_frames > self.max_num_frames:
            return f"must be at most {self.max_num_frames} for {self.name} models, got {num_frames}"
        if _decodes_every_frame(num_frames):
            return None
        candidates = [count for count in range(max(1, num_frames - _SEARCH_SPAN), num_frames + _SEARCH_SPAN)
                      if _decodes_every_frame(count)]
        # A tie goes to the lower count, as in the base rule.
        nearest = min(candidates, key=lambda count: (abs(count - num_frames), count))
        return (
            f"must make 6, 10, 14, ... latent frames for {self.name} models (for example 24, 40, 56, 72 or 88 frames), "
            f"got {num_frames}; the nearest valid value is {nearest}"
        )

    def prepare_pipeline(self, pipeline: Any) -> None:
        """Turn on the VAE settings that decoding needs, because `from_pretrained` restores neither of them.

        Tiled decoding is the VAE's only decoding path, and it handles one video at a time, so a batch also needs
        slicing, which decodes each sample on its own.
        """
        pipeline.vae.enable_tiling()
        pipeline.vae.enable_slicing()


ALLEGRO = AllegroFamily(
    name="allegro",
    pipeline_class="AllegroPipeline",
    # AllegroTransformerBlock returns the hidden-state tensor alone.
    block_lists=(BlockList("transformer_blocks"),),
    # With guidance_scale > 1 the pipeline concatenates [negative, positive] prompt embeddings and runs one
    # transformer call on the doubled batch. It sets no cache context.
    guidance_layout="batched_uncond_first",
    guidance_threshold=1.0,
    # AllegroFamily.frame_count_error does not read this. It is the VAE's temporal compression.
    frame_multiple=_TEMPORAL_COMPRESSION,
    # The VAE compresses space by 8 (four blocks) and the transformer's patch is 2.
    # NOTE: the VAE decodes in square tiles of its config's sample_size, which overlap by a fixed 120 pixels
    # vertically and 80 horizontally. With the default sample_size of 320 (assumed, not checked, for the released
    # VAE) only heights of 320 + 200k and widths of 320 + 240k are fully decoded; 720 x 1280 is. At other sizes the
    # uncovered bottom and right borders come out blank, and this size rule does not reject them.
    spatial_multiple=16,
    # AllegroPipeline's max_sequence_length default (T5 tokens).
    text_token_limit=512,
    # The transformer config's sample size (22 latent frames, 90 x 160 latents) times the VAE's compression, which
    # is what the pipeline uses when no size is given.
    default_height=720,
    default_width=1280,
    default_num_frames=88,
)

FAMILIES = (ALLEGRO,)
