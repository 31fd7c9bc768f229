"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from app.metrics import render
from app.storage import StorageError

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: Redis and storage answer",
            responses={503: {"description": "Redis or storage unreachable"}})
def readyz(request: Request, response: Response) -> dict:
    problems = {}
    try:
        request.app.state.redis.ping()
    except RedisError as error:
        problems["redis"] = str(error)
    try:
        request.app.state.storage.check()
    except StorageError as error:
        problems["storage"] = str(error)
    if problems:
        logger.warning("not ready: %s", problems)
        response.status_code = 503
        return {"status": "unavailable", **problems}
    return {"status": "ok"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    state = request.app.state
    return Response(render(state.metrics, state.queue_collector), media_type=CONTENT_TYPE_LATEST)
