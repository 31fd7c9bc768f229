"""Steering: add `strength * reference_norm * direction` to the hidden states leaving one transformer block.

Lifecycle, in the order a server uses it:

1. `Steerer(pipeline, block_index)` attaches one hook per transformer when the pipeline loads. An attached hook with
   no active configuration returns the block output unchanged.
2. `with steerer.steer(config): pipeline(...)` activates a configuration for one generation and always clears it on
   exit, so a generation that raises never steers the next one. `reins.pipelines.generate` does this for you.
3. `steerer.detach()` removes the hooks and leaves the pipeline as it was loaded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from reins.families import ModelFamily, family_for_pipeline
from reins.hooks import ContextAwareHook, StepClock, register_block_hook, remove_block_hook, step_clock

logger = logging.getLogger(__name__)

HOOK_NAME = "reins_steering"
BranchMode = Literal["both", "cond"]
StrengthMode = Literal["relative", "absolute"]


@dataclass(frozen=True)
class SteeringConfig:
    """Per-generation steering settings."""

    direction: np.ndarray
    # One strength for every sample, or one per sample of a batch. 0 leaves the output bit-identical.
    strength: float | tuple[float, ...]
    # Mean token norm at the steered block on the discovery prompts (from the direction file).
    reference_norm: float
    # Fractions of the denoising schedule: step i is steered when start <= i / num_steps < end.
    step_window: tuple[float, float] = (0.0, 0.5)
    branch_mode: BranchMode = "both"
    # "relative": the added vector's length is strength * reference_norm. "absolute": it is strength.
    strength_mode: StrengthMode = "relative"
    # Rescale each steered token back to its norm before the add, so the state stays near the data's norm.
    preserve_norm: bool = False
    # Scale each sample's strength by its probe score clipped to [0, 1], so benign prompts are barely changed.
    adaptive: bool = False
    # Scale each token's push by its own probe score clipped to [0, 1], so tokens on the safe side of the safe class
    # mean stay unchanged. Combined with `adaptive`, the sample's factor and the token's gate multiply.
    token_gate: bool = False
    # Mean projections of safe and unsafe discovery samples on the direction, used to normalise the probe score.
    probe_reference: tuple[float, float] | None = None
    # Direction that the probe score is read along, when it differs from the one added, as in a control that pushes
    # along a random vector but gates the same tokens. None reads the score along `direction`.
    probe_direction: np.ndarray | None = None

    def __post_init__(self) -> None:
        for value in self.strengths:
            if not math.isfinite(value):
                raise ValueError(f"strength must be finite, got {value}")
        if not (math.isfinite(self.reference_norm) and self.reference_norm > 0):
            raise ValueError(f"reference_norm must be positive and finite, got {self.reference_norm}")
        start, end = self.step_window
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"step_window must satisfy 0 <= start <= end <= 1, got {self.step_window}")
        if self.branch_mode not in ("both", "cond"):
            raise ValueError(f"branch_mode must be 'both' or 'cond', got {self.branch_mode!r}")
        if self.strength_mode not in ("relative", "absolute"):
            raise ValueError(f"strength_mode must be 'relative' or 'absolute', got {self.strength_mode!r}")
        if self.adaptive and self.probe_reference is None:
            raise ValueError("adaptive steering needs probe_reference from the direction file")
        if self.token_gate and self.probe_reference is None:
            raise ValueError("token_gate needs probe_reference, the safe and unsafe means from the direction file; "
                             "got None")
        if self.probe_direction is not None and np.shape(self.probe_direction) != np.shape(self.direction):
            raise ValueError(f"probe_direction has shape {np.shape(self.probe_direction)}, "
                             f"direction has shape {np.shape(self.direction)}")

    @property
    def strengths(self) -> tuple[float, ...]:
        return tuple(self.strength) if isinstance(self.strength, Sequence) else (float(self.strength),)

    @property
    def scales(self) -> tuple[float, ...]:
        """Return the length of the vector added to each token, per sample."""
        unit = self.reference_norm if self.strength_mode == "relative" else 1.0
        return tuple(value * unit for value in self.strengths)


class SteeringHook(ContextAwareHook):
    """Adds the active steering vector to a block's hidden-state output and records the probe score."""

    def __init__(self, family: ModelFamily, clock: StepClock, hidden_state_index: int | None) -> None:
        super().__init__(family, clock)
        self.hidden_state_index = hidden_state_index
        self.config: SteeringConfig | None = None
        self.calls_steered = 0
        self._vector: torch.Tensor | None = None
        self._probe_vector: torch.Tensor | None = None
        self._score: torch.Tensor | None = None
        self._adaptive_factor: torch.Tensor | None = None

    def activate(self, config: SteeringConfig | None) -> None:
        self.config = config
        if config is None:
            self._vector = None
            return
        self._vector = torch.from_numpy(np.asarray(config.direction, dtype=np.float32))
        probe = config.direction if config.probe_direction is None else config.probe_direction
        self._probe_vector = torch.from_numpy(np.asarray(probe, dtype=np.float32))
        self.calls_steered = 0
        self._score, self._adaptive_factor = None, None

    def probe_scores(self) -> list[float] | None:
        """Return each sample's probe score, or None if no call inside the step window was seen.

        The score is taken at the first conditional call inside the window, before anything is added, so it reads
        the unsteered hidden state and is the same whatever the strength.
        """
        return None if self._score is None else self._score.tolist()

    def _token_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return the probe score of each token, (rows, tokens): 0 at the safe discovery mean, 1 at the unsafe one."""
        projection = hidden.float() @ self._probe_vector.to(hidden.device)
        if self.config.probe_reference is None:
            return projection / self.config.reference_norm
        safe, unsafe = self.config.probe_reference
        return (safe - projection) / (safe - unsafe)

    def _probe(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return the probe score of each row, the mean of its tokens' scores."""
        return self._token_scores(hidden).mean(dim=1).cpu()

    def _row_scales(self, rows: int, branch: str) -> torch.Tensor | None:
        """Return the scale of each row of this call, or None when no row is steered."""
        config = self.config
        scales = torch.tensor(config.scales, dtype=torch.float32)
        samples = rows // 2 if branch == "cond_uncond" else rows
        if scales.numel() == 1:
            scales = scales.expand(samples)
        elif scales.numel() != samples:
            raise ValueError(f"{scales.numel()} per-sample strengths for a batch of {samples} samples")
        if self._adaptive_factor is not None:
            scales = scales * self._adaptive_factor
        if branch != "cond_uncond":
            return None if branch == "uncond" and config.branch_mode == "cond" else scales
        uncond = scales if config.branch_mode == "both" else torch.zeros_like(scales)
        return torch.cat([uncond, scales])

    def _steer(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.shape[0]
        branch = self.branch(rows)
        cond_rows = slice(rows // 2, None) if branch == "cond_uncond" else slice(None)
        if branch != "uncond" and self._score is None:
            self._score = self._probe(hidden[cond_rows])
            if self.config.adaptive:
                self._adaptive_factor = self._score.clamp(0.0, 1.0)

        scales = self._row_scales(rows, branch)
        if scales is None or not bool((scales != 0).any()):
            return hidden
        self.calls_steered += 1
        vector = self._vector.to(device=hidden.device, dtype=hidden.dtype)
        steered_rows = torch.nonzero(scales != 0).flatten().tolist()
        if len(steered_rows) == rows and bool((scales == scales[0]).all()):
            update = hidden + float(scales[0]) * vector
        else:
            # Rows with scale 0 are copied untouched, so they stay bit-identical to an unsteered run.
            update = hidden.clone()
            row_scales = scales[steered_rows].to(device=hidden.device, dtype=hidden.dtype)
            update[steered_rows] = hidden[steered_rows] + row_scales[:, None, None] * vector
        if self.config.token_gate:
            # Computed from the unsteered state of every row of this call, so each branch gates its own tokens. It
            # comes before the norm rescaling, so `preserve_norm` rescales the gated token.
            gate = self._token_scores(hidden).clamp(0.0, 1.0).to(hidden.dtype)
            update = hidden + (update - hidden) * gate[..., None]
        if self.config.preserve_norm:
            original = hidden.norm(dim=-1, keepdim=True)
            update = update * (original / update.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return update

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        config = self.config
        if config is None:
            return output
        position = self.step_position()
        start, end = config.step_window
        if position is not None and not start <= position < end:
            return output
        if self.hidden_state_index is None:
            return self._steer(output)
        parts = list(output)
        parts[self.hidden_state_index] = self._steer(parts[self.hidden_state_index])
        return type(output)(parts)


class Steerer:
    """Owns the steering hooks of one loaded pipeline: one hook per transformer, on the same block index."""

    def __init__(self, pipeline: Any, block_index: int | None = None, family: ModelFamily | None = None) -> None:
        self.family = family or family_for_pipeline(pipeline)
        self.transformers = self.family.transformers(pipeline)
        if not self.transformers:
            raise ValueError(f"pipeline {type(pipeline).__name__} has no transformer to steer")
        self.depth = self.family.depth(self.transformers[0])
        self.block_index = self.depth // 2 if block_index is None else block_index
        self.hidden_size = self.family.hidden_size(self.transformers[0])
        self.clock = step_clock(pipeline)
        self.hooks: list[SteeringHook] = []

        for transformer in self.transformers:
            blocks = self.family.blocks(transformer)
            if not 0 <= self.block_index < len(blocks):
                raise ValueError(f"block_index must be in [0, {len(blocks) - 1}], got {self.block_index}")
            block, hidden_state_index = blocks[self.block_index]
            hook = SteeringHook(self.family, self.clock, hidden_state_index)
            register_block_hook(transformer, block, hook, HOOK_NAME)
            self.hooks.append(hook)
        logger.info(
            "attached steering hooks: family=%s block=%d/%d transformers=%d",
            self.family.name, self.block_index, self.depth, len(self.transformers),
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
                hook.reset_state(None)

    @property
    def calls_steered(self) -> int:
        """Return how many block calls the current or last activation changed."""
        return sum(hook.calls_steered for hook in self.hooks)

    def probe_scores(self) -> list[float] | None:
        """Return each sample's probe score from the current or last activation (first transformer that saw any)."""
        for hook in self.hooks:
            scores = hook.probe_scores()
            if scores is not None:
                return scores
        return None

    @property
    def active(self) -> bool:
        return any(hook.config is not None for hook in self.hooks)

    def detach(self) -> None:
        """Remove the hooks, restoring the blocks' original forward methods."""
        for transformer in self.transformers:
            block, _ = self.family.blocks(transformer)[self.block_index]
            remove_block_hook(transformer, block, HOOK_NAME)
        self.hooks = []
