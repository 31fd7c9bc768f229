"""One JSON error shape for every 4xx and 5xx: `{"error": {"code", "message", "field"}}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error returned to the client with its own status, code and message."""

    def __init__(self, status_code: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def error_response(status_code: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _describe_validation_error(error: dict[str, Any]) -> tuple[str | None, str]:
    location = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
    field = ".".join(location) or None
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return field, f"unknown field {field!r}; check the spelling against the API reference at /docs"
    if kind == "missing":
        return field, f"{field} is required"
    if kind == "json_invalid":
        return None, f"request body is not valid JSON: {error.get('msg', '')}"
    if kind in ("model_type", "dict_type") and field is None:
        return None, "request body must be a JSON object with the fields of GenerateRequest (see /docs)"
    received = error.get("input")
    preview = repr(received)
    if len(preview) > 80:
        preview = preview[:77] + "..."
    message = error.get("msg", "invalid value")
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if field is None:
        # A rule across fields: the whole body is the value, so it is not repeated.
        return None, message
    return field, f"{field}: {message[0].lower() + message[1:]}, got {preview}"


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"}) if hasattr(route, "matches") else (None, None)
        if match is not None and match.name != "NONE" and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error.status_code, error.code, error.message, error.field, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        field, message = _describe_validation_error(error.errors()[0])
        request.app.state.metrics.jobs_rejected_total.labels("invalid_request").inc()
        return error_response(422, "invalid_request", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        headers = dict(getattr(error, "headers", None) or {})
        if error.status_code == 405:
            # Starlette names only the methods of the first route that matched the path; list all of them.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(error.status_code, code, str(error.detail), headers=headers or None)

    @app.exception_handler(RedisError)
    async def _redis_error(request: Request, error: RedisError) -> JSONResponse:
        logger.error("redis unavailable on %s %s: %s", request.method, request.url.path, error)
        return error_response(
            503, "service_unavailable", "the job store is unavailable; retry shortly", headers={"Retry-After": "5"}
        )
