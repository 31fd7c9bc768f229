"""Enqueueing jobs on RQ: one queue per model, JSON serialisation, never pickle."""

from __future__ import annotations

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from app.protocol import Job

# How often clients should poll a job, by status, in milliseconds.
POLL_INTERVAL_MS = {"queued": 2000, "in_progress": 500}

# The worker's job function, referenced by import path so the API never imports worker code.
JOB_FUNCTION = "worker.tasks.run_job"


def get_queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer)


def enqueue_job(redis: Redis, queue_name: str, job_id: str, timeout_seconds: int, ttl_seconds: int,
                rq_job_id: str | None = None) -> None:
    """Put a job on its model's queue; the RQ job id equals the service's job id.

    The only argument is the job id: the worker reads everything else from the job record.
    """
    get_queue(redis, queue_name).enqueue_call(
        func=JOB_FUNCTION,
        args=(job_id,),
        job_id=rq_job_id or job_id,
        timeout=timeout_seconds,
        ttl=ttl_seconds,
        result_ttl=3600,
        failure_ttl=ttl_seconds,
    )


def count_workers(redis: Redis, queue_name: str) -> int:
    """Return how many live RQ workers listen to a queue (workers register themselves and expire when they die)."""
    return Worker.count(connection=redis, queue=get_queue(redis, queue_name))


def cancel_queued(redis: Redis, job_id: str) -> None:
    """Take a job off its RQ queue, if it is still there."""
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job as RQJob

    try:
        RQJob.fetch(job_id, connection=redis, serializer=JSONSerializer).cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass


def poll_headers(job: Job) -> dict[str, str]:
    """Return the header with the interval after which a client should poll an unfinished job again."""
    interval = POLL_INTERVAL_MS.get(job.status)
    return {} if interval is None else {"X-Poll-Interval-Ms": str(interval)}
