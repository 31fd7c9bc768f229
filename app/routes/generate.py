"""`POST /v1/generate`: validate, apply the tenant's steering policy, record the job and queue it."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from app.config import TenantConfig
from app.deps import Tenant
from app.errors import APIError
from app.jobs import new_job_id, utc_now
from app.protocol import ErrorResponse, GenerateRequest, Job, JobParams, SteeringApplied
from app.queue import enqueue_job
from app.tokens import count_tokens

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["generation"])

# The denoising-step window and branch mode are server policy, not request fields.
STEP_WINDOW = (0.0, 0.5)
BRANCH_MODE = "both"


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, "invalid_request", f"{field}: {message}", field)


def _resolve_params(request: Request, body: GenerateRequest, tenant: TenantConfig) -> tuple:
    """Check `body` against the model's rules and fill in defaults; raise APIError naming the first bad field."""
    settings = request.app.state.settings
    models = request.app.state.models
    allowed = [name for name in models if tenant.models is None or name in tenant.models]
    served = models.get(body.model)
    if served is None or body.model not in allowed:
        raise _invalid("model", f"unknown model {body.model!r}; available models: {', '.join(allowed) or 'none'}")
    model = served.config
    family = model.adapter

    prompt = body.prompt
    if not prompt.strip():
        raise _invalid("prompt", "must not be empty")
    for field, text in (("prompt", prompt), ("negative_prompt", body.negative_prompt)):
        if len(text) > settings.max_prompt_chars:
            raise _invalid(field, f"must be at most {settings.max_prompt_chars} characters, got {len(text)}")

    num_frames = body.num_frames or model.default_num_frames or family.default_num_frames
    height = body.height or model.default_height or family.default_height
    width = body.width or model.default_width or family.default_width
    steps = body.num_inference_steps or model.default_inference_steps
    if num_frames > model.max_num_frames:
        raise _invalid("num_frames", f"must be at most {model.max_num_frames} for {body.model}, got {num_frames}")
    if (problem := family.frame_count_error(num_frames)) is not None:
        raise _invalid("num_frames", problem)
    for field, value, limit in (("height", height, model.max_height), ("width", width, model.max_width)):
        if value > limit:
            raise _invalid(field, f"must be at most {limit} for {body.model}, got {value}")
        if (problem := family.size_error(value)) is not None:
            raise _invalid(field, problem)
    if steps > model.max_inference_steps:
        raise _invalid("num_inference_steps", f"must be at most {model.max_inference_steps}, got {steps}")

    if body.steering_strength is None:
        strength, source = tenant.default_strength, "tenant_default"
    else:
        strength, source = body.steering_strength, "request"
    if not tenant.min_strength <= strength <= tenant.max_strength:
        raise _invalid(
            "steering_strength",
            f"must be within this tenant's allowed range [{tenant.min_strength}, {tenant.max_strength}], got {strength}",
        )

    tokens = count_tokens(served.tokenizer, prompt) if served.tokenizer is not None else None
    params = JobParams(
        prompt=prompt,
        negative_prompt=body.negative_prompt,
        num_frames=num_frames,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=model.default_guidance_scale if body.guidance_scale is None else body.guidance_scale,
        seed=0 if body.seed is None else body.seed,
        prompt_tokens=tokens,
        prompt_truncated=None if tokens is None else tokens > family.text_token_limit,
    )
    steering = SteeringApplied(
        strength=strength,
        strength_source=source,
        direction_sha256=served.direction.sha256,
        block_index=served.direction.block_index,
        reference_norm=served.direction.reference_norm,
        step_window=STEP_WINDOW,
        branch_mode=BRANCH_MODE,
    )
    return params, steering


@router.post(
    "/generate",
    status_code=202,
    response_model=Job,
    responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Queue a steered video generation",
)
def create_generation(request: Request, body: GenerateRequest, tenant: Tenant) -> Job:
    metrics = request.app.state.metrics
    settings = request.app.state.settings
    try:
        params, steering = _resolve_params(request, body, tenant)
    except APIError as error:
        metrics.jobs_rejected_total.labels(error.code).inc()
        raise

    job = Job(
        id=new_job_id(),
        tenant=tenant.name,
        model=body.model,
        status="queued",
        created_at=utc_now(),
        request=params,
        steering=steering,
    )
    request.app.state.jobs.create(job.model_dump(mode="json"))
    timeout = settings.job_timeout_seconds(params.num_frames, params.height, params.width, params.num_inference_steps)
    try:
        enqueue_job(request.app.state.redis, settings.queue_name(body.model), job.id, timeout, settings.job_ttl_seconds)
    except Exception:
        # Nothing runs a record that never reached the queue, so remove it rather than leave it queued forever.
        logger.exception("job %s: enqueue failed, removing its record", job.id)
        request.app.state.jobs.delete(job.id)
        raise
    metrics.jobs_submitted_total.labels(body.model, tenant.name).inc()
    logger.info(
        "job %s: queued model=%s tenant=%s strength=%s (%s) frames=%d size=%dx%d steps=%d",
        job.id, body.model, tenant.name, steering.strength, steering.strength_source,
        params.num_frames, params.width, params.height, params.num_inference_steps,
    )
    return job
