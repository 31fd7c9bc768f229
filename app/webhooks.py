"""Signed webhooks for finished jobs, in the Standard Webhooks layout.

When a job ends (completed, failed or cancelled), one delivery per URL (the tenant's and the request's) goes on the
RQ queue `<prefix>:webhooks`, which `reins webhook-worker` processes. A delivery is a POST of

    {"type": "job.completed", "timestamp": "...", "data": {...the job...}}

with the headers `webhook-id` (stable across retries, so receivers can drop duplicates), `webhook-timestamp` (Unix
seconds of this attempt) and `webhook-signature` ("v1," and the base64 HMAC-SHA256, keyed with the base64-decoded
part of the tenant's "whsec_" secret, of "<id>.<timestamp>.<body>"). A non-2xx response or a network error is
retried with growing delays. An address on a private network is rejected unless the operator allows it.

The dispatcher serves Prometheus metrics on `webhook_metrics_port`: attempts by tenant and outcome ("delivered";
"failed", a non-2xx answer or a network error, which RQ retries while retries remain; "dropped", a delivery without
a signing secret or to a rejected destination), and the wall time of each HTTP attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
from redis import Redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from rq import Queue, Retry
from rq.serializers import JSONSerializer

logger = logging.getLogger(__name__)

DELIVER_FUNCTION = "app.webhooks.deliver"
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookDestinationRejected(Exception):
    """The URL may not receive deliveries (a private address, or a scheme other than http and https)."""


class InvalidSignature(ValueError):
    """A webhook's signature does not match, or its timestamp is outside the tolerance window."""


