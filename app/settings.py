"""Settings: the only place that reads the environment. Every variable is `REINS_<FIELD>`."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.config import ServerConfig, load_config


class Settings(BaseSettings):
    """Process settings shared by the API and the worker."""

    model_config = SettingsConfigDict(env_prefix="REINS_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # TOML file with the served models; relative paths inside it are relative to the file.
    config_file: Path = Path("reins.toml")
    # TOML file with the tenants, managed by 'reins tenants'; the API reloads it when it changes.
    tenants_file: Path = Path("tenants.toml")
    # Where videos and input images are stored: a local folder (storage_dir) or an S3-compatible bucket.
    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path = Path("var/videos")
    s3_bucket: str = ""
    # Key prefix inside the bucket, such as "reins/videos". Empty stores objects at the bucket's top level.
    s3_prefix: str = ""
    # Endpoint the API and the worker use, such as http://minio:9000. Empty means AWS S3 in s3_region.
    s3_endpoint_url: str = ""
    # Endpoint that clients reach, such as http://localhost:9000. Presigned URLs are signed for it because SigV4
    # signs the host. Empty means s3_endpoint_url.
    s3_public_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    # Without a key id and secret, boto3's default credential chain applies (environment, ~/.aws, instance role).
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    # "path" (bucket in the URL path) suits MinIO and SeaweedFS, and "virtual" puts the bucket in the host name.
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Tries of each S3 request (uploads, and also reads and deletes) on connection errors, timeouts and 5xx
    # responses, with exponential backoff from 0.5 s (with jitter, capped at 20 s). The readiness check tries once.
    s3_upload_attempts: int = Field(4, ge=1, le=20)
    presigned_url_ttl_seconds: int = Field(3600, ge=1, le=7 * 24 * 3600)
    # How `GET /v1/jobs/{id}/content` delivers a video: "redirect" returns a 307 redirect to a presigned URL when
    # the backend has them (S3), and "stream" sends the bytes through the API. The local backend always streams.
    content_delivery: Literal["stream", "redirect"] = "stream"
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
    # How long the API lets requests in flight finish after SIGTERM.
    shutdown_grace_seconds: float = Field(30.0, gt=0)
    # Server-sent events: how often a stream checks the job, and how long one stream may stay open.
    events_poll_seconds: float = Field(0.25, gt=0)
    events_max_seconds: float = Field(3600, gt=0)
    # "reject": return 503 for a model that no live worker serves. "accept": queue it until a worker comes.
    queue_without_worker: Literal["reject", "accept"] = "reject"
    # Deliver webhooks to private, loopback and link-local addresses (off by default: a tenant's URL must not
    # reach the deployment's internal services).
    webhook_allow_private_addresses: bool = False
    # Delays before each retry of a failed webhook delivery; its length is the number of retries.
    webhook_retry_intervals_seconds: list[int] = Field(default_factory=lambda: [10, 60, 300, 1800, 7200])
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    # Port of the webhook dispatcher's Prometheus endpoint, bound to `host`. 0 disables the endpoint.
    webhook_metrics_port: int = Field(9102, ge=0, le=65535)
    # "text" or "json" (one JSON object per line, with job_id, tenant and model fields where they apply).
    log_format: Literal["text", "json"] = "text"

    # A running job whose worker sends no heartbeat for heartbeat_timeout_seconds is requeued, up to
    # job_max_attempts starts in all, then failed with worker_lost. The API checks every reaper_interval_seconds.
    heartbeat_interval_seconds: float = Field(5.0, gt=0)
    heartbeat_timeout_seconds: float = Field(30.0, gt=0)
    reaper_interval_seconds: float = Field(10.0, gt=0)
    job_max_attempts: int = Field(2, ge=1)
    # How often the API deletes stored videos and input images whose job record has expired.
    retention_interval_seconds: float = Field(3600.0, gt=0)

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
