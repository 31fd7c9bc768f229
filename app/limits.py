"""Per-tenant request rate limits and idempotency keys, kept in Redis so that every API process shares them."""

from __future__ import annotations

import hashlib
import json
import time

from redis import Redis


def check_rate(redis: Redis, prefix: str, tenant: str, limit_per_minute: int) -> int | None:
    """Count one request in the tenant's current one-minute window; return seconds to wait if over the limit.

    A fixed window: at most `limit_per_minute` requests are accepted per calendar minute, so a burst across a
    minute boundary can reach twice the limit within a few seconds.
    """
    now = time.time()
    window = int(now // 60)
    key = f"{prefix}:rate:{tenant}:{window}"
    with redis.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
    if count > limit_per_minute:
        return max(1, int((window + 1) * 60 - now) + 1)
    return None


class IdempotencyConflict(Exception):
    """The key was used with another body, or its first request is still being processed."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def fingerprint(body: dict, upload: bytes | None) -> str:
    """Return a digest of a request's fields and input image, independent of field order."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    if upload is not None:
        digest.update(b"\0image\0")
        digest.update(upload)
    return digest.hexdigest()


class IdempotencyKeys:
    """Maps (tenant, Idempotency-Key) to the job a request created, for as long as job records live."""

    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def _key(self, tenant: str, idempotency_key: str) -> str:
        return f"{self.prefix}:idempotency:{tenant}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"

    def reserve(self, tenant: str, idempotency_key: str, request_fingerprint: str, job_id: str) -> str | None:
        """Claim the key for a new job; return the job id of an earlier request with the same body, or None.

        Raises IdempotencyConflict when the key was used with a different body.
        """
        key = self._key(tenant, idempotency_key)
        value = json.dumps({"fingerprint": request_fingerprint, "job_id": job_id})
        if self.redis.set(key, value, nx=True, ex=self.ttl_seconds):
            return None
        stored = json.loads(self.redis.get(key) or "{}")
        if stored.get("fingerprint") != request_fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request body; use a new key",
                "idempotency_key_reused",
            )
        return stored["job_id"]

    def release(self, tenant: str, idempotency_key: str) -> None:
        """Forget a claim whose job could not be created, so that a retry can succeed."""
        self.redis.delete(self._key(tenant, idempotency_key))
