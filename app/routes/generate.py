"""`POST /v1/generate`: validate, apply the tenant's steering policy, record the job and queue it."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.deps import Tenant, reject_unknown_query_parameters
from app.errors import APIError
from app.jobs import JobNotFound, new_job_id, utc_now
from app.limits import IdempotencyConflict, check_rate, fingerprint
from app.logs import job_context
from app.protocol import (
    ErrorResponse,
    GenerateRequest,
    InputImage,
    Job,
    JobParams,
    SteeringApplied,
)
from app.queue import count_workers, enqueue_job, poll_headers
from app.webhooks import WebhookDestinationRejected, check_destination
from app.storage import input_image_key
from app.tenants import TenantConfig
from app.tokens import count_tokens

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[Depends(reject_unknown_query_parameters)])



def _invalid(field: str, message: str) -> APIError:
    return APIError(422, "invalid_request", f"{field}: {message}", field)


IMAGE_FIELD = "image"
_INTEGER_FIELDS = {"num_frames", "height", "width", "num_inference_steps", "seed"}
_NUMBER_FIELDS = {"guidance_scale", "steering_strength"}


def _form_value(name: str, text: str) -> Any:
    """Convert a multipart text field to the JSON type of its GenerateRequest field.

    Text that does not parse stays text, so that validation reports the field and the value.
    """
    try:
        if name in _INTEGER_FIELDS:
            return int(text)
        if name in _NUMBER_FIELDS:
            return float(text)
    except ValueError:
        return text
    return text


async def _read_body(request: Request) -> tuple[GenerateRequest, UploadFile | None]:
    """Parse a JSON body, or a multipart form whose file part `image` is the input image."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=32)
        values: dict[str, Any] = {}
        image = None
        for name, value in form.multi_items():
            if name in values or (name == IMAGE_FIELD and image is not None):
                raise APIError(422, "invalid_request", f"{name}: given more than once", name)
            if isinstance(value, UploadFile):
                if name != IMAGE_FIELD:
                    raise APIError(422, "invalid_request", f"{name}: only the {IMAGE_FIELD!r} part may be a file", name)
                image = value
            elif name == IMAGE_FIELD:
                raise APIError(422, "invalid_request", f"{IMAGE_FIELD}: must be a file part, got a text field", name)
            else:
                values[name] = _form_value(name, value)
    elif content_type in ("application/json", ""):
        try:
            values = json.loads(await request.body())
        except ValueError as error:
            raise APIError(422, "invalid_request", f"request body is not valid JSON: {error}") from None
        image = None
    else:
        raise APIError(415, "unsupported_media_type",
                       f"content-type {content_type!r} is not accepted; send application/json, or "
                       "multipart/form-data with an image part")
    try:
        return GenerateRequest.model_validate(values), image
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


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
    if steps < family.min_inference_steps:
        raise _invalid("num_inference_steps", f"must be at least {family.min_inference_steps} for {family.name} "
                                              f"models, got {steps}")

    presets = tenant.allowed_presets
    if body.steering_preset is not None:
        if body.steering_preset not in presets:
            raise _invalid("steering_preset", f"unknown preset {body.steering_preset!r}; this tenant's presets: "
                                              f"{', '.join(sorted(presets)) or 'none'}")
        strength, source = presets[body.steering_preset], f"preset:{body.steering_preset}"
    elif body.steering_strength is None:
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
        model_revision=model.revision,
        strength=strength,
        strength_source=source,
        direction_sha256=served.direction.sha256,
        block_index=served.direction.block_index,
        reference_norm=served.direction.reference_norm,
        # The window and branch mode are the operator's policy for the model, not request fields.
        step_window=model.step_window,
        branch_mode=model.branch_mode,
        token_gate=model.token_gate,
    )
    return params, steering


def _fit_image(request: Request, upload_bytes: bytes, params: JobParams) -> tuple[bytes, InputImage]:
    """Decode the uploaded image, fit it to the video size and return it as PNG with its description."""
    from PIL import Image

    from reins.images import ImageError, ImageTooLarge, load_image

    settings = request.app.state.settings
    try:
        with Image.open(io.BytesIO(upload_bytes)) as probe:
            source = (probe.width, probe.height, probe.format or "unknown")
    except Exception:
        source = None
    try:
        image = load_image(upload_bytes, params.width, params.height, settings.max_image_bytes,
                           settings.max_image_pixels)
    except ImageTooLarge as error:
        raise APIError(413, "image_too_large", f"{IMAGE_FIELD}: {error}", IMAGE_FIELD) from None
    except ImageError as error:
        raise APIError(422, "invalid_image", f"{IMAGE_FIELD}: {error}", IMAGE_FIELD) from None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    width, height, fmt = source or (image.width, image.height, "unknown")
    return data, InputImage(sha256=hashlib.sha256(data).hexdigest(), source_width=width, source_height=height,
                            source_format=fmt)


