"""Tiny random-weight pipelines built from diffusers' real classes, for tests, demos and benchmarks.

No weights are downloaded: every component is initialised from a seed, tokenizers are built locally, and the pipeline
is written with `save_pretrained`, so everything else loads it through `from_pretrained`, the path a real checkpoint
takes. Each family module of this package exports TINY_MODELS, a tuple of `TinyModel`, listed in `_MODULES`.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

SIZES = ("tiny", "small")
MARKER_FILE = "reins_tiny.json"


@dataclass(frozen=True)
class GenerationDefaults:
    """Generation size a tiny pipeline is built for."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int


@dataclass(frozen=True)
class TinyModel:
    """A named tiny pipeline: its family adapter, its builder and the sizes it is meant for."""

    name: str
    family: str
    # build(size, seed) returns a pipeline with random weights; the same size and seed give the same weights.
    build: Callable[[str, int], Any]
    defaults: dict[str, GenerationDefaults]


_MODULES = ("wan", "cogvideox", "ltx", "allegro", "hunyuan", "mochi")


def _load_tiny_models() -> dict[str, TinyModel]:
    models: dict[str, TinyModel] = {}
    for module_name in _MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        for model in module.TINY_MODELS:
            models[model.name] = model
    return models


TINY_MODELS: dict[str, TinyModel] = _load_tiny_models()


def get_tiny_model(name: str) -> TinyModel:
    try:
        return TINY_MODELS[name]
    except KeyError:
        raise ValueError(f"no tiny builder for {name!r}; available: {', '.join(TINY_MODELS)}") from None


def build_pipeline(name: str, size: str = "tiny", seed: int = 0) -> Any:
    """Build a tiny pipeline in memory."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return get_tiny_model(name).build(size, seed)


def save_tiny_model(out: str | Path, family: str = "wan", size: str = "tiny", seed: int = 0) -> Path:
    """Build a tiny pipeline and write it to `out` with `save_pretrained`; return the folder."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    model = get_tiny_model(family)
    pipeline = build_pipeline(family, size=size, seed=seed)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    out = Path(out)
    pipeline.save_pretrained(out)
    marker = {"name": family, "family": model.family, "size": size, "seed": seed,
              "defaults": asdict(model.defaults[size])}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def read_tiny_marker(folder: str | Path) -> dict | None:
    """Return the build record of a tiny model folder, or None for any other folder."""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
