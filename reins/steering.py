"""Steering: add `strength * reference_norm * direction` to the hidden states leaving one transformer block.

Lifecycle, in the order a server uses it:

1. `Steerer(pipeline, block_index)` attaches one hook per transformer when the pipeline loads. An attached hook with
   no active configuration returns the block output unchanged.
2. `with steerer.steer(config): pipeline(...)` activates a configuration for one generation and always clears it on
   exit, so a generation that raises never steers the next one.
3. `steerer.detach()` removes the hooks and leaves the pipeline as it was loaded.

The hooks are diffusers `ModelHook`s so they receive the pipeline's cache context: which denoising step is running
and which classifier-free guidance branch the call computes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from reins.families import ModelFamily, family_for_pipeline
from reins.hooks import ContextAwareHook, register_block_hook, remove_block_hook

logger = logging.getLogger(__name__)

HOOK_NAME = "reins_steering"
BranchMode = Literal["both", "cond"]


@dataclass(frozen=True)
class SteeringConfig:
    """Per-generation steering settings."""

    direction: np.ndarray
    # Multiple of `reference_norm`; 0 leaves the output bit-identical to an unsteered run.
    strength: float
    reference_norm: float
    # Fractions of the denoising schedule: step i is steered when start <= i / num_steps < end.
    step_window: tuple[float, float] = (0.0, 0.5)
    branch_mode: BranchMode = "both"

    def __post_init__(self) -> None:
        if not math.isfinite(self.strength):
            raise ValueError(f"strength must be finite, got {self.strength}")
        if not (math.isfinite(self.reference_norm) and self.reference_norm > 0):
            raise ValueError(f"reference_norm must be positive and finite, got {self.reference_norm}")
        start, end = self.step_window
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"step_window must satisfy 0 <= start <= end <= 1, got {self.step_window}")
        if self.branch_mode not in ("both", "cond"):
            raise ValueError(f"branch_mode must be 'both' or 'cond', got {self.branch_mode!r}")

    @property
    def scale(self) -> float:
        """Return the absolute length of the vector added to each token."""
        return self.strength * self.reference_norm


class SteeringHook(ContextAwareHook):
    """Adds the active steering vector to a block's hidden-state output."""

    def __init__(self, family: ModelFamily) -> None:
        super().__init__()
        self.family = family
        self.config: SteeringConfig | None = None
        self.calls_steered = 0
        self._vector: torch.Tensor | None = None

    def activate(self, config: SteeringConfig | None) -> None:
        self.config = config
        if config is None:
            self._vector = None
            return
        self._vector = torch.from_numpy(np.asarray(config.direction, dtype=np.float32))
        self.calls_steered = 0

    def _in_window(self, config: SteeringConfig) -> bool:
        context = self.context
        # Without a cache context (a direct transformer call) there is no step index, so every call is steered.
        if context is None or context.step_index is None or not context.num_inference_steps:
            return True
        position = context.step_index / context.num_inference_steps
        start, end = config.step_window
        return start <= position < end

    def _steers_all_rows(self, config: SteeringConfig) -> bool | None:
        """Return True to steer every row of this call, False for the conditional half only, None to skip it."""
        if config.branch_mode == "both":
            return True
        if self.branch == "uncond":
            return None
        # One doubled batch contains both branches, unconditional rows first, so only the second half is steered.
        return not (self.branch == "cond_uncond" and self.family.guidance_layout == "batched_uncond_first")

    def _add(self, hidden: torch.Tensor, config: SteeringConfig, all_rows: bool) -> torch.Tensor:
        vector = self._vector.to(device=hidden.device, dtype=hidden.dtype) * config.scale
        if all_rows:
            return hidden + vector
        half = hidden.shape[0] // 2
        return torch.cat([hidden[:half], hidden[half:] + vector])

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        config = self.config
        if config is None or config.scale == 0.0 or not self._in_window(config):
            return output
        all_rows = self._steers_all_rows(config)
        if all_rows is None:
            return output
        self.calls_steered += 1
        index = self.family.hidden_state_index
        if index is None:
            return self._add(output, config, all_rows)
        parts = list(output)
        parts[index] = self._add(parts[index], config, all_rows)
        return type(output)(parts)


class Steerer:
    """Owns the steering hooks of one loaded pipeline."""

    def __init__(self, pipeline: Any, block_index: int | None = None, family: ModelFamily | None = None) -> None:
        self.family = family or family_for_pipeline(pipeline)
        self.transformers = self.family.transformers(pipeline)
        if not self.transformers:
            raise ValueError(f"pipeline {type(pipeline).__name__} has no transformer to steer")
        depth = len(self.family.blocks(self.transformers[0]))
        self.block_index = depth // 2 if block_index is None else block_index
        self.hidden_size = self.family.hidden_size(self.transformers[0])
        self.hooks: list[SteeringHook] = []

        for transformer in self.transformers:
            blocks = self.family.blocks(transformer)
            if not 0 <= self.block_index < len(blocks):
                raise ValueError(f"block_index must be in [0, {len(blocks) - 1}], got {self.block_index}")
            hook = SteeringHook(self.family)
            register_block_hook(transformer, blocks[self.block_index], hook, HOOK_NAME)
            self.hooks.append(hook)
        logger.info(
            "attached steering hooks: family=%s block=%d/%d transformers=%d",
            self.family.name, self.block_index, depth, len(self.transformers),
        )

    @contextmanager
    def steer(self, config: SteeringConfig | None) -> Iterator[None]:
        """Activate `config` for the duration of the block, and clear it on exit, even on error."""
        if config is not None and np.asarray(config.direction).shape != (self.hidden_size,):
            raise ValueError(
                f"direction has shape {np.asarray(config.direction).shape}, this model's hidden size is {self.hidden_size}"
            )
        for hook in self.hooks:
            hook.activate(config)
        try:
            yield
        finally:
            for hook in self.hooks:
                hook.activate(None)
                hook.context_state.reset()

    @property
    def calls_steered(self) -> int:
        """Return how many block calls the current or last activation steered."""
        return sum(hook.calls_steered for hook in self.hooks)

    @property
    def active(self) -> bool:
        return any(hook.config is not None for hook in self.hooks)

    def detach(self) -> None:
        """Remove the hooks, restoring the blocks' original forward methods."""
        for transformer in self.transformers:
            remove_block_hook(transformer, self.family.blocks(transformer)[self.block_index], HOOK_NAME)
        self.hooks = []
