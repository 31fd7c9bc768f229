"""Direction discovery: capture pooled block outputs on labelled prompts and fit a safe-minus-unsafe direction.

With binary labels and a linear kernel, the leading Supervised PCA component is the normalised difference of the two
class means, which is what `class_mean_direction` computes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from reins.directions import Direction, DirectionMetadata, save_direction
from reins.families import ModelFamily, family_for_pipeline
from reins.hooks import ContextAwareHook, register_block_hook, remove_block_hook, step_clock
from reins.pipelines import GenerationParams, generate

logger = logging.getLogger(__name__)

CAPTURE_HOOK_NAME = "reins_capture"
LABELS = ("safe", "unsafe")


@dataclass(frozen=True)
class LabelledPrompt:
    """A prompt and whether generations from it count as safe or unsafe."""

    prompt: str
    label: str


def read_prompts(path: str | Path) -> list[LabelledPrompt]:
    """Read a JSONL file of `{"prompt": ..., "label": "safe"|"unsafe"}` lines, naming the line of any error."""
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: invalid JSON: {error}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f'{path}:{number}: expected an object with a non-empty string "prompt"')
        if row.get("label") not in LABELS:
            raise ValueError(f'{path}:{number}: "label" must be "safe" or "unsafe", got {row.get("label")!r}')
        prompts.append(LabelledPrompt(row["prompt"], row["label"]))
    counts = {label: sum(p.label == label for p in prompts) for label in LABELS}
    if min(counts.values()) == 0:
        raise ValueError(f"{path}: need at least one safe and one unsafe prompt, found {counts}")
    return prompts


class CaptureHook(ContextAwareHook):
    """Accumulates the token-mean of a block's conditional-branch output and the mean token norm."""

    def __init__(self, family: ModelFamily, clock, hidden_state_index: int | None) -> None:
        super().__init__(family, clock)
        self.hidden_state_index = hidden_state_index
        self.clear()

    def clear(self) -> None:
        self.pooled_sum: torch.Tensor | None = None
        self.norm_sum = 0.0
        self.calls = 0

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        hidden = output if self.hidden_state_index is None else output[self.hidden_state_index]
        branch = self.branch(hidden.shape[0])
        if branch == "uncond":
            return output
        if branch == "cond_uncond":
            hidden = hidden[hidden.shape[0] // 2 :]
        hidden = hidden.detach().float()
        pooled = hidden.mean(dim=1).sum(dim=0).cpu()
        self.pooled_sum = pooled if self.pooled_sum is None else self.pooled_sum + pooled
        self.norm_sum += float(hidden.norm(dim=-1).mean())
        self.calls += 1
        return output


def capture_block_means(
    pipeline: Any, prompts: list[str], params: GenerationParams
) -> tuple[np.ndarray, np.ndarray]:
    """Return pooled outputs of shape (prompts, blocks, hidden) and mean token norms of shape (blocks,).

    Each row is the conditional-branch output of a block, averaged over tokens and over all denoising steps.
    """
    family = family_for_pipeline(pipeline)
    transformer = family.transformers(pipeline)[0]
    blocks = family.blocks(transformer)
    clock = step_clock(pipeline)
    hooks = []
    for block, hidden_state_index in blocks:
        hook = CaptureHook(family, clock, hidden_state_index)
        register_block_hook(transformer, block, hook, CAPTURE_HOOK_NAME)
        hooks.append(hook)

    features = np.zeros((len(prompts), len(blocks), family.hidden_size(transformer)), dtype=np.float64)
    norms = np.zeros(len(blocks), dtype=np.float64)
    try:
        for row, prompt in enumerate(prompts):
            for hook in hooks:
                hook.clear()
            with torch.no_grad():
                generate(pipeline, GenerationParams(**{**params.__dict__, "prompt": prompt}), family=family)
            for column, hook in enumerate(hooks):
                features[row, column] = (hook.pooled_sum / hook.calls).numpy()
                norms[column] += hook.norm_sum / hook.calls
            logger.info("captured %d/%d prompts", row + 1, len(prompts))
    finally:
        for block, _ in blocks:
            remove_block_hook(transformer, block, CAPTURE_HOOK_NAME)
    return features, norms / len(prompts)


def class_mean_direction(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the unit vector from the unsafe class mean to the safe class mean.

    `labels` is 1 for unsafe and 0 for safe; `features` has shape (samples, hidden).
    """
    difference = features[labels == 0].mean(axis=0) - features[labels == 1].mean(axis=0)
    norm = np.linalg.norm(difference)
    if norm == 0.0:
        raise ValueError("the safe and unsafe class means are identical, so no direction separates them")
    return difference / norm


def projection_accuracy(features: np.ndarray, labels: np.ndarray, direction: np.ndarray) -> float:
    """Return the accuracy of thresholding the projection on `direction` at the midpoint of the class means."""
    scores = features @ direction
    threshold = 0.5 * (scores[labels == 0].mean() + scores[labels == 1].mean())
    predicted_unsafe = scores < threshold
    return float(np.mean(predicted_unsafe == (labels == 1)))


def discover(
    pipeline: Any,
    prompts: list[LabelledPrompt],
    params: GenerationParams,
    model_id: str,
    out: str | Path,
    block_index: int | None = None,
    label_source: str = "prompt_file",
) -> Direction:
    """Fit a direction at one block (default: half the depth) and write it to `out`."""
    family = family_for_pipeline(pipeline)
    transformer = family.transformers(pipeline)[0]
    depth = family.depth(transformer)
    block_index = depth // 2 if block_index is None else block_index
    if not 0 <= block_index < depth:
        raise ValueError(f"block_index must be in [0, {depth - 1}], got {block_index}")

    features, norms = capture_block_means(pipeline, [p.prompt for p in prompts], params)
    labels = np.array([p.label == "unsafe" for p in prompts], dtype=np.int64)
    block_features = features[:, block_index]
    direction = class_mean_direction(block_features, labels)
    accuracy = projection_accuracy(block_features, labels, direction)

    metadata = DirectionMetadata(
        model_id=model_id,
        family=family.name,
        block_index=block_index,
        hidden_size=int(direction.shape[0]),
        reference_norm=float(norms[block_index]),
        label_source=label_source,
        num_safe=int((labels == 0).sum()),
        num_unsafe=int((labels == 1).sum()),
        probe_accuracy=accuracy,
    )
    result = save_direction(out, direction, metadata)
    logger.info("wrote direction for block %d to %s (training probe accuracy %.3f)", block_index, out, accuracy)
    return result
