"""The job resource: list, read, follow, download, cancel and delete a tenant's jobs.

Every route looks the job up through `_tenant_job`, which returns 404 for another tenant's job, so a job id
reveals nothing to other tenants.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, StreamingResponse

from app.deps import Tenant, reject_unknown_query_parameters
from app.errors import APIError
from app.jobs import JobNotFound
from app.protocol import TERMINAL_STATUSES, DeletedJob, ErrorResponse, Job, JobList
from app.queue import cancel_queued, poll_headers
from app.storage import input_image_key, iter_chunks, video_key
from app.webhooks import enqueue_deliveries

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(reject_unknown_query_parameters)])

_ERRORS = {401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}


def _tenant_job(request: Request, job_id: str, tenant_name: str) -> Job:
    """Return the job if it exists and belongs to the tenant; otherwise 404, so ids of others are not revealed."""
    try:
        job = request.app.state.jobs.get_job(job_id)
    except JobNotFound:
        job = None
    if job is None or job.tenant != tenant_name:
        raise APIError(404, "job_not_found", f"no job with id {job_id!r}", "id")
    return job


@router.get("", response_model=JobList, responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
            summary="List the tenant's jobs, newest first")
def list_jobs(
    request: Request,
    tenant: Tenant,
    after: Annotated[str | None, Query(max_length=64, description="Return jobs older than this job id")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    try:
        jobs, has_more = request.app.state.jobs.list(tenant.name, after, limit)
    except JobNotFound:
        raise APIError(422, "invalid_request", f"after: no job with id {after!r} in this tenant's list", "after")
    return JobList(data=jobs, has_more=has_more, last_id=jobs[-1].id if jobs else None)


@router.get("/{job_id}", response_model=Job, responses=_ERRORS, summary="Get a job's status and result")
def get_job(request: Request, response: Response, job_id: str, tenant: Tenant) -> Job:
    job = _tenant_job(request, job_id, tenant.name)
    response.headers.update(poll_headers(job))
    return job


@router.post("/{job_id}/cancel", response_model=Job, responses={**_ERRORS, 409: {"model": ErrorResponse}},
             summary="Cancel a queued or running job")
def cancel_job(request: Request, job_id: str, tenant: Tenant) -> Job:
    """Cancel a job: a queued one leaves the queue at once, a running one stops after its current step."""
    state = request.app.state
    _tenant_job(request, job_id, tenant.name)
    before = state.jobs.request_cancel(job_id, tenant.name)
    if before is None:
        raise APIError(404, "job_not_found", f"no job with id {job_id!r}", "id")
    if before in TERMINAL_STATUSES:
        raise APIError(409, "job_finished", f"job {job_id} is already {before}")
    if before == "queued":
        cancel_queued(state.redis, job_id)
        enqueue_deliveries(state.redis, state.settings.key_prefix, state.jobs.get(job_id), "cancelled",
                           state.settings.webhook_retry_intervals_seconds)
    logger.info("job %s: cancel requested by tenant %s while %s", job_id, tenant.name, before)
    return state.jobs.get_job(job_id)


@router.delete("/{job_id}", response_model=DeletedJob, responses=_ERRORS, summary="Delete a job and its video")
def delete_job(request: Request, job_id: str, tenant: Tenant) -> DeletedJob:
    """Stops the job if it runs, then removes its record, its video and its input image."""
    state = request.app.state
    job = _tenant_job(request, job_id, tenant.name)
    if job.status not in TERMINAL_STATUSES:
        if state.jobs.request_cancel(job_id, tenant.name) == "queued":
            cancel_queued(state.redis, job_id)
    state.jobs.delete(job_id, tenant.name)
    state.storage.delete(video_key(job_id))
    state.storage.delete(input_image_key(job_id))
    logger.info("job %s: deleted by tenant %s", job_id, tenant.name)
    return DeletedJob(id=job_id)


@router.get(
    "/{job_id}/events",
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}, "description": (
        "Server-sent events. Each event is named after the job's status and carries the job as JSON; the stream "
        "ends after a completed, failed or cancelled event, or a deleted event if the job disappears.")}},
    response_class=StreamingResponse,
    summary="Follow a job's progress as server-sent events",
)
async def job_events(request: Request, job_id: str, tenant: Tenant) -> StreamingResponse:
    await run_in_threadpool(_tenant_job, request, job_id, tenant.name)
    settings = request.app.state.settings
    return StreamingResponse(
        _event_stream(request, job_id, settings.events_poll_seconds, settings.events_max_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _event_stream(request: Request, job_id: str, poll_seconds: float, max_seconds: float) -> AsyncIterator[str]:
    """Yield an event whenever the job's status or progress changes, and a comment every 15 s to keep proxies open."""
    jobs = request.app.state.jobs
    last_payload = None
    last_sent = time.monotonic()
    deadline = time.monotonic() + max_seconds
    number = 0
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        try:
            job = await run_in_threadpool(jobs.get_job, job_id)
        except JobNotFound:
            yield f"event: deleted\ndata: {json.dumps({'id': job_id})}\n\n"
            return
        payload = job.model_dump_json()
        if payload != last_payload:
            number += 1
            yield f"id: {number}\nevent: {job.status}\ndata: {payload}\n\n"
            last_payload, last_sent = payload, time.monotonic()
            if job.status in TERMINAL_STATUSES:
                return
        elif time.monotonic() - last_sent > 15:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_seconds)
    yield f"event: timeout\ndata: {json.dumps({'id': job_id, 'reconnect': True})}\n\n"


@router.get(
    "/{job_id}/content",
    responses={**_ERRORS, 409: {"model": ErrorResponse}, 200: {"content": {"video/mp4": {}}},
               307: {"description": "Redirect to a presigned URL of the object store (content_delivery=redirect)"}},
    response_class=StreamingResponse,
    summary="Download the finished video",
)
def get_job_content(request: Request, job_id: str, tenant: Tenant) -> Response:
    job = _tenant_job(request, job_id, tenant.name)
    if job.status != "completed":
        raise APIError(409, "job_not_completed", f"job {job_id} is {job.status}; content exists once it is completed")
    storage = request.app.state.storage
    settings = request.app.state.settings
    key = video_key(job_id)
    missing = APIError(404, "content_not_found", f"the video of job {job_id} is no longer stored")

    if settings.content_delivery == "redirect":
        url = storage.presigned_url(key, settings.presigned_url_ttl_seconds)
        if url is not None:
            if not storage.exists(key):
                raise missing
            return RedirectResponse(url, status_code=307)

    size_bytes = storage.size(key)
    stream = storage.open(key) if size_bytes is not None else None
    if stream is None:
        raise missing
    headers = {"Content-Length": str(size_bytes), "Content-Disposition": f'attachment; filename="{job_id}.mp4"'}
    return StreamingResponse(iter_chunks(stream), media_type="video/mp4", headers=headers)
