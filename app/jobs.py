"""Job records in Redis, owned by the service rather than by RQ's own TTLs.

Keys, all under the deployment's prefix:

- `<prefix>:job:<id>`: the record, a hash whose fields hold JSON values, so the API and the worker update different
  fields (status, progress) without a read-modify-write race. It expires `job_ttl_seconds` after its last write.
- `<prefix>:tenant:<name>:jobs`: a sorted set of the tenant's job ids scored by creation time, for listing.
- `<prefix>:tenant:<name>:active`: the set of the tenant's queued and running job ids, for the concurrency cap.

Status changes that race (a worker starting a job while a client cancels it) go through Lua scripts, so each is one
atomic step in Redis.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from redis import Redis

from app.protocol import TERMINAL_STATUSES, Job

logger = logging.getLogger(__name__)

# Writes fields only if the record still exists, so a late worker update cannot resurrect an expired job.
_UPDATE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# Moves a queued job to in_progress; returns the status it had (nil if the record is gone).
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
if status == '"queued"' then
  local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') + 1
  redis.call('HSET', KEYS[1], 'status', '"in_progress"', 'started_at', ARGV[2], 'progress', '0.0',
             'attempts', tostring(attempts))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
end
return status
"""

# Handles a running job whose worker stopped sending heartbeats: back to queued if attempts remain (returns
# "requeued"), else failed with worker_lost (returns "failed"). Does nothing (returns nil) if the job ended or
# its heartbeat is fresh again, so that several reapers can run at once.
_REAP = """
local status = redis.call('HGET', KEYS[1], 'status')
local beat = redis.call('ZSCORE', KEYS[2], ARGV[1])
if status ~= '"in_progress"' then redis.call('ZREM', KEYS[2], ARGV[1]) return nil end
if beat and tonumber(beat) > tonumber(ARGV[2]) then return nil end
redis.call('ZREM', KEYS[2], ARGV[1])
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '1')
if attempts < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', '"queued"', 'progress', '0.0')
  return 'requeued'
end
redis.call('HSET', KEYS[1], 'status', '"failed"', 'finished_at', ARGV[4], 'error', ARGV[5])
redis.call('SREM', KEYS[3], ARGV[1])
return 'failed'
"""

# Cancels a queued job at once, or flags a running one; returns the status before the call (nil if gone).
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
if status == '"queued"' then
  redis.call('HSET', KEYS[1], 'status', '"cancelled"', 'finished_at', ARGV[2])
  redis.call('SREM', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[1])
