"""Settings: the only place that reads the environment. Every variable is `REINS_<FIELD>`."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.config import ServerConfig, load_config


class Settings(BaseSettings):
    """Process settings shared by the API and the worker."""

    model_config = SettingsConfigDict(env_prefix="REINS_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # TOML file with the served models and the tenants; relative paths inside it are relative to the file.
    config_file: Path = Path("reins.toml")
    storage_dir: Path = Path("var/videos")
    # Prefix of every Redis key and RQ queue name, so that several deployments can share one Redis.
    key_prefix: str = "reins"
    job_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    max_prompt_chars: int = Field(4000, ge=1)
    max_request_bytes: int = Field(64 * 1024, ge=1024)
    # Limits on an input image (multipart requests): encoded bytes, and decoded pixels checked before decoding.
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"

    # Worker settings.
    worker_models: list[str] = Field(default_factory=list)  # empty: every model in the config file
    worker_device: str = "auto"
    worker_dtype: str = "auto"
    worker_metrics_port: int = Field(9101, ge=0, le=65535)  # 0 disables the worker's metrics endpoint
    # RQ timeout of a job: base plus cost per unit of work, where one unit is one denoising step over
    # 1 frame of 64x64 pixels. The default cost assumes a slow CPU; a GPU host can lower it.
    job_timeout_base_seconds: int = Field(120, ge=1)
    job_timeout_seconds_per_unit: float = Field(0.05, ge=0)
    video_fps: int = Field(16, ge=1, le=120)

    @cached_property
    def server_config(self) -> ServerConfig:
        return load_config(self.config_file)

    def queue_name(self, model: str) -> str:
        return f"{self.key_prefix}:{model}"

    def job_timeout_seconds(self, num_frames: int, height: int, width: int, num_inference_steps: int) -> int:
        """Return the RQ timeout for a job of this size."""
        units = num_inference_steps * num_frames * (height * width) / (64 * 64)
        return int(self.job_timeout_base_seconds + units * self.job_timeout_seconds_per_unit)
