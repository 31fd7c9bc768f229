"""Loading diffusers video pipelines and running one (optionally steered) generation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reins.families import ModelFamily, family_for_pipeline
from reins.hooks import step_clock
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
    """Load a pipeline with `from_pretrained` from a local folder or a hub id, moved to `device`.

    `model` "toy", or a folder with a saved toy pipeline, loads the toy model of `reins.toy`.
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from reins.toy.pipeline import is_toy_checkpoint, load_toy_pipeline

    # Loading bars would interleave with the job logs of a worker.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if is_toy_checkpoint(model):
        # The toy pipeline class lives in this package, not in diffusers, so its own class loads it.
        pipeline = load_toy_pipeline(model, dtype=torch_dtype)
    else:
        pipeline = DiffusionPipeline.from_pretrained(model, dtype=torch_dtype, revision=revision)
    family = family_for_pipeline(pipeline)  # Reject an unsupported pipeline class before any work.
    family.prepare_pipeline(pipeline)
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


def _call_arguments(family: ModelFamily, batch: list[GenerationParams], image: Any) -> dict[str, Any]:
    first = batch[0]
    for params in batch[1:]:
        for name in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale"):
            if getattr(params, name) != getattr(first, name):
                raise ValueError(f"every sample of a batch needs the same {name}")
    single = len(batch) == 1
    generators = [torch.Generator(device="cpu").manual_seed(params.seed) for params in batch]
    arguments = dict(
        prompt=first.prompt if single else [params.prompt for params in batch],
        negative_prompt=first.negative_prompt if single else [params.negative_prompt for params in batch],
        num_frames=first.num_frames,
        height=first.height,
        width=first.width,
        num_inference_steps=first.num_inference_steps,
        generator=generators[0] if single else generators,
        output_type="np",
        max_sequence_length=family.text_token_limit,
    )
    arguments[family.guidance_argument] = first.guidance_scale
    if family.image_input == "required":
        if image is None:
            raise ValueError(f"{family.name} models need an input image")
        if family.image_per_sample and not single and not isinstance(image, list):
            image = [image] * len(batch)
        arguments["image"] = image
    elif image is not None:
        raise ValueError(f"{family.name} models take no input image")
    return arguments


def generate(
    pipeline: Any,
    params: GenerationParams | list[GenerationParams],
    steerer: Steerer | None = None,
    steering: SteeringConfig | None = None,
    on_step: Callable[[int, int], None] | None = None,
    family: ModelFamily | None = None,
    image: Any = None,
) -> np.ndarray:
    """Run one generation and return its frames as uint8 of shape (frames, height, width, 3).

    With a list of parameters (same size, steps and guidance, but each its own prompt and seed), run them as one batch
    and return shape (samples, frames, height, width, 3). Each sample equals the same parameters run alone, up to the
    floating-point differences of batched kernels. `on_step(step_index, num_steps)` runs after each denoising step, and an exception
    it raises aborts the generation. The step callback also checks the latents, so a generation that diverges fails
    at the step where it happened.
    """
    if steering is not None and steerer is None:
        raise ValueError("a steering configuration needs a Steerer attached to the pipeline")
    family = family or (steerer.family if steerer is not None else family_for_pipeline(pipeline))
    batch = params if isinstance(params, list) else [params]
    num_steps = batch[0].num_inference_steps
    clock = step_clock(pipeline)

    def step_end(pipe: Any, step_index: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict:
        latents = tensors["latents"]
        if not torch.isfinite(latents).all():
            raise NonFiniteLatentsError(f"latents are not finite after denoising step {step_index}")
        clock.advance()
        if on_step is not None:
            on_step(step_index, num_steps)
        return {}

    arguments = _call_arguments(family, batch, image)
    arguments.update(callback_on_step_end=step_end, callback_on_step_end_tensor_inputs=["latents"])
    clock.start(num_steps, len(batch))
    # Some components draw from the global RNG instead of the generator (LTX-Video 0.9.1's VAE decoder, for
    # example), so seed it from the request too and restore it afterwards.
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch[0].seed)
            if steerer is None:
                frames = pipeline(**arguments).frames
            else:
                with steerer.steer(steering):
                    frames = pipeline(**arguments).frames
    finally:
        clock.stop()
    frames = np.stack([to_uint8(sample) for sample in frames])
    return frames if isinstance(params, list) else frames[0]


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Convert float frames in [0, 1] to uint8, rounding to nearest."""
    return (np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
