"""The server configuration file: the models this deployment serves and its tenants.

It is TOML, read with the standard library, by the API and the worker alike:

    [models.tiny-wan]
    path = "./models/tiny-wan"          # a hub id, or a folder: absolute, or starting with "./" or "../"
    family = "wan"
    direction = "directions/tiny-wan.safetensors"

    [tenants.demo]
    api_key_sha256 = "..."              # sha256 hex digest of the key; the key itself is never stored
    default_strength = 1.0
    min_strength = 0.0
    max_strength = 2.0
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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

    @model_validator(mode="after")
    def _check_family(self) -> "ModelConfig":
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is unknown; known families: {', '.join(FAMILIES)}")
        return self

    @property
    def adapter(self) -> ModelFamily:
        return get_family(self.family)


class TenantConfig(_Strict):
    """One tenant: the hash of its API key and its steering policy."""

    name: str = ""
    api_key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    default_strength: float
    min_strength: float
    max_strength: float
    models: list[str] | None = None  # None: every configured model

    @model_validator(mode="after")
    def _check_range(self) -> "TenantConfig":
        if not self.min_strength <= self.default_strength <= self.max_strength:
            raise ValueError(
                f"need min_strength <= default_strength <= max_strength, got "
                f"{self.min_strength}, {self.default_strength}, {self.max_strength}"
            )
        return self


class ServerConfig(_Strict):
    """Everything in the configuration file."""

    models: dict[str, ModelConfig]
    tenants: dict[str, TenantConfig]


def hash_api_key(key: str) -> str:
    """Return the sha256 hex digest under which an API key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


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
    tenants = {name: dict(entry, name=name) for name, entry in raw.get("tenants", {}).items()}
    try:
        config = ServerConfig(models=models, tenants=tenants)
    except ValidationError as error:
        raise ConfigError(f"{path}: {error}") from None
    if not config.models:
        raise ConfigError(f"{path}: no [models.NAME] section")
    for tenant in config.tenants.values():
        unknown = set(tenant.models or ()) - set(config.models)
        if unknown:
            raise ConfigError(f"{path}: tenant {tenant.name!r} allows unknown models {sorted(unknown)}")
    return config
