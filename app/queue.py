"""Enqueueing jobs on RQ: one queue per model, JSON serialisation, never pickle."""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

# The worker's job function, referenced by import path so the API never imports worker code.
JOB_FUNCTION = "worker.tasks.run_job"


def get_queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer)


def enqueue_job(redis: Redis, queue_name: str, job_id: str, timeout_seconds: int, ttl_seconds: int) -> None:
    """Put a job on its model's queue; the RQ job id equals the service's job id.

    The only argument is the job id: the worker reads everything else from the job record.
    """
    get_queue(redis, queue_name).enqueue_call(
        func=JOB_FUNCTION,
        args=(job_id,),
        job_id=job_id,
        timeout=timeout_seconds,
        ttl=ttl_seconds,
        result_ttl=3600,
        failure_ttl=ttl_seconds,
    )