elseif status == '"in_progress"' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
end
return status
"""


# Creates a record unless the tenant's active set is at its cap (ARGV[2], 0 for none); returns 1 if created.
_CREATE = """
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('SCARD', KEYS[3]) >= cap then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
"""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


class JobNotFound(KeyError):
    """No record exists for the job id (never created, expired, or deleted)."""


class JobStore:
    """Reads and writes job records and the per-tenant indexes."""

    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self._update = redis.register_script(_UPDATE_IF_EXISTS)
        self._start = redis.register_script(_START)
        self._cancel = redis.register_script(_CANCEL)
        self._create = redis.register_script(_CREATE)
        self._reap = redis.register_script(_REAP)

    def key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def index_key(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def active_key(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:active"

    def create(self, record: dict[str, Any], max_active: int | None = None) -> bool:
        """Write a new record and index it; return False, writing nothing, if the tenant has `max_active` jobs
        queued or running already."""
        tenant = record["tenant"]
        if max_active is not None:
            self.active_count(tenant)  # drops ids of jobs that ended or expired, so the cap counts live jobs only
        arguments = [self.ttl_seconds, max_active or 0, time.time(), record["id"]]
        for name, value in record.items():
            arguments += [name, json.dumps(value)]
        keys = [self.key(record["id"]), self.index_key(tenant), self.active_key(tenant)]
        return bool(self._create(keys=keys, args=arguments))

    def get(self, job_id: str) -> dict[str, Any]:
        raw = self.redis.hgetall(self.key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return {name.decode(): json.loads(value) for name, value in raw.items()}

    def get_job(self, job_id: str) -> Job:
        return Job.model_validate(self.get(job_id))

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set fields of an existing record; return False if the record no longer exists."""
        arguments = [self.ttl_seconds]
        for name, value in fields.items():
            arguments += [name, json.dumps(value)]
        return bool(self._update(keys=[self.key(job_id)], args=arguments))

    def running_key(self) -> str:
        return f"{self.prefix}:running"

    def start(self, job_id: str) -> str | None:
        """Mark a queued job in_progress and count one attempt; return the status it had before, or None if the
        record is gone."""
        status = self._start(keys=[self.key(job_id), self.running_key()],
                             args=[self.ttl_seconds, json.dumps(utc_now()), time.time(), job_id])
        return None if status is None else json.loads(status)

    def heartbeat(self, job_id: str) -> None:
        """Record that the worker running the job is alive."""
        self.redis.zadd(self.running_key(), {job_id: time.time()}, xx=True)

    def stale_running(self, older_than_seconds: float) -> list[str]:
        """Return running jobs whose last heartbeat is older than the given age."""
        cutoff = time.time() - older_than_seconds
        return [raw.decode() for raw in self.redis.zrangebyscore(self.running_key(), "-inf", cutoff)]

    def reap(self, job_id: str, tenant: str, older_than_seconds: float, max_attempts: int) -> str | None:
        """Requeue or fail a running job whose worker is gone; see _REAP for the outcomes."""
        error = json.dumps({"code": "worker_lost", "message": f"the worker stopped responding; gave up after "
                                                              f"{max_attempts} attempt(s)"})
        outcome = self._reap(
            keys=[self.key(job_id), self.running_key(), self.active_key(tenant)],
            args=[job_id, time.time() - older_than_seconds, max_attempts, json.dumps(utc_now()), error],
        )
        return None if outcome is None else outcome.decode()

    def finish(self, job_id: str, tenant: str, status: str, **fields: Any) -> bool:
        """Give a job its terminal status and fields, and take it out of the tenant's active set."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} is not a terminal status")
        updated = self.update(job_id, status=status, finished_at=utc_now(), **fields)
        self.redis.srem(self.active_key(tenant), job_id)
        self.redis.zrem(self.running_key(), job_id)
        return updated

    def request_cancel(self, job_id: str, tenant: str) -> str | None:
        """Cancel a queued job, or ask the worker to stop a running one; return the status before the call."""
        status = self._cancel(keys=[self.key(job_id), self.active_key(tenant)],
                              args=[self.ttl_seconds, json.dumps(utc_now()), job_id])
        return None if status is None else json.loads(status)

    def cancel_requested(self, job_id: str) -> bool:
        """Return True if the job was cancelled or deleted while it ran."""
        raw = self.redis.hget(self.key(job_id), "cancel_requested")
        return raw is not None or not self.redis.exists(self.key(job_id))

    def delete(self, job_id: str, tenant: str | None = None) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key(job_id))
            if tenant is not None:
                pipe.zrem(self.index_key(tenant), job_id)
                pipe.srem(self.active_key(tenant), job_id)
            pipe.execute()

    def list(self, tenant: str, after: str | None, limit: int) -> tuple[list[Job], bool]:
        """Return up to `limit` of the tenant's jobs, newest first, after the job id `after`, and whether more exist.

        Index entries whose record has expired are dropped on the way.
        """
        index = self.index_key(tenant)
        self.redis.zremrangebyscore(index, "-inf", time.time() - self.ttl_seconds)
        start = 0
        if after is not None:
            rank = self.redis.zrevrank(index, after)
            if rank is None:
                raise JobNotFound(after)
            start = rank + 1
        jobs: list[Job] = []
        while len(jobs) <= limit:
            ids = [raw.decode() for raw in self.redis.zrevrange(index, start, start + limit)]
            if not ids:
                break
            start += len(ids)
            for job_id in ids:
                try:
                    jobs.append(self.get_job(job_id))
                except JobNotFound:
                    self.redis.zrem(index, job_id)
        return jobs[:limit], len(jobs) > limit

    def active_count(self, tenant: str) -> int:
        """Return the tenant's queued and running jobs, dropping ids whose record ended or expired."""
        key = self.active_key(tenant)
        count = 0
        for raw in self.redis.smembers(key):
            job_id = raw.decode()
            status = self.redis.hget(self.key(job_id), "status")
            if status is None or json.loads(status) in TERMINAL_STATUSES:
                self.redis.srem(key, job_id)
            else:
                count += 1
        return count
