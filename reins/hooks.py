"""Base class for block hooks that need to know where the denoising loop is.

diffusers pipelines wrap each transformer call in `transformer.cache_context(name, step_index=..., ...)`. The context
reaches only stateful hooks that own a `StateManager`, so every REINS hook derives from `ContextAwareHook`.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager


class _NoState(BaseState):
    """Empty per-context state: the hooks read the context itself and keep nothing per branch."""

    def reset(self) -> None:
        pass


class ContextAwareHook(ModelHook):
    """A `ModelHook` that can read the pipeline's current cache context."""

    _is_stateful = True

    def __init__(self) -> None:
        super().__init__()
        self.context_state = StateManager(_NoState)

    @property
    def context(self) -> CacheContext | None:
        """Return the context of the running transformer call, or None outside a pipeline's denoising loop."""
        return self.context_state._context

    @property
    def branch(self) -> str:
        """Return "cond", "uncond" or "cond_uncond"; a call without a context counts as "cond"."""
        context = self.context
        return "cond" if context is None else context.name

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.context_state.reset()
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
