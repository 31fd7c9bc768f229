"""Model-family adapters: everything that differs between diffusers video pipeline families.

This package imports no torch, so the API validates requests against the same rules the worker applies. Adding a
family means adding one `ModelFamily` (in a module of this package, listed in `_MODULES`) and one tiny builder in
`reins.tiny`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

GuidanceLayout = Literal["separate_calls", "batched_uncond_first"]
ImageInput = Literal["none", "required"]


@dataclass(frozen=True)
class BlockList:
    """One list of transformer blocks and where the video hidden state sits in each block's output."""

    attr: str
    # Position of the video hidden state in the block's output tuple; None when the block returns a tensor.
    hidden_state_index: int | None = None


@dataclass(frozen=True)
class ModelFamily:
    """Layout and input rules of one diffusers video pipeline family."""

    name: str
    pipeline_class: str
    block_lists: tuple[BlockList, ...]
    # "separate_calls": one transformer call per guidance branch, conditional first.
    # "batched_uncond_first": one call on a doubled batch, unconditional rows first.
    guidance_layout: GuidanceLayout
    # Frame counts must satisfy (num_frames - 1) % frame_multiple == 0.
    frame_multiple: int
    # Height and width must be multiples of this (VAE spatial compression times the transformer's patch size).
    spatial_multiple: int
    # The pipeline's max_sequence_length: longer prompts are truncated to this many tokens.
    text_token_limit: int
    default_height: int
    default_width: int
    default_num_frames: int
    # Pipeline attributes that hold transformers, in denoising order. Missing or None attributes are skipped.
    transformer_attrs: tuple[str, ...] = ("transformer",)
    image_input: ImageInput = "none"
    # The pipeline takes one input image per sample of a batch, so `generate` repeats a single image for each sample.
    image_per_sample: bool = False
    # Name of the pipeline argument that sets classifier-free guidance.
    guidance_argument: str = "guidance_scale"
    # Smallest guidance value that turns on the unconditional branch.
    guidance_threshold: float = 1.0
    # Extra test on a pipeline of class `pipeline_class`, for families that share a pipeline class.
    matches: Callable[[Any], bool] | None = None
    max_num_frames: int | None = None
    # Minimum number of denoising steps the pipeline's scheduler runs without error.
    min_inference_steps: int = 1

    def frame_count_error(self, num_frames: int) -> str | None:
        """Return why `num_frames` is invalid for this family, with the nearest valid count, or None if valid."""
        if num_frames < 1:
            return f"must be at least 1, got {num_frames}"
        if self.max_num_frames is not None and num_frames > self.max_num_frames:
            return f"must be at most {self.max_num_frames} for {self.name} models, got {num_frames}"
        if (num_frames - 1) % self.frame_multiple == 0:
            return None
        lower = num_frames - (num_frames - 1) % self.frame_multiple
        upper = lower + self.frame_multiple
        # A tie goes to the lower count, which is also what diffusers rounds to.
        nearest = lower if num_frames - lower <= upper - num_frames else upper
        m = self.frame_multiple
        return (
            f"must be {m}k+1 for {self.name} models (1, {1 + m}, {1 + 2 * m}, ...), got {num_frames}; "
            f"the nearest valid value is {nearest}"
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

    def blocks(self, transformer: Any) -> list[tuple[Any, int | None]]:
        """Return every hookable block of one transformer, in depth order, with its hidden-state index."""
        return [
            (block, block_list.hidden_state_index)
            for block_list in self.block_lists
            for block in getattr(transformer, block_list.attr)
        ]

    def depth(self, transformer: Any) -> int:
        return sum(len(getattr(transformer, block_list.attr)) for block_list in self.block_lists)

    def hidden_size(self, transformer: Any) -> int:
        """Return the width of the hidden states that leave a block."""
        config = transformer.config
        return int(config.num_attention_heads * config.attention_head_dim)

    def uses_guidance(self, guidance_scale: float) -> bool:
        return guidance_scale > self.guidance_threshold

    def prepare_pipeline(self, pipeline: Any) -> None:
        """Apply settings that this family's pipeline needs to run and `from_pretrained` does not restore."""


# Modules that define families; each exports FAMILIES, a tuple of ModelFamily.
_MODULES = ("wan", "cogvideox", "ltx", "allegro", "hunyuan", "mochi", "toy")


def _load_families() -> dict[str, ModelFamily]:
    families: dict[str, ModelFamily] = {}
    for module_name in _MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        for family in module.FAMILIES:
            if family.name in families:
                raise RuntimeError(f"family {family.name!r} is defined twice")
            families[family.name] = family
    return families


FAMILIES: dict[str, ModelFamily] = _load_families()


def get_family(name: str) -> ModelFamily:
    """Return the adapter for a family name, raising ValueError with the known names if it is unknown."""
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unknown model family {name!r}; known families: {known}") from None


def family_for_pipeline(pipeline: Any) -> ModelFamily:
    """Return the adapter that handles `pipeline`: its class, then the adapter's own test where classes are shared."""
    class_name = type(pipeline).__name__
    candidates = [family for family in FAMILIES.values() if family.pipeline_class == class_name]
    # Adapters with a test are more specific than the plain one for the same class.
    for family in sorted(candidates, key=lambda family: family.matches is None):
        if family.matches is None or family.matches(pipeline):
            return family
    raise ValueError(f"no model family handles pipeline class {class_name}; known families: {', '.join(FAMILIES)}")
