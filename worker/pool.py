"""Pipelines loaded once per worker process, with steering hooks attached once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.config import ModelConfig
from reins.directions import Direction, load_direction
from reins.pipelines import (
    GenerationParams,
    count_prompt_tokens,
    generate,
    load_pipeline,
)
from reins.steering import Steerer, SteeringConfig

logger = logging.getLogger(__name__)


class DirectionMismatch(RuntimeError):
    """The job was accepted for a different direction than the one this worker has loaded."""


@dataclass
class LoadedModel:
    config: ModelConfig
    pipeline: Any
    steerer: Steerer
    direction: Direction


class PipelinePool:
    """Holds the loaded pipelines and renders jobs with them."""

    def __init__(self, models: list[ModelConfig], device: str = "auto", dtype: str = "auto") -> None:
        self.models: dict[str, LoadedModel] = {}
        for model in models:
            direction = load_direction(model.direction)
            model.check_direction(direction.metadata)
            pipeline = load_pipeline(model.path, device=device, dtype=dtype, revision=model.revision)
            steerer = Steerer(pipeline, block_index=direction.metadata.block_index)
            if steerer.hidden_size != direction.metadata.hidden_size:
                raise ValueError(
                    f"model {model.name}: direction {model.direction} has hidden size "
                    f"{direction.metadata.hidden_size}, the model's blocks output {steerer.hidden_size}"
                )
            self.models[model.name] = LoadedModel(model, pipeline, steerer, direction)
            logger.info("model %s ready: direction %s block %d", model.name, direction.metadata.sha256[:12],
                        direction.metadata.block_index)

    def render(self, record: dict, on_step: Callable[[int, int], None], image: Any = None) -> tuple[np.ndarray, dict]:
        """Run the job described by a job record; return frames and facts to add to the record."""
        loaded = self.models[record["model"]]
        steering = record["steering"]
        if steering["direction_sha256"] != loaded.direction.metadata.sha256:
            raise DirectionMismatch(
                f"job was accepted with direction {steering['direction_sha256'][:12]}, this worker has "
                f"{loaded.direction.metadata.sha256[:12]} for {record['model']}; the API and worker configurations differ"
            )
        request = record["request"]
        params = GenerationParams(**{field: request[field] for field in GenerationParams.__dataclass_fields__})
        config = SteeringConfig(
            direction=loaded.direction.vector,
            strength=float(steering["strength"]),
            reference_norm=loaded.direction.metadata.reference_norm,
            step_window=tuple(steering["step_window"]),
            branch_mode=steering["branch_mode"],
            # Records written before the gate existed lack the field.
            token_gate=bool(steering.get("token_gate", False)),
            probe_reference=loaded.direction.probe_reference,
        )
        tokens = count_prompt_tokens(loaded.pipeline, params.prompt)
        limit = loaded.steerer.family.text_token_limit
        device = loaded.pipeline.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        frames = generate(loaded.pipeline, params, loaded.steerer, config, on_step=on_step, image=image)
        scores = loaded.steerer.probe_scores()
        facts = {
            "prompt_tokens": tokens,
            "prompt_truncated": tokens > limit,
            "calls_steered": loaded.steerer.calls_steered,
            "probe_score": None if scores is None else round(float(scores[0]), 6),
            "device": str(device),
        }
        if device.type == "cuda":
            facts["gpu_memory_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        return frames, facts
