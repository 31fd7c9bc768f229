"""Training of the toy model: flow matching on rendered clips, with caption noise and prompt dropout.

Each step draws a batch of scenes, renders them, and captions each one. With probability `wrong_color_rate` the
caption names a wrong colour, so that the model learns colour as something that can change. The aim is that steering
then recolours the object instead of erasing it, which the shipped checkpoint does not achieve (docs/method.md).
With probability `prompt_dropout` the caption is empty, which trains the unconditional branch that classifier-free
guidance needs. The clip x0 (pixels in [-1, 1]) and Gaussian noise are mixed as x_t = (1 - sigma) x0 + sigma noise,
and the transformer learns the velocity noise - x0 at timestep 1000 sigma, the convention of
FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from reins.toy import world
from reins.toy.pipeline import COORDINATE_CHANNELS, RGB_CHANNELS, TEXT_TOKENS, TRAINING_RECORD, ToyVideoPipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Model shape and optimisation settings of `reins toy train`."""

    seed: int = 0
    steps: int = 4000
    batch_size: int = 32
    learning_rate: float = 1.5e-3
    warmup_steps: int = 100
    # Training stops early, with the weights it has, when this many minutes have passed.
    max_minutes: float = 15.0
    wrong_color_rate: float = 0.2
    prompt_dropout: float = 0.1
    num_layers: int = 8
    num_attention_heads: int = 2
    attention_head_dim: int = 32
    ffn_dim: int = 128
    text_dim: int = 32
    # Number of blocks, counted from the input, whose cross-attention reads the prompt. Later blocks get a zero, frozen
    # cross-attention output projection, so the prompt reaches them only through the hidden states.
    text_blocks: int = 8
    # CPU threads for torch. One thread keeps the order of float reductions fixed whatever the machine's core count.
    # NOTE: that a rerun gives bit-identical weights on the same torch build is expected but not tested.
    threads: int = 1


def build_pipeline(config: TrainingConfig) -> ToyVideoPipeline:
    """Build an untrained toy pipeline; the text encoder is random, rounded to float16 and never trained."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from reins.tiny.text import t5_tokenizer

    tokenizer = t5_tokenizer()
    torch.manual_seed(config.seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=config.text_dim, d_kv=8, d_ff=2 * config.text_dim, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    ))
    # The checkpoint stores float16, so the model trains on the embeddings the shipped encoder produces.
    text_encoder = text_encoder.half().float().eval().requires_grad_(False)
    transformer = WanTransformer3DModel(
        patch_size=(1, 4, 4), num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim, in_channels=RGB_CHANNELS + COORDINATE_CHANNELS,
        out_channels=RGB_CHANNELS, text_dim=config.text_dim, freq_dim=64, ffn_dim=config.ffn_dim,
        num_layers=config.num_layers, rope_max_seq_len=32,
    )
    if not 0 <= config.text_blocks <= config.num_layers:
        raise ValueError(f"invalid text_blocks {config.text_blocks}: expected 0 to num_layers ({config.num_layers})")
    for block in transformer.blocks[config.text_blocks:]:
        projection = block.attn2.to_out[0]
        torch.nn.init.zeros_(projection.weight)
        torch.nn.init.zeros_(projection.bias)
        projection.requires_grad_(False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    return ToyVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                            scheduler=scheduler)


def _caption_batch(scenes: list[world.Scene], config: TrainingConfig, rng: np.random.Generator) -> list[str]:
    colors = list(world.COLORS)
    captions = []
    for scene in scenes:
        color = scene.color
        if rng.random() < config.wrong_color_rate:
            color = rng.choice([other for other in colors if other != scene.color])
        text = world.caption(color, scene.shape, scene.motion)
        captions.append("" if rng.random() < config.prompt_dropout else text)
    return captions


def _learning_rate(step: int, config: TrainingConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(config: TrainingConfig, out: str | Path, progress: bool = True) -> dict:
    """Train a toy pipeline from `config.seed`, save it to `out` (float16 weights) and return the training record."""
    from tqdm.auto import tqdm

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    pipeline = build_pipeline(config)
    transformer = pipeline.transformer.train()

    # Every caption the world can produce, plus the empty one, encoded once by the frozen encoder.
    captions = [""] + [scene.prompt for scene in world.all_scenes()]
    embeddings = dict(zip(captions, pipeline.encode_prompt(captions, TEXT_TOKENS)))
    noise_generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.learning_rate, weight_decay=0.01)

    started = time.monotonic()
    losses: list[float] = []
    history = []
    steps_done = 0
    bar = tqdm(range(config.steps), desc="toy train", disable=not progress)
    for step in bar:
        if time.monotonic() - started > 60 * config.max_minutes:
            logger.warning("stopping at step %d of %d: the %.1f-minute limit was reached", step, config.steps,
                           config.max_minutes)
            break
        scenes = world.random_scenes(config.batch_size, rng)
        clips = torch.from_numpy(np.stack([world.render(scene) for scene in scenes]))
        x0 = clips.permute(0, 4, 1, 2, 3) * 2.0 - 1.0
        text = torch.stack([embeddings[caption] for caption in _caption_batch(scenes, config, rng)])
        noise = torch.randn(x0.shape, generator=noise_generator)
        sigma = torch.rand(x0.shape[0], generator=noise_generator)
        noisy = (1.0 - sigma[:, None, None, None, None]) * x0 + sigma[:, None, None, None, None] * noise
        prediction = transformer(hidden_states=pipeline.model_input(noisy), timestep=sigma * 1000.0,
                                 encoder_hidden_states=text, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(prediction, noise - x0)

        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()

        losses.append(float(loss.detach()))
        steps_done = step + 1
        if steps_done % 100 == 0:
            mean_loss = float(np.mean(losses[-100:]))
            history.append({"step": steps_done, "loss": round(mean_loss, 5),
                            "seconds": round(time.monotonic() - started, 1)})
            bar.set_postfix(loss=f"{mean_loss:.4f}")
    bar.close()

    seconds = time.monotonic() - started
    transformer.eval().half()
    pipeline.text_encoder.half()
    out = Path(out)
    pipeline.save_pretrained(out)
    parameters = sum(p.numel() for p in transformer.parameters())
    record = {
        "config": asdict(config),
        "steps_done": steps_done,
        "stopped_early": steps_done < config.steps,
        "seconds": round(seconds, 1),
        "final_loss": round(float(np.mean(losses[-100:])), 5) if losses else None,
        "transformer_parameters": parameters,
        "weights_dtype": "float16",
        "loss_history": history,
        "torch": torch.__version__,
    }
    (out / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    logger.info("trained %d steps in %.0f s, final loss %s; saved to %s", steps_done, seconds,
                record["final_loss"], out)
    return record
