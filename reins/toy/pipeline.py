"""The toy text-to-video pipeline: a tiny WanTransformer3DModel that denoises RGB pixels directly, with no VAE.

The transformer takes the noisy clip and three coordinate channels (x, y and frame position, each in [-1, 1]) and
predicts the flow-matching velocity `noise - clip`. Prompts go through a frozen random-weight UMT5 encoder with a
locally built tokenizer, padded with zeros to `max_sequence_length` tokens as WanPipeline does. Each denoising step
calls the transformer once per guidance branch inside `transformer.cache_context("cond" | "uncond", ...)`, the same
calling convention as WanPipeline, so REINS hooks see the step and the branch exactly as on a Wan model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
# Name that `load_pipeline` and the server configuration accept for the shipped checkpoint.
MODEL_NAME = "toy"
TRAINING_RECORD = "toy_training.json"
RGB_CHANNELS = 3
COORDINATE_CHANNELS = 3
TEXT_TOKENS = 16


@dataclass
class ToyVideoPipelineOutput(BaseOutput):
    """Generated clips: floats in [0, 1] of shape (samples, frames, height, width, 3) for output_type "np"."""

    frames: Any


def coordinate_channels(num_frames: int, height: int, width: int) -> torch.Tensor:
    """Return (3, frames, height, width): x, y and frame position, each spread evenly over [-1, 1]."""
    t = torch.linspace(-1.0, 1.0, num_frames) if num_frames > 1 else torch.zeros(1)
    y = torch.linspace(-1.0, 1.0, height)
    x = torch.linspace(-1.0, 1.0, width)
    grid_t, grid_y, grid_x = torch.meshgrid(t, y, x, indexing="ij")
    return torch.stack([grid_x, grid_y, grid_t])


class ToyVideoPipeline(DiffusionPipeline):
    """Pixel-space text-to-video with classifier-free guidance and a flow-matching Euler scheduler."""

    model_cpu_offload_seq = "text_encoder->transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, tokenizer, text_encoder, transformer, scheduler) -> None:
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                              scheduler=scheduler)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], max_sequence_length: int = TEXT_TOKENS) -> torch.Tensor:
        """Return (len(prompts), max_sequence_length, text_dim) embeddings, zero after each prompt's last token."""
        tokens = self.tokenizer(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.text_encoder.device)
        hidden = self.text_encoder(tokens.input_ids.to(self.text_encoder.device), mask).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype)

    def _noise(self, shape: tuple[int, ...], generator, dtype: torch.dtype) -> torch.Tensor:
        generators = generator if isinstance(generator, list) else [generator] * shape[0]
        if len(generators) != shape[0]:
            raise ValueError(f"{len(generators)} generators for a batch of {shape[0]} samples")
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generators]).to(
            device=self.device, dtype=dtype)

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        """Return the transformer's input: the noisy clip (batch, 3, frames, h, w) with the coordinate channels."""
        batch, _, frames, height, width = latents.shape
        coordinates = coordinate_channels(frames, height, width).to(device=latents.device, dtype=latents.dtype)
        return torch.cat([latents, coordinates.expand(batch, -1, -1, -1, -1)], dim=1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 3,
        height: int = 16,
        width: int = 16,
        num_inference_steps: int = 16,
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        max_sequence_length: int = TEXT_TOKENS,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        return_dict: bool = True,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if negative_prompt is not None else ""
        negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        dtype = self.transformer.dtype
        use_guidance = guidance_scale > 1.0
        prompt_embeds = self.encode_prompt(prompts, max_sequence_length).to(dtype)
        negative_embeds = self.encode_prompt(negatives, max_sequence_length).to(dtype) if use_guidance else None

        latents = self._noise((len(prompts), RGB_CHANNELS, num_frames, height, width), generator, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = self.model_input(latents)
            timestep = t.expand(latents.shape[0])
            context = {"step_index": i, "sigma": float(self.scheduler.sigmas[i]),
                       "num_inference_steps": len(timesteps)}
            with self.transformer.cache_context("cond", **context):
                velocity = self.transformer(hidden_states=model_input, timestep=timestep,
                                            encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            if use_guidance:
                with self.transformer.cache_context("uncond", **context):
                    velocity_uncond = self.transformer(hidden_states=model_input, timestep=timestep,
                                                       encoder_hidden_states=negative_embeds, return_dict=False)[0]
                velocity = velocity_uncond + guidance_scale * (velocity - velocity_uncond)
            latents = self.scheduler.step(velocity.float(), t, latents.float(), return_dict=False)[0].to(dtype)
            if callback_on_step_end is not None:
                available = {"latents": latents}
                callback_on_step_end(self, i, t, {name: available[name] for name in callback_on_step_end_tensor_inputs})

        # The model works on pixels scaled to [-1, 1].
        clips = ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 4, 1)
        frames = clips.cpu().numpy() if output_type == "np" else clips
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return ToyVideoPipelineOutput(frames=frames)


def is_toy_checkpoint(model: str | Path) -> bool:
    """Return whether `model` is the toy model's name or a folder holding a saved ToyVideoPipeline."""
    if str(model) == MODEL_NAME:
        return True
    index = Path(model) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") == ToyVideoPipeline.__name__
    except (OSError, ValueError):
        return False


def load_toy_pipeline(model: str | Path = MODEL_NAME, dtype: torch.dtype = torch.float32) -> ToyVideoPipeline:
    """Load the shipped checkpoint (`model` "toy") or a saved toy pipeline folder."""
    folder = CHECKPOINT_DIR if str(model) == MODEL_NAME else Path(model)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no toy checkpoint in {folder}; train one with `reins toy train`")
    return ToyVideoPipeline.from_pretrained(str(folder), dtype=dtype)


def training_record(model: str | Path = MODEL_NAME) -> dict | None:
    """Return the training configuration and metrics saved with a toy checkpoint, or None if it has none."""
    folder = CHECKPOINT_DIR if str(model) == MODEL_NAME else Path(model)
    path = folder / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else None