def _accept(request: Request, body: GenerateRequest, upload: bytes | None, tenant: TenantConfig,
            idempotency_key: str | None) -> tuple[Job, bool]:
    """Validate, apply limits, store the input image, write the job record and enqueue it.

    Returns the job and whether it is the replay of an earlier request with the same Idempotency-Key. Runs in a
    worker thread, since Redis calls block.
    """
    state = request.app.state
    params, steering = _resolve_params(request, body, tenant)
    family = state.models[body.model].config.adapter
    if family.image_input == "required" and upload is None:
        raise _invalid(IMAGE_FIELD, f"{body.model} is an image-to-video model; send the image as a multipart file "
                                    f"part named {IMAGE_FIELD!r}")
    if family.image_input == "none" and upload is not None:
        raise _invalid(IMAGE_FIELD, f"{body.model} is a text-to-video model and takes no image")
    webhook_urls = [url for url in (tenant.webhook_url, body.webhook_url) if url]
    if body.webhook_url and not tenant.webhook_secret:
        raise _invalid("webhook_url", "this tenant has no webhook secret to sign deliveries with; create the tenant "
                                      "with --webhook-url")
    if body.webhook_url:
        try:
            check_destination(body.webhook_url, state.settings.webhook_allow_private_addresses)
        except WebhookDestinationRejected as refused:
            raise _invalid("webhook_url", str(refused)) from None

    job_id = new_job_id()
    if idempotency_key is not None:
        request_fingerprint = fingerprint(body.model_dump(mode="json"), upload)
        try:
            earlier = state.idempotency.reserve(tenant.name, idempotency_key, request_fingerprint, job_id)
        except IdempotencyConflict as conflict:
            raise APIError(409, conflict.code, str(conflict), "Idempotency-Key") from None
        if earlier is not None:
            try:
                return state.jobs.get_job(earlier), True
            except JobNotFound:
                raise APIError(409, "idempotent_request_in_progress", "the first request with this "
                               "Idempotency-Key is still being processed; retry in a moment", "Idempotency-Key") from None

    try:
        job = _create_and_enqueue(request, body, upload, tenant, job_id, params, steering, webhook_urls)
    except BaseException:
        if idempotency_key is not None:
            state.idempotency.release(tenant.name, idempotency_key)
        raise
    return job, False


def _create_and_enqueue(request: Request, body: GenerateRequest, upload: bytes | None, tenant: TenantConfig,
                        job_id: str, params: JobParams, steering: SteeringApplied, webhook_urls: list[str]) -> Job:
    state = request.app.state
    settings = state.settings
    queue_name = settings.queue_name(body.model)
    if settings.queue_without_worker == "reject" and count_workers(state.redis, queue_name) == 0:
        raise APIError(503, "model_unavailable", f"no worker serves {body.model!r} at the moment; retry later",
                       "model", headers={"Retry-After": "30"})
    if upload is not None:
        png, described = _fit_image(request, upload, params)
        params = params.model_copy(update={"input_image": described})
        state.storage.put_bytes(input_image_key(job_id), png)

    job = Job(id=job_id, tenant=tenant.name, model=body.model, status="queued", created_at=utc_now(),
              request=params, steering=steering)
    record = job.model_dump(mode="json")
    record["webhook_urls"] = webhook_urls
    if not state.jobs.create(record, max_active=tenant.max_concurrent_jobs):
        if upload is not None:
            state.storage.delete(input_image_key(job_id))
        raise APIError(429, "concurrency_limit", f"this tenant already has {tenant.max_concurrent_jobs} jobs queued "
                       "or running, its limit; wait for one to finish", headers={"Retry-After": "5"})
    timeout = settings.job_timeout_seconds(params.num_frames, params.height, params.width, params.num_inference_steps)
    try:
        enqueue_job(state.redis, queue_name, job.id, timeout, settings.job_ttl_seconds)
    except Exception:
        # Nothing runs a record that never reached the queue, so remove it rather than leave it queued forever.
        logger.exception("job %s: enqueue failed, removing its record", job.id)
        state.jobs.delete(job.id, tenant.name)
        raise
    return job


@router.post(
    "/generate",
    status_code=202,
    response_model=Job,
    responses={
        401: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
        415: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
    summary="Queue a steered video generation",
    description=(
        "Send the fields as JSON, or as a multipart form with the input image of an image-to-video model in a file "
        f"part named `{IMAGE_FIELD}`. The image is oriented by its EXIF tag, converted to RGB and centre-cropped and "
        "resized to the requested size."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}},
                "multipart/form-data": {"schema": {"$ref": "#/components/schemas/GenerateRequestForm"}},
            },
        }
    },
)
async def create_generation(
    request: Request,
    response: Response,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header(max_length=255, description="Retries with the same key and body "
                                                  "return the original job")] = None,
) -> Job:
    state = request.app.state
    metrics = state.metrics
    try:
        if tenant.rate_limit_per_minute is not None:
            wait = await run_in_threadpool(check_rate, state.redis, state.settings.key_prefix, tenant.name,
                                           tenant.rate_limit_per_minute)
            if wait is not None:
                raise APIError(429, "rate_limited", f"this tenant may send {tenant.rate_limit_per_minute} requests "
                               f"per minute; retry in {wait} s", headers={"Retry-After": str(wait)})
        body, image = await _read_body(request)
        upload = None
        if image is not None:
            upload = await image.read(state.settings.max_image_bytes + 1)
        job, replayed = await run_in_threadpool(_accept, request, body, upload, tenant, idempotency_key)
    except APIError as error:
        metrics.jobs_rejected_total.labels(error.code).inc()
        raise

    response.headers.update(poll_headers(job))
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
        logger.info("job %s: replayed for Idempotency-Key", job.id)
        return job
    metrics.jobs_submitted_total.labels(body.model, tenant.name).inc()
    params, steering = job.request, job.steering
    with job_context(job.id, tenant.name, body.model):
        logger.info(
            "job %s: queued model=%s tenant=%s strength=%s (%s) frames=%d size=%dx%d steps=%d image=%s",
            job.id, body.model, tenant.name, steering.strength, steering.strength_source,
            params.num_frames, params.width, params.height, params.num_inference_steps, params.input_image is not None,
        )
    return job
