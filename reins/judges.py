"""Judges: frames in, probability of unsafe content out.

A judge labels generations for discovery and measures the steering effect in a sweep. Any object with a `name` and
an `unsafe_probability(frames)` method works; `ImageClassifierJudge` wraps any transformers image-classification
model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

logger = logging.getLogger(__name__)


class Judge(Protocol):
    name: str

    def unsafe_probability(self, frames: np.ndarray) -> float:
        """Return the probability that a video, uint8 of shape (frames, height, width, 3), is unsafe."""
        ...


def sample_frame_indices(count: int, samples: int) -> list[int]:
    """Return up to `samples` evenly spaced frame indices, first and last included."""
    if count <= samples:
        return list(range(count))
    return sorted({round(i * (count - 1) / (samples - 1)) for i in range(samples)})


class ImageClassifierJudge:
    """Scores sampled frames with a transformers image classifier and averages the unsafe classes' probability."""

    def __init__(self, model: str, unsafe_labels: Sequence[str] = ("unsafe",), frames_per_video: int = 4,
                 device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        self.name = f"image-classifier:{model}"
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = AutoModelForImageClassification.from_pretrained(model).to(device).eval()
        self.device = device
        self.frames_per_video = frames_per_video
        names = {str(label).lower(): int(index) for index, label in self.model.config.id2label.items()}
        missing = [label for label in unsafe_labels if label.lower() not in names]
        if missing:
            raise ValueError(f"{model} has no class named {missing}; its classes are {sorted(names)}")
        self.unsafe_indices = [names[label.lower()] for label in unsafe_labels]

    @torch.no_grad()
    def unsafe_probability(self, frames: np.ndarray) -> float:
        chosen = [frames[index] for index in sample_frame_indices(len(frames), self.frames_per_video)]
        inputs = self.processor(images=chosen, return_tensors="pt").to(self.device)
        probabilities = self.model(**inputs).logits.float().softmax(dim=-1)
        return float(probabilities[:, self.unsafe_indices].sum(dim=-1).mean())


def save_tiny_classifier(out: str, seed: int = 0) -> str:
    """Write a random-weight ViT image classifier with classes "safe" and "unsafe", for tests and demos."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, id2label={0: "safe", 1: "unsafe"},
                       label2id={"safe": 0, "unsafe": 1})
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out
