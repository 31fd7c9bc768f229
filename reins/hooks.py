"""Machinery shared by REINS block hooks: where the denoising loop is, and which guidance branch a call computes.

diffusers pipelines wrap most transformer calls in `transformer.cache_context(name, ...)`. The context reaches only
stateful hooks that own a `StateManager`, so every REINS hook derives from `ContextAwareHook`. Not every pipeline
passes a step index: Wan does, CogVideoX and HunyuanVideo do not. Some pass no context at all (Allegro, HunyuanVideo
image-to-video). So `generate` also advances a `StepClock` after every denoising step, and the hooks fall back on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager

from reins.families import ModelFamily


class _NoState(BaseState):
    """Empty per-context state: the hooks read the context itself and keep nothing per branch."""

    def reset(self) -> None:
        pass


@dataclass
class StepClock:
    """Denoising position of the running generation, shared by all hooks of one pipeline."""

    step_index: int = 0
    num_steps: int = 0
    # Samples in the generation. A call with twice as many rows computes both guidance branches at once.
    batch_size: int = 0

    def start(self, num_steps: int, batch_size: int) -> None:
        self.step_index, self.num_steps, self.batch_size = 0, num_steps, batch_size

    def advance(self) -> None:
        self.step_index += 1

    def stop(self) -> None:
        self.step_index, self.num_steps, self.batch_size = 0, 0, 0


def step_clock(pipeline) -> StepClock:
    """Return the clock of a pipeline, creating it on first use; every hook on the pipeline shares it."""
    clock = getattr(pipeline, "_reins_step_clock", None)
    if clock is None:
        clock = StepClock()
        pipeline._reins_step_clock = clock
    return clock


class ContextAwareHook(ModelHook):
    """A `ModelHook` that reads the denoising step and the guidance branch of the current block call."""

    _is_stateful = True

    def __init__(self, family: ModelFamily, clock: StepClock) -> None:
        super().__init__()
        self.family = family
        self.clock = clock
        self.context_state = StateManager(_NoState)
        self._calls_seen_step = -1
        self._calls_in_step = 0

    @property
    def context(self) -> CacheContext | None:
        """Return the context of the running transformer call, or None when the pipeline set none."""
        return self.context_state._context

    def step_position(self) -> float | None:
        """Return step_index / num_steps of the current call, or None outside a tracked generation."""
        context = self.context
        if context is not None and context.step_index is not None and context.num_inference_steps:
            return context.step_index / context.num_inference_steps
        if self.clock.num_steps:
            return self.clock.step_index / self.clock.num_steps
        return None

    def branch(self, rows: int) -> str:
        """Return "cond", "uncond" or "cond_uncond" (a doubled batch, unconditional rows first) for a call."""
        if self.family.guidance_layout == "batched_uncond_first":
            # CogVideoX names its call "cond_uncond" even with guidance off, so the batch size decides.
            if self.clock.batch_size:
                return "cond_uncond" if rows == 2 * self.clock.batch_size else "cond"
            context = self.context
            return context.name if context is not None else "cond"
        context = self.context
        if context is not None and context.name in ("cond", "uncond"):
            return context.name
        # Separate calls with no context: the conditional call comes first in every step.
        if self._calls_seen_step != self.clock.step_index:
            self._calls_seen_step, self._calls_in_step = self.clock.step_index, 0
        self._calls_in_step += 1
        return "cond" if self._calls_in_step % 2 == 1 else "uncond"

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.context_state.reset()
        self._calls_seen_step, self._calls_in_step = -1, 0
        return module


def register_block_hook(transformer: torch.nn.Module, block: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register `hook` on one block of `transformer` so that it receives the transformer's cache context."""
    HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, name)
    # A transformer that has already run caches its list of hooked children, so rebuild it to include this one.
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def remove_block_hook(transformer: torch.nn.Module, block: torch.nn.Module, name: str) -> None:
    """Remove a hook registered with `register_block_hook`, restoring the block's forward method."""
    HookRegistry.check_if_exists_or_initialize(block).remove_hook(name, recurse=False)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
