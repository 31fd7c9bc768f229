"""Direction discovery: capture pooled block outputs on labelled prompts and fit a safe-minus-unsafe direction.

One pass over the prompts captures every block's output, mean-pooled over video tokens and averaged over the steps
of the step window, separately for the conditional and unconditional branches. Any block's direction then comes from
the same run. The direction is the leading Supervised PCA component of the conditional-branch features with binary
labels, which is the normalised difference of the class means (`reins.spca.spca_binary`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reins.directions import Direction, DirectionMetadata, save_direction
from reins.families import ModelFamily, family_for_pipeline
from reins.hooks import ContextAwareHook, StepClock, register_block_hook, remove_block_hook, step_clock
from reins.pipelines import GenerationParams, generate
from reins.spca import spca_binary

logger = logging.getLogger(__name__)

CAPTURE_HOOK_NAME = "reins_capture"
LABELS = ("safe", "unsafe")


@dataclass(frozen=True)
class LabelledPrompt:
    """A prompt and, when the prompt file gives one, whether generations from it count as safe or unsafe."""

    prompt: str
    label: str | None = None


def read_prompts(path: str | Path, require_labels: bool = True) -> list[LabelledPrompt]:
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
        label = row.get("label")
        if label not in LABELS and (require_labels or label is not None):
            raise ValueError(f'{path}:{number}: "label" must be "safe" or "unsafe", got {label!r}')
        prompts.append(LabelledPrompt(row["prompt"], label))
    if require_labels:
        counts = {label: sum(p.label == label for p in prompts) for label in LABELS}
        if min(counts.values()) == 0:
            raise ValueError(f"{path}: need at least one safe and one unsafe prompt, found {counts}")
    return prompts


class CaptureHook(ContextAwareHook):
    """Sums a block's token-mean output per branch over the steps of a window, and the mean token norm."""

    def __init__(self, family: ModelFamily, clock: StepClock, hidden_state_index: int | None,
                 step_window: tuple[float, float]) -> None:
        super().__init__(family, clock)
        self.hidden_state_index = hidden_state_index
        self.step_window = step_window
        self.clear()

    def clear(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.norm_sum = 0.0
        self.norm_calls = 0

    def _add(self, branch: str, hidden: torch.Tensor) -> None:
        pooled = hidden.detach().float().mean(dim=1).cpu()
        self.sums[branch] = pooled if branch not in self.sums else self.sums[branch] + pooled
        self.calls[branch] = self.calls.get(branch, 0) + 1

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        position = self.step_position()
        start, end = self.step_window
        if position is not None and not start <= position < end:
            return output
        hidden = output if self.hidden_state_index is None else output[self.hidden_state_index]
        branch = self.branch(hidden.shape[0])
        if branch == "cond_uncond":
            half = hidden.shape[0] // 2
            self._add("uncond", hidden[:half])
            hidden = hidden[half:]
            branch = "cond"
        self._add(branch, hidden)
        if branch == "cond":
            self.norm_sum += float(hidden.detach().float().norm(dim=-1).mean())
            self.norm_calls += 1
        return output

    def mean(self, branch: str) -> np.ndarray | None:
        if branch not in self.sums:
            return None
        return (self.sums[branch] / self.calls[branch]).numpy()


@dataclass
class Activations:
    """Pooled block outputs of a set of generations."""

    # (samples, blocks, hidden): conditional branch, averaged over the step window.
    cond: np.ndarray
    # Same for the unconditional branch, or None when guidance was off.
    uncond: np.ndarray | None
    # (blocks,): mean L2 norm of the conditional branch's output tokens.
    norms: np.ndarray
    # The generated videos, uint8 (frames, height, width, 3) each, for judging.
    videos: list[np.ndarray] = field(default_factory=list)


def capture_activations(
    pipeline: Any,
    prompts: list[str],
    params: GenerationParams,
    step_window: tuple[float, float] = (0.0, 0.5),
    image: Any = None,
    keep_videos: bool = False,
) -> Activations:
    """Generate each prompt once with capture hooks on every block of the first transformer."""
    family = family_for_pipeline(pipeline)
    transformer = family.transformers(pipeline)[0]
    blocks = family.blocks(transformer)
    clock = step_clock(pipeline)
    hooks = []
    for block, hidden_state_index in blocks:
        hook = CaptureHook(family, clock, hidden_state_index, step_window)
        register_block_hook(transformer, block, hook, CAPTURE_HOOK_NAME)
        hooks.append(hook)

    hidden_size = family.hidden_size(transformer)
    cond = np.zeros((len(prompts), len(blocks), hidden_size), dtype=np.float32)
    uncond = np.zeros_like(cond)
    has_uncond = True
    norms = np.zeros(len(blocks), dtype=np.float64)
    videos = []
    try:
        for row, prompt in enumerate(prompts):
            for hook in hooks:
                hook.clear()
            with torch.no_grad():
                frames = generate(pipeline, GenerationParams(**{**params.__dict__, "prompt": prompt}),
                                  family=family, image=image)
            if keep_videos:
                videos.append(frames)
            for column, hook in enumerate(hooks):
                cond_mean = hook.mean("cond")
                if cond_mean is None:
                    raise ValueError(f"no denoising step fell inside step_window {step_window}")
                cond[row, column] = cond_mean[0]
                uncond_mean = hook.mean("uncond")
                if uncond_mean is None:
                    has_uncond = False
                else:
                    uncond[row, column] = uncond_mean[0]
                norms[column] += hook.norm_sum / max(hook.norm_calls, 1)
            logger.info("captured %d/%d prompts", row + 1, len(prompts))
    finally:
        for block, _ in blocks:
            remove_block_hook(transformer, block, CAPTURE_HOOK_NAME)
    return Activations(cond=cond, uncond=uncond if has_uncond else None, norms=norms / len(prompts), videos=videos)


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Return the probability that a random positive scores above a random negative (ties count half)."""
    positive_scores = scores[positives]
    negative_scores = scores[~positives]
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return float("nan")
    above = (positive_scores[:, None] > negative_scores[None, :]).sum()
    ties = (positive_scores[:, None] == negative_scores[None, :]).sum()
    return float((above + 0.5 * ties) / (len(positive_scores) * len(negative_scores)))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return train and test indices with about `test_fraction` of each class held out (at least one each)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == value))
        held_out = max(1, int(round(test_fraction * len(members)))) if len(members) > 1 else 0
        test += members[:held_out].tolist()
        train += members[held_out:].tolist()
    return np.array(sorted(train)), np.array(sorted(test))


def layer_report(features: np.ndarray, labels: np.ndarray, norms: np.ndarray, test_fraction: float = 0.3,
                 seed: int = 0) -> list[dict]:
    """Return, per block, the held-out accuracy and AUC of a class-mean probe and the mean activation norm.

    The probe is fitted on the training split: its direction is `spca_binary`, its threshold the midpoint of the
    projected class means. Accuracy and AUC are measured on the held-out split; AUC is the probability that a safe
    sample projects above an unsafe one.
    """
    train, test = stratified_split(labels, test_fraction, seed)
    depth = features.shape[1]
    rows = []
    for block in range(depth):
        x_train, x_test = features[train, block], features[test, block]
        row = {"block": block, "relative_depth": round(block / max(depth - 1, 1), 4),
               "mean_norm": float(norms[block])}
        try:
            direction = spca_binary(x_train, labels[train])
        except ValueError:
            rows.append({**row, "probe_accuracy": None, "auc": None})
            continue
        train_scores = x_train @ direction
        threshold = 0.5 * (train_scores[labels[train] == 0].mean() + train_scores[labels[train] == 1].mean())
        test_scores = x_test @ direction
        accuracy = float(np.mean((test_scores < threshold) == (labels[test] == 1))) if len(test) else None
        auc = roc_auc(test_scores, labels[test] == 0) if len(test) else None
        rows.append({**row, "probe_accuracy": accuracy, "auc": auc})
    return rows


def fit_direction(
    activations: Activations,
    labels: np.ndarray,
    block_index: int,
    model_id: str,
    family: str,
    label_source: str,
    step_window: tuple[float, float],
    out: str | Path,
    probe_accuracy: float | None = None,
    model_revision: str = "",
) -> Direction:
    """Fit the direction of one block on every sample and write it with its probe reference values."""
    features = activations.cond[:, block_index].astype(np.float64)
    direction = spca_binary(features, labels)
    scores = features @ direction
    metadata = DirectionMetadata(
        model_id=model_id,
        family=family,
        block_index=block_index,
        hidden_size=int(direction.shape[0]),
        reference_norm=float(activations.norms[block_index]),
        label_source=label_source,
        num_safe=int((labels == 0).sum()),
        num_unsafe=int((labels == 1).sum()),
        method="spca_binary",
        model_revision=model_revision,
        probe_accuracy=probe_accuracy,
        probe_safe_mean=float(scores[labels == 0].mean()),
        probe_unsafe_mean=float(scores[labels == 1].mean()),
        step_window=list(step_window),
    )
    return save_direction(out, direction, metadata)


def labels_from_judge(videos: list[np.ndarray], judge: Any, threshold: float = 0.5) -> np.ndarray:
    """Return 1 for each video the judge scores at or above `threshold`, else 0."""
    return np.array([int(judge.unsafe_probability(video) >= threshold) for video in videos], dtype=np.int64)


@dataclass(frozen=True)
class DiscoveryResult:
    direction: Direction
    report: dict


def discover(
    pipeline: Any,
    prompts: list[LabelledPrompt],
    params: GenerationParams,
    model_id: str,
    out: str | Path,
    block_index: int | None = None,
    judge: Any = None,
    step_window: tuple[float, float] = (0.0, 0.5),
    test_fraction: float = 0.3,
    seed: int = 0,
    image: Any = None,
    report_path: str | Path | None = None,
) -> DiscoveryResult:
    """Capture every block once, report every block, and write the direction of one block (default: half depth)."""
    family = family_for_pipeline(pipeline)
    depth = family.depth(family.transformers(pipeline)[0])
    block_index = depth // 2 if block_index is None else block_index
    if not 0 <= block_index < depth:
        raise ValueError(f"block_index must be in [0, {depth - 1}], got {block_index}")

    activations = capture_activations(pipeline, [p.prompt for p in prompts], params, step_window, image,
                                      keep_videos=judge is not None)
    if judge is not None:
        labels = labels_from_judge(activations.videos, judge)
        label_source = f"judge:{judge.name}"
    else:
        labels = np.array([p.label == "unsafe" for p in prompts], dtype=np.int64)
        label_source = "prompt_file"
    if labels.min() == labels.max():
        raise ValueError(f"every sample was labelled {LABELS[labels[0]]}; discovery needs both classes")

    layers = layer_report(activations.cond, labels, activations.norms, test_fraction, seed)
    direction = fit_direction(activations, labels, block_index, model_id, family.name, label_source, step_window,
                              out, probe_accuracy=layers[block_index]["probe_accuracy"])
    report = {
        "model_id": model_id,
        "family": family.name,
        "direction_file": str(out),
        "direction_sha256": direction.metadata.sha256,
        "chosen_block": block_index,
        "depth": depth,
        "label_source": label_source,
        "num_safe": int((labels == 0).sum()),
        "num_unsafe": int((labels == 1).sum()),
        "step_window": list(step_window),
        "branch": "cond",
        "test_fraction": test_fraction,
        "generation": asdict(params) | {"prompt": None},
        "layers": layers,
    }
    if report_path is not None:
        Path(report_path).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote direction for block %d to %s", block_index, out)
    return DiscoveryResult(direction, report)
