"""Recovery of jobs whose worker died: a worker that is killed mid-job stops sending heartbeats, and the reaper
puts its job back on the queue (or fails it with `worker_lost` once its attempts are spent), so no job stays
`in_progress` forever. Every API process runs one; the status change is atomic in Redis, so they never act twice
on one job."""

from __future__ import annotations

import asyncio
import logging

from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError

from app.jobs import JobNotFound, JobStore
from app.queue import enqueue_job
from app.settings import Settings

logger = logging.getLogger(__name__)


def reap_once(jobs: JobStore, settings: Settings, on_failed=None) -> dict[str, str]:
    """Requeue or fail every running job with a stale heartbeat; return {job_id: outcome}."""
    outcomes = {}
    for job_id in jobs.stale_running(settings.heartbeat_timeout_seconds):
        try:
            record = jobs.get(job_id)
        except JobNotFound:
            jobs.redis.zrem(jobs.running_key(), job_id)
            continue
        outcome = jobs.reap(job_id, record["tenant"], settings.heartbeat_timeout_seconds, settings.job_max_attempts)
        if outcome is None:
            continue
        outcomes[job_id] = outcome
        if outcome == "requeued":
            request = record["request"]
            timeout = settings.job_timeout_seconds(request["num_frames"], request["height"], request["width"],
                                                   request["num_inference_steps"])
            attempt = int(record.get("attempts", 1)) + 1
            enqueue_job(jobs.redis, settings.queue_name(record["model"]), job_id, timeout, settings.job_ttl_seconds,
                        rq_job_id=f"{job_id}-attempt{attempt}")
            logger.warning("job %s: worker lost; requeued for attempt %d", job_id, attempt)
        else:
            logger.error("job %s: worker lost; failed after %s attempt(s)", job_id, settings.job_max_attempts)
            if on_failed is not None:
                on_failed(jobs.get(job_id))
    return outcomes


async def run_reaper(jobs: JobStore, settings: Settings, on_failed=None) -> None:
    """Call reap_once every `reaper_interval_seconds` until cancelled; Redis errors are logged and retried."""
    while True:
        try:
            await run_in_threadpool(reap_once, jobs, settings, on_failed)
        except RedisError as error:
            logger.warning("reaper: redis unavailable: %s", error)
        except Exception:
            logger.exception("reaper: unexpected error")
        await asyncio.sleep(settings.reaper_interval_seconds)
