"""Wire models: the JSON bodies of every request and response, in one place.

Every request model rejects unknown fields, so a misspelt field is an error instead of a silently ignored value.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
TERMINAL_STATUSES = ("completed", "failed", "cancelled")
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed.


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerateRequest(_Request):
    """Body of `POST /v1/generate`. Omitted sizes, steps and guidance take the model's defaults."""

    model: str = Field(min_length=1, max_length=128)
    prompt: str
    negative_prompt: str = ""
    num_frames: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    # Multiple of the direction's reference norm, within the tenant's allowed range.
    steering_strength: float | None = None
    # A named strength from the tenant's presets (for example "light" or "strict"); excludes steering_strength.
    steering_preset: str | None = Field(None, min_length=1, max_length=64)
    # URL that receives this job's signed events, in addition to the tenant's webhook.
    webhook_url: str | None = Field(None, max_length=2048, pattern=r"^https?://")

    @model_validator(mode="after")
    def _one_strength_source(self) -> "GenerateRequest":
        if self.steering_strength is not None and self.steering_preset is not None:
            raise ValueError("send steering_strength or steering_preset, not both")
        return self

    @field_validator("guidance_scale", "steering_strength", mode="before")
    @classmethod
    def _reject_strings(cls, value: Any) -> Any:
        # pydantic would parse "NaN" or "1.5" from a string; numbers must arrive as JSON numbers.
        if isinstance(value, str):
            raise ValueError("must be a JSON number, not a string")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class SteeringApplied(_Response):
    """The steering a job runs with, recorded on the job."""

    strength: float
    # "request", "tenant_default" or "preset:<name>".
    strength_source: str
    direction_sha256: str
    block_index: int
    reference_norm: float
    step_window: tuple[float, float]
    branch_mode: str
    token_gate: bool = False
    model_revision: str | None = None


class InputImage(_Response):
    """The input image of an image-to-video job, as stored after decoding and fitting to the video size."""

    sha256: str
    source_width: int
    source_height: int
    source_format: str


class JobParams(_Response):
    """The request as accepted, with every default filled in."""

    prompt: str
    negative_prompt: str
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    prompt_tokens: int | None = None
    prompt_truncated: bool | None = None
    input_image: InputImage | None = None


class JobError(_Response):
    code: str
    message: str


class JobResult(_Response):
    """Location and contents of the finished video."""

    url: str
    content_type: str = "video/mp4"
    bytes: int
    num_frames: int
    width: int
    height: int
    # sha256 of the decoded uint8 frames before encoding: equal hashes mean bit-identical generations.
    frames_sha256: str
    # Block calls that the steering hook changed (0 when the strength is 0).
    steered_block_calls: int
    # Projection of the unsteered hidden state on the direction: 0 near the safe discovery mean, 1 near the unsafe one.
    probe_score: float | None = None


class Job(_Response):
    """A generation job as the API returns it."""

    object: Literal["job"] = "job"
    id: str
    tenant: str
    model: str
    status: JobStatus
    progress: float = 0.0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: JobParams
    steering: SteeringApplied
    result: JobResult | None = None
    error: JobError | None = None


class ErrorBody(_Response):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(_Response):
    """The shape of every 4xx and 5xx body."""

    error: ErrorBody


class JobList(_Response):
    """One page of a tenant's jobs, newest first."""

    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool
    # Pass as `after` to get the next page.
    last_id: str | None = None


class DeletedJob(_Response):
    id: str
    object: Literal["job.deleted"] = "job.deleted"
    deleted: bool = True
