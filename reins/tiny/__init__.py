"""Tiny random-weight pipelines built from diffusers' real classes, for tests, demos and benchmarks.

No weights are downloaded: every component is initialised from a seed, the tokenizer is built locally, and the
pipeline is written with `save_pretrained` so that everything else loads it through `from_pretrained`, the same path
a real checkpoint takes.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SIZES = ("tiny", "small")
MARKER_FILE = "reins_tiny.json"

# Words that get their own token. Any other word is split into characters, so every prompt tokenizes.
_WORDS = """a an the of on in at to with and or is are by from over under near into
person man woman child people crowd car street city forest sea sky fire smoke water rain snow night day
red green blue yellow white black orange purple square circle triangle ball box cat dog bird horse
moving running walking flying falling left right up down slowly quickly
weapon gun knife blood fight attack violent explosion crash safe calm peaceful garden flower tree
""".split()


@dataclass(frozen=True)
class TinySpec:
    """Shapes of one tiny Wan pipeline and the generation size it is meant for."""

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    ffn_dim: int
    text_dim: int
    vae_base_dim: int
    height: int
    width: int
    num_frames: int
    num_inference_steps: int


TINY_SPECS = {
    "tiny": TinySpec(4, 2, 12, 48, 32, 3, 32, 32, 9, 4),
    "small": TinySpec(8, 4, 16, 128, 64, 8, 128, 128, 17, 8),
}


def build_tokenizer():
    """Build a T5-style unigram tokenizer from a fixed vocabulary, with no download."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0 - rank / 1000) for rank, word in enumerate(_WORDS)]
    pieces += [("\u2581", -8.0)]
    pieces += [(char, -10.0) for char in string.ascii_lowercase + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_wan(size: str = "tiny", seed: int = 0):
    """Build a random-weight `WanPipeline`; the same size and seed give the same weights."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if size not in TINY_SPECS:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    spec = TINY_SPECS[size]
    tokenizer = build_tokenizer()

    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=spec.text_dim,
            d_kv=8,
            d_ff=2 * spec.text_dim,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=spec.num_attention_heads,
        attention_head_dim=spec.attention_head_dim,
        in_channels=4,
        out_channels=4,
        text_dim=spec.text_dim,
        freq_dim=32,
        ffn_dim=spec.ffn_dim,
        num_layers=spec.num_layers,
        rope_max_seq_len=64,
    )
    vae = AutoencoderKLWan(
        base_dim=spec.vae_base_dim,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
    )


def save_tiny_model(out: str | Path, family: str = "wan", size: str = "tiny", seed: int = 0) -> Path:
    """Build a tiny pipeline and write it to `out` with `save_pretrained`; return the folder."""
    if family != "wan":
        raise ValueError(f"no tiny builder for family {family!r}; available: wan")
    out = Path(out)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    pipeline = build_wan(size=size, seed=seed)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    pipeline.save_pretrained(out)
    spec = TINY_SPECS[size]
    marker = {"family": family, "size": size, "seed": seed, "spec": asdict(spec)}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def read_tiny_marker(folder: str | Path) -> dict | None:
    """Return the build record of a tiny model folder, or None for any other folder."""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
