"""`GET /v1/jobs/{id}` and `GET /v1/jobs/{id}/content`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from app.deps import Tenant
from app.errors import APIError
from app.jobs import JobNotFound
from app.protocol import ErrorResponse, Job
from app.storage import video_key

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

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


@router.get("/{job_id}", response_model=Job, responses=_ERRORS, summary="Get a job's status and result")
def get_job(request: Request, job_id: str, tenant: Tenant) -> Job:
    return _tenant_job(request, job_id, tenant.name)


@router.get(
    "/{job_id}/content",
    responses={**_ERRORS, 409: {"model": ErrorResponse}, 200: {"content": {"video/mp4": {}}}},
    response_class=FileResponse,
    summary="Download the finished video",
)
def get_job_content(request: Request, job_id: str, tenant: Tenant) -> FileResponse:
    job = _tenant_job(request, job_id, tenant.name)
    if job.status != "completed":
        raise APIError(409, "job_not_completed", f"job {job_id} is {job.status}; content exists once it is completed")
    path = request.app.state.storage.open_path(video_key(job_id))
    if path is None:
        raise APIError(404, "content_not_found", f"the video of job {job_id} is no longer stored")
    return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")
