"""Loading diffusers video pipelines and running one (optionally steered) generation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reins.families import ModelFamily, family_for_pipeline
from reins.steering import Steerer, SteeringConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NonFiniteLatentsError(RuntimeError):
    """The latents became NaN or infinite during denoising."""


def resolve_device(device: str) -> str:
    """Return `device`, or the first CUDA device when it is "auto" and one exists, else "cpu"."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """Return the torch dtype named by `dtype`; "auto" is bfloat16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}") from None


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto", revision: str | None = None) -> Any:
    """Load a pipeline with `from_pretrained` from a local folder or a hub id, moved to `device`."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading bars would interleave with the job logs of a worker.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    pipeline = DiffusionPipeline.from_pretrained(model, dtype=torch_dtype, revision=revision)
    family_for_pipeline(pipeline)  # Reject an unsupported pipeline class before any work.
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    logger.info("loaded %s from %s on %s as %s", type(pipeline).__name__, model, device, torch_dtype)
    return pipeline


@dataclass(frozen=True)
class GenerationParams:
    """Inputs of one generation, in the units diffusers uses."""

    prompt: str
    negative_prompt: str = ""
    num_frames: int = 9
    height: int = 32
    width: int = 32
    num_inference_steps: int = 4
    guidance_scale: float = 5.0
    seed: int = 0


def count_prompt_tokens(pipeline: Any, prompt: str) -> int:
    """Return the number of text tokens the pipeline's tokenizer makes of `prompt`, special tokens included."""
    return len(pipeline.tokenizer(prompt, add_special_tokens=True).input_ids)


def generate(
    pipeline: Any,
    params: GenerationParams,
    steerer: Steerer | None = None,
    steering: SteeringConfig | None = None,
    on_step: Callable[[int, int], None] | None = None,
    family: ModelFamily | None = None,
) -> np.ndarray:
    """Run one generation and return its frames as uint8 of shape (frames, height, width, 3).

    `on_step(step_index, num_steps)` runs after each denoising step; an exception it raises aborts the generation.
    The step callback also checks the latents, so a generation that diverges fails at the step where it happened.
    """
    if steering is not None and steerer is None:
        raise ValueError("a steering configuration needs a Steerer attached to the pipeline")
    family = family or family_for_pipeline(pipeline)

    def step_end(pipe: Any, step_index: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict:
        latents = tensors["latents"]
        if not torch.isfinite(latents).all():
            raise NonFiniteLatentsError(f"latents are not finite after denoising step {step_index}")
        if on_step is not None:
            on_step(step_index, params.num_inference_steps)
        return {}

    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    call = dict(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        num_frames=params.num_frames,
        height=params.height,
        width=params.width,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        generator=generator,
        output_type="np",
        callback_on_step_end=step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        max_sequence_length=family.text_token_limit,
    )
    if steerer is None:
        frames = pipeline(**call).frames[0]
    else:
        with steerer.steer(steering):
            frames = pipeline(**call).frames[0]
    return to_uint8(frames)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Convert float frames in [0, 1] to uint8, rounding to nearest."""
    return (np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
