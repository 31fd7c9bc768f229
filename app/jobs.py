"""Job records in Redis, owned by the service rather than by RQ's own TTLs.

A record is a Redis hash at `<prefix>:job:<id>` whose fields hold JSON values, so the API and the worker can update
different fields (status, progress) without a read-modify-write race. Every record expires `job_ttl_seconds` after
its last write.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from redis import Redis

from app.protocol import Job

logger = logging.getLogger(__name__)

# Writes fields only if the record still exists, so a late worker update cannot resurrect an expired job.
_UPDATE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


class JobNotFound(KeyError):
    """No record exists for the job id (never created, expired, or deleted)."""


class JobStore:
    """Reads and writes job records."""

    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self._update = redis.register_script(_UPDATE_IF_EXISTS)

    def key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def create(self, record: dict[str, Any]) -> None:
        key = self.key(record["id"])
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={name: json.dumps(value) for name, value in record.items()})
            pipe.expire(key, self.ttl_seconds)
            pipe.execute()

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

    def delete(self, job_id: str) -> None:
        self.redis.delete(self.key(job_id))
