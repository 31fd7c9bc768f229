"""The server configuration file: the models this deployment serves.

It is TOML, read with the standard library, by the API and the worker alike. Tenants live in a file of their own,
managed with `reins tenants` (see `app.tenants`).

    [models.tiny-wan]
    path = "./models/tiny-wan"          # a hub id, or a folder: absolute, or starting with "./" or "../"
    family = "wan"
    direction = "directions/tiny-wan.safetensors"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reins.directions import DirectionMetadata
from reins.families import FAMILIES, ModelFamily, get_family


class ConfigError(ValueError):
    """The configuration file is missing or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """One served model: where to load it from, its family, its direction file and its request limits."""

    name: str = ""
    path: str
    family: str
    direction: Path
    revision: str | None = None
    max_num_frames: int = Field(129, ge=1)
    max_height: int = Field(1280, ge=16)
    max_width: int = Field(1280, ge=16)
    max_inference_steps: int = Field(100, ge=1)
    default_num_frames: int | None = None
    default_height: int | None = None
    default_width: int | None = None
    default_inference_steps: int = Field(30, ge=1)
    default_guidance_scale: float = 5.0
    # Steering policy of this model: the fractions of the denoising schedule to steer, and the guidance branches.
    step_window: tuple[float, float] = (0.0, 0.5)
    branch_mode: Literal["both", "cond"] = "both"
    # Scale each token's push by its own probe score clipped to [0, 1] (reins.steering.SteeringConfig.token_gate).
    token_gate: bool = False

    @model_validator(mode="after")
    def _check_family(self) -> "ModelConfig":
        start, end = self.step_window
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"step_window must satisfy 0 <= start < end <= 1, got {list(self.step_window)}")
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is unknown; known families: {', '.join(FAMILIES)}")
        return self

    def check_direction(self, metadata: DirectionMetadata) -> None:
        """Raise ValueError if this model's steering policy needs something its direction file lacks."""
        # The token gate reads each token's probe score, which the file's safe and unsafe means calibrate.
        if self.token_gate and metadata.probe_reference is None:
            raise ValueError(f"model {self.name}: token_gate = true needs a direction file with distinct safe and "
                             f"unsafe probe means, and {self.direction} has none; refit it with reins discover, or "
                             "set token_gate = false")

    @property
    def adapter(self) -> ModelFamily:
        return get_family(self.family)


class ServerConfig(_Strict):
    """Everything in the configuration file."""

    models: dict[str, ModelConfig]


def load_config(path: str | Path) -> ServerConfig:
    """Read and validate the configuration file; relative paths in it are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path} (set REINS_CONFIG_FILE)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None

    base = path.resolve().parent
    models = {}
    for name, entry in raw.get("models", {}).items():
        entry = dict(entry, name=name)
        for key in ("direction", "path"):
            value = entry.get(key)
            if isinstance(value, str) and not Path(value).is_absolute() and (key == "direction" or value.startswith(".")):
                entry[key] = str(base / value)
        models[name] = entry
    if "tenants" in raw:
        raise ConfigError(f"{path}: tenants belong in the tenants file (REINS_TENANTS_FILE), managed with "
                          "'reins tenants'")
    unknown = set(raw) - {"models"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}; expected [models.NAME] sections")
    try:
        config = ServerConfig(models=models)
    except ValidationError as error:
        raise ConfigError(f"{path}: {error}") from None
    if not config.models:
        raise ConfigError(f"{path}: no [models.NAME] section")
    return config