def queue_name(prefix: str) -> str:
    return f"{prefix}:webhooks"


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` value for one delivery attempt."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
           now: float | None = None) -> dict:
    """Check a received webhook and return its payload; raise InvalidSignature if it is forged, altered or stale.

    Receivers written in Python can use this; it rejects timestamps more than `tolerance_seconds` from now, so a
    captured delivery cannot be replayed later.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        raise InvalidSignature("missing or malformed webhook-id, webhook-timestamp or webhook-signature") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        raise InvalidSignature(f"timestamp {timestamp} is more than {tolerance_seconds} s from now")
    expected = sign(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise InvalidSignature("no signature matches")
    return json.loads(body)


def check_destination(url: str, allow_private: bool) -> None:
    """Refuse URLs whose host resolves to a loopback, private, link-local or otherwise internal address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookDestinationRejected(f"webhook URL must be http or https with a host, got {url!r}")
    if allow_private:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except socket.gaierror as error:
        raise WebhookDestinationRejected(f"cannot resolve {parts.hostname}: {error}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global:
            raise WebhookDestinationRejected(f"{parts.hostname} resolves to {ip}, which is not a public address")


def enqueue_deliveries(redis: Redis, prefix: str, record: dict, status: str, retry_intervals: list[int]) -> int:
    """Queue one delivery per webhook URL of a job that reached `status`; return how many were queued."""
    urls = record.get("webhook_urls") or []
    if not urls:
        return 0
    queue = Queue(queue_name(prefix), connection=redis, serializer=JSONSerializer)
    job = {key: value for key, value in record.items() if key not in ("webhook_urls", "cancel_requested")}
    job["status"] = status
    payload = {"type": f"job.{status}", "timestamp": datetime.now(timezone.utc).isoformat(), "data": job}
    for index, url in enumerate(urls):
        delivery = {
            "id": f"msg_{record['id']}_{status}_{index}",
            "tenant": record["tenant"],
            "url": url,
            "payload": payload,
        }
        queue.enqueue_call(func=DELIVER_FUNCTION, args=(delivery,), retry=Retry(max=len(retry_intervals),
                           interval=retry_intervals), result_ttl=3600, failure_ttl=7 * 24 * 3600)
    logger.info("job %s: queued %d webhook deliveries for job.%s", record["id"], len(urls), status)
    return len(urls)


class WebhookMetrics:
    """Prometheus metrics of the webhook dispatcher, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Tenants come from the tenants file, so the label has a bounded set of values.
        self.attempts_total = Counter(
            "reins_webhook_attempts_total", "Webhook delivery attempts, by tenant and outcome.", ["tenant", "outcome"],
            registry=self.registry,
        )
        self.attempt_duration_seconds = Histogram(
            "reins_webhook_attempt_duration_seconds", "Wall time of one HTTP delivery attempt, by outcome.",
            ["outcome"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry,
        )


class _Context:
    """State of the webhook worker process that `deliver` reads: the tenants (for their secrets) and settings."""

    tenants: Any = None
    allow_private: bool = False
    timeout_seconds: float = 10.0
    metrics: WebhookMetrics = WebhookMetrics()


context = _Context()


def deliver(delivery: dict) -> int:
    """POST one signed delivery; raise on failure so that RQ retries it. Runs in `reins webhook-worker`."""
    tenant = context.tenants.get(delivery["tenant"]) if context.tenants is not None else None
    attempts = context.metrics.attempts_total
    if tenant is None or not tenant.webhook_secret:
        logger.error("webhook %s: tenant %s has no webhook secret; dropping", delivery["id"], delivery["tenant"])
        attempts.labels(delivery["tenant"], "dropped").inc()
        return 0
    try:
        check_destination(delivery["url"], context.allow_private)
    except WebhookDestinationRejected as error:
        logger.error("webhook %s: destination rejected, dropping: %s", delivery["id"], error)
        attempts.labels(delivery["tenant"], "dropped").inc()
        return 0
    body = json.dumps(delivery["payload"], separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "reins-webhooks",
        "webhook-id": delivery["id"],
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(tenant.webhook_secret, delivery["id"], timestamp, body),
    }
    started = time.monotonic()
    try:
        response = httpx.post(delivery["url"], content=body, headers=headers, timeout=context.timeout_seconds,
                              follow_redirects=False)
    except httpx.HTTPError as error:
        _count_attempt(delivery, "failed", started)
        logger.warning("webhook %s: request to %s failed (%s); will retry", delivery["id"],
                       urlsplit(delivery["url"]).hostname, error)
        raise
    if not 200 <= response.status_code < 300:
        _count_attempt(delivery, "failed", started)
        logger.warning("webhook %s: %s responded %d; will retry", delivery["id"], urlsplit(delivery["url"]).hostname,
                       response.status_code)
        raise RuntimeError(f"webhook receiver responded {response.status_code}")
    _count_attempt(delivery, "delivered", started)
    logger.info("webhook %s: delivered (%d)", delivery["id"], response.status_code)
    return response.status_code


def _count_attempt(delivery: dict, outcome: str, started: float) -> None:
    context.metrics.attempts_total.labels(delivery["tenant"], outcome).inc()
    context.metrics.attempt_duration_seconds.labels(outcome).observe(time.monotonic() - started)


def run_webhook_worker(settings: Any, burst: bool = False) -> None:
    """Process webhook deliveries until stopped; RQ's scheduler in this process runs the delayed retries."""
    from prometheus_client import start_http_server
    from rq import SimpleWorker

    from app.redis_connection import connect
    from app.tenants import TenantRegistry

    context.tenants = TenantRegistry(settings.tenants_file, list(settings.server_config.models))
    context.allow_private = settings.webhook_allow_private_addresses
    context.timeout_seconds = settings.webhook_timeout_seconds
    if settings.webhook_metrics_port:
        start_http_server(settings.webhook_metrics_port, addr=settings.host, registry=context.metrics.registry)
        logger.info("webhook metrics on http://%s:%d/metrics", settings.host, settings.webhook_metrics_port)
    redis = connect(settings.redis_url)
    worker = SimpleWorker([queue_name(settings.key_prefix)], connection=redis, serializer=JSONSerializer)
    logger.info("webhook worker consuming %s", queue_name(settings.key_prefix))
    worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
