"""Model-family adapters: everything that differs between video diffusion families.

This module imports no torch, so the API can validate requests against the same rules the worker applies.
Adding a family means adding one `ModelFamily` entry here and one tiny builder in `reins.tiny`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

GuidanceLayout = Literal["separate_calls", "batched_uncond_first"]


@dataclass(frozen=True)
class ModelFamily:
    """Layout and input rules of one diffusers video pipeline family."""

    name: str
    pipeline_class: str
    # Pipeline attributes that hold transformers, in denoising order. Missing or None attributes are skipped.
    transformer_attrs: tuple[str, ...]
    # Attribute of the transformer that holds the list of blocks to hook.
    blocks_attr: str
    # Position of the hidden state in a block's output when the block returns a tuple; None when it returns a tensor.
    hidden_state_index: int | None
    guidance_layout: GuidanceLayout
    # Frame counts must satisfy (num_frames - 1) % frame_multiple == 0.
    frame_multiple: int
    # Height and width must be multiples of this.
    spatial_multiple: int
    text_token_limit: int
    default_height: int
    default_width: int
    default_num_frames: int

    def frame_count_error(self, num_frames: int) -> str | None:
        """Return why `num_frames` is invalid for this family, with the nearest valid count, or None if valid."""
        if num_frames < 1:
            return f"must be at least 1, got {num_frames}"
        if (num_frames - 1) % self.frame_multiple == 0:
            return None
        lower = num_frames - (num_frames - 1) % self.frame_multiple
        upper = lower + self.frame_multiple
        # A tie goes to the lower count, which is also what diffusers rounds to.
        nearest = lower if num_frames - lower <= upper - num_frames else upper
        return (
            f"must be {self.frame_multiple}k+1 for {self.name} models (1, {1 + self.frame_multiple}, "
            f"{1 + 2 * self.frame_multiple}, ...), got {num_frames}; the nearest valid value is {nearest}"
        )

    def size_error(self, size: int) -> str | None:
        """Return why a height or width is invalid for this family, with the nearest valid value, or None if valid."""
        step = self.spatial_multiple
        if size < step:
            return f"must be at least {step}, got {size}"
        if size % step == 0:
            return None
        lower = size - size % step
        upper = lower + step
        nearest = lower if size - lower <= upper - size else upper
        return f"must be divisible by {step} for {self.name} models, got {size}; the nearest valid value is {nearest}"

    def transformers(self, pipeline: Any) -> list[Any]:
        """Return the transformers present in `pipeline`, in denoising order."""
        found = [getattr(pipeline, attr, None) for attr in self.transformer_attrs]
        return [module for module in found if module is not None]

    def blocks(self, transformer: Any) -> Any:
        """Return the block list (a `torch.nn.ModuleList`) of one transformer."""
        return getattr(transformer, self.blocks_attr)

    def hidden_size(self, transformer: Any) -> int:
        """Return the width of the hidden states that leave a block."""
        config = transformer.config
        return int(config.num_attention_heads * config.attention_head_dim)


WAN = ModelFamily(
    name="wan",
    pipeline_class="WanPipeline",
    transformer_attrs=("transformer", "transformer_2"),
    blocks_attr="blocks",
    hidden_state_index=None,
    # WanPipeline calls the transformer once for the conditional branch and once for the unconditional one.
    guidance_layout="separate_calls",
    # Wan's VAE compresses time by 4, so frame counts are 4k+1; diffusers rounds other counts with a warning.
    frame_multiple=4,
    spatial_multiple=16,
    # Wan's UMT5 text encoder is run with max_sequence_length=512 by WanPipeline.
    text_token_limit=512,
    default_height=480,
    default_width=832,
    default_num_frames=81,
)

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (WAN,)}


def get_family(name: str) -> ModelFamily:
    """Return the adapter for a family name, raising ValueError with the known names if it is unknown."""
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unknown model family {name!r}; known families: {known}") from None


def family_for_pipeline(pipeline: Any) -> ModelFamily:
    """Return the adapter whose pipeline class matches `pipeline`."""
    class_name = type(pipeline).__name__
    for family in FAMILIES.values():
        if family.pipeline_class == class_name:
            return family
    raise ValueError(f"no model family handles pipeline class {class_name}; known families: {', '.join(FAMILIES)}")
