"""Recovery of jobs whose worker died, and removal of stored objects whose job expired.

A worker that is killed mid-job stops sending heartbeats. The reaper then puts its job back on the queue, or fails
it with `worker_lost` once its attempts are spent, so no job stays `in_progress` forever. Every API process runs
one, and each status change is atomic in Redis, so two reapers never act on the same job.
"""

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


def _job_id_of(key: str) -> str:
    """Return the job id in a storage key (`job_x.mp4` or `inputs/job_x.png`)."""
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


def remove_expired_objects(jobs: JobStore, storage, settings: Settings) -> list[str]:
    """Delete stored videos and input images older than the job TTL whose job record is gone; return their keys.

    A record expires `job_ttl_seconds` after its last write, which is when its video was stored, so the two expire
    together. An object whose record still exists (a job updated later) is kept.
    """
    removed = []
    for key in list(storage.keys_older_than(settings.job_ttl_seconds)):
        job_id = _job_id_of(key)
        if not job_id.startswith("job_") or jobs.redis.exists(jobs.key(job_id)):
            continue
        storage.delete(key)
        removed.append(key)
    if removed:
        logger.info("retention: removed %d stored objects of expired jobs", len(removed))
    return removed


async def run_reaper(jobs: JobStore, settings: Settings, storage=None, on_failed=None) -> None:
    """Call reap_once every `reaper_interval_seconds`, and remove expired objects every
    `retention_interval_seconds`, until cancelled; errors are logged and retried."""
    loop = asyncio.get_running_loop()
    next_retention = loop.time()
    while True:
        try:
            await run_in_threadpool(reap_once, jobs, settings, on_failed)
            if storage is not None and loop.time() >= next_retention:
                next_retention = loop.time() + settings.retention_interval_seconds
                await run_in_threadpool(remove_expired_objects, jobs, storage, settings)
        except RedisError as error:
            logger.warning("reaper: redis unavailable: %s", error)
        except Exception:
            logger.exception("reaper: unexpected error")
        await asyncio.sleep(settings.reaper_interval_seconds)
