"""Application factory. Nothing is opened at import time: `create_app(settings)` builds the app and its lifespan
opens and closes Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import ModelConfig
from app.errors import error_response, install_error_handlers
from app.jobs import JobStore
from app.limits import IdempotencyKeys
from app.logs import configure_logging
from app.metrics import ApiMetrics, QueueCollector
from app.reaper import run_reaper
from app.redis_connection import connect
from app.routes import generate, health, jobs
from app.settings import Settings
from app.storage import make_storage
from app.tenants import TenantRegistry
from app.tokens import load_token_counter
from app.webhooks import enqueue_deliveries
from reins.directions import DirectionMetadata, load_direction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A configured model with what the API needs to validate requests for it."""

    config: ModelConfig
    direction: DirectionMetadata
    tokenizer: object | None


def load_served_models(settings: Settings) -> dict[str, ServedModel]:
    models = {}
    for name, model in settings.server_config.models.items():
        direction = load_direction(model.direction).metadata
        if direction.family != model.family:
            raise ValueError(f"model {name}: direction {model.direction} is for family {direction.family}")
        model.check_direction(direction)
        models[name] = ServedModel(model, direction, load_token_counter(model.path))
    return models


class RequestContextMiddleware:
    """Rejects oversized bodies with 413 before reading them, sets `x-request-id`, and records request metrics."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_json_bytes = max_body_bytes
        # A multipart request carries the image plus the text fields.
        self.max_multipart_bytes = max_upload_bytes + max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        started = time.perf_counter()
        status = {"code": 500}
        is_multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        limit = self.max_multipart_bytes if is_multipart else self.max_json_bytes

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if is_multipart:
                detail, field = "the image is limited by REINS_MAX_IMAGE_BYTES", "image"
            else:
                detail, field = "prompts are limited in characters, see the prompt field's limit in /docs", None
            response = error_response(
                413, "request_too_large", f"request body is {int(declared)} bytes; the limit is {limit} bytes ({detail})",
                field,
            )
            await response(scope, receive, send_with_id)
            self._observe(scope, status["code"], started)
            return

        received = {"bytes": 0}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            response = error_response(
                413, "request_too_large", f"request body exceeds the limit of {limit} bytes"
            )
            await response(scope, receive, send_with_id)
        finally:
            self._observe(scope, status["code"], started)

    def _observe(self, scope: Scope, status_code: int, started: float) -> None:
        route = scope.get("route")
        # Label by route template, never by the raw path, so that job ids do not create new series.
        template = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.requests_total.labels(template, method, str(status_code)).inc()
        self.metrics.request_duration_seconds.labels(template, method).observe(time.perf_counter() - started)


class _BodyTooLarge(Exception):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API app. Configuration errors surface here, before the server accepts a connection."""
    settings = settings or Settings()
    if not logging.getLogger().handlers:
        # Server processes started by uvicorn's --workers import the app without running the CLI's setup.
        configure_logging(settings.log_level, settings.log_format)
    metrics = ApiMetrics()
    models = load_served_models(settings)
    tenants = TenantRegistry(settings.tenants_file, list(models))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redis = connect(settings.redis_url)
        app.state.redis = redis
        app.state.jobs = JobStore(redis, settings.key_prefix, settings.job_ttl_seconds)
        app.state.idempotency = IdempotencyKeys(redis, settings.key_prefix, settings.job_ttl_seconds)

        def announce_failure(record: dict) -> None:
            enqueue_deliveries(redis, settings.key_prefix, record, "failed", settings.webhook_retry_intervals_seconds)

        reaper = asyncio.create_task(run_reaper(app.state.jobs, settings, storage=app.state.storage,
                                                on_failed=announce_failure))
        logger.info("api started: models=%s", ",".join(models))
        try:
            yield
        finally:
            reaper.cancel()
            redis.close()
            logger.info("api stopped")

    app = FastAPI(
        title="REINS Server",
        summary="Video generation with inference-time safety steering.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.queue_collector = QueueCollector(
        lambda: getattr(app.state, "redis", None), {name: settings.queue_name(name) for name in models}
    )
    app.state.models = models
    app.state.tenants = tenants
    app.state.storage = make_storage(settings)
    install_error_handlers(app)
    app.include_router(generate.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_request_bytes,
                       max_upload_bytes=settings.max_image_bytes)
    app.openapi = lambda: _openapi_with_request_schemas(app)
    return app


def _openapi_with_request_schemas(app: FastAPI) -> dict:
    """Build the OpenAPI document once, adding the request schemas of `POST /v1/generate`.

    The route reads JSON or multipart itself, so FastAPI does not see its body model.
    """
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        from app.protocol import GenerateRequest

        document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        json_schema = GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas["GenerateRequest"] = json_schema
        form_schema = json.loads(json.dumps(json_schema))
        form_schema["title"] = "GenerateRequestForm"
        form_schema["properties"]["image"] = {
            "type": "string", "format": "binary",
            "description": "Input image of an image-to-video model (JPEG, PNG, WebP, GIF, BMP, TIFF).",
        }
        schemas["GenerateRequestForm"] = form_schema
        app.openapi_schema = document
    return app.openapi_schema
