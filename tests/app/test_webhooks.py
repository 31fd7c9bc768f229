"""Signed webhooks: the signature scheme checked by an independent implementation, and real deliveries with retries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app import webhooks
from app.main import create_app
from app.tenants import new_webhook_secret
from app.webhooks import InvalidSignature, WebhookDestinationRejected, check_destination, sign, verify
from reins.processes import stop_process
from tests.conftest import (REPO_ROOT, TENANT_KEYS, WorkerProcess, _free_ports, settings_from, wait_for_job,
                            write_tenants)

SECRET = new_webhook_secret()


def independent_signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks signature, written out again from the scheme's description."""
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, message_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_signature_matches_independent_implementation():
    body = b'{"type":"job.completed"}'
    assert sign(SECRET, "msg_1", 1700000000, body) == independent_signature(SECRET, "msg_1", "1700000000", body)


def test_verify_accepts_fresh_delivery():
    body = b'{"a":1}'
    now = int(time.time())
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(now), "webhook-signature": sign(SECRET, "msg_2", now, body)}
    assert verify(SECRET, headers, body) == {"a": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: (h, b + b" "), "no signature matches"),
        (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), "no signature matches"),
        (lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b), "no signature matches"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-timestamp"}, b), "missing"),
    ],
)
def test_verify_rejects_altered_delivery(change, message):
    body = b'{"a":1}'
    now = int(time.time())
    headers = {"webhook-id": "msg_3", "webhook-timestamp": str(now), "webhook-signature": sign(SECRET, "msg_3", now, body)}
    headers, body = change(headers, body)
    with pytest.raises(InvalidSignature, match=message):
        verify(SECRET, headers, body)


def test_replay_outside_tolerance_is_rejected():
    body = b"{}"
    then = int(time.time()) - 301
    headers = {"webhook-id": "msg_4", "webhook-timestamp": str(then), "webhook-signature": sign(SECRET, "msg_4", then, body)}
    with pytest.raises(InvalidSignature, match="more than 300 s"):
        verify(SECRET, headers, body)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/",
                                 "http://169.254.169.254/latest", "ftp://example.com/x"])
def test_internal_destinations_are_refused(url):
    with pytest.raises(WebhookDestinationRejected):
        check_destination(url, allow_private=False)


def test_private_destinations_allowed_when_configured():
    check_destination("http://127.0.0.1:9/hook", allow_private=True)


def _attempts(metrics, tenant: str, outcome: str) -> float:
    """Return the attempt count of `tenant` with `outcome`, 0 when none was counted."""
    labels = {"tenant": tenant, "outcome": outcome}
    return metrics.registry.get_sample_value("reins_webhook_attempts_total", labels) or 0


def test_unsigned_delivery_counted_dropped(monkeypatch):
    metrics = webhooks.WebhookMetrics()
    monkeypatch.setattr(webhooks.context, "metrics", metrics)
    monkeypatch.setattr(webhooks.context, "tenants", None)
    delivery = {"id": "msg_x", "tenant": "alpha", "url": "https://example.com/hook", "payload": {}}
    assert webhooks.deliver(delivery) == 0
    assert _attempts(metrics, "alpha", "dropped") == 1


def test_network_error_counted_failed(monkeypatch):
    class Tenant:
        webhook_secret = new_webhook_secret()

    class Tenants:
        def get(self, name):
            return Tenant()

    metrics = webhooks.WebhookMetrics()
    monkeypatch.setattr(webhooks.context, "metrics", metrics)
    monkeypatch.setattr(webhooks.context, "tenants", Tenants())
    monkeypatch.setattr(webhooks.context, "allow_private", True)
    # _free_ports closes its sockets before it returns, so nothing listens on this port.
    (port,) = _free_ports(1)
    delivery = {"id": "msg_y", "tenant": "alpha", "url": f"http://127.0.0.1:{port}/hook", "payload": {}}
    with pytest.raises(httpx.ConnectError):
        webhooks.deliver(delivery)
    assert _attempts(metrics, "alpha", "failed") == 1
    assert metrics.registry.get_sample_value("reins_webhook_attempt_duration_seconds_count",
                                             {"outcome": "failed"}) == 1


class Receiver:
    """An HTTP server on loopback that records webhook deliveries and fails the first `failures` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.deliveries: list[tuple[dict, bytes]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(receiver.deliveries) <= receiver.failures
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/reins"

    def wait_for(self, count: int, timeout_seconds: float = 30) -> None:
        deadline = time.monotonic() + timeout_seconds
        while len(self.deliveries) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.deliveries) >= count, f"{len(self.deliveries)} deliveries after {timeout_seconds} s"


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver(failures=1)
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def hooked_env(service_env, tmp_path_factory, receiver):
    folder = tmp_path_factory.mktemp("webhooks")
    tenants = write_tenants(folder, alpha={"webhook_url": receiver.url, "webhook_secret": SECRET})
    (metrics_port,) = _free_ports(1)
    return {**service_env, "REINS_TENANTS_FILE": str(tenants), "REINS_KEY_PREFIX": "hooks-" + uuid.uuid4().hex[:8],
            "REINS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true", "REINS_WEBHOOK_RETRY_INTERVALS_SECONDS": "[1, 1, 1]",
            "REINS_HOST": "127.0.0.1", "REINS_WEBHOOK_METRICS_PORT": str(metrics_port)}


@pytest.fixture(scope="module")
def processes(hooked_env, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    worker = WorkerProcess({**hooked_env, "REINS_WORKER_MODELS": '["tiny-wan"]'}, logs / "worker.log", mock=True)
    worker.wait_until_listening(Redis.from_url(hooked_env["REINS_REDIS_URL"]))
    log = (logs / "webhooks.log").open("w")
    dispatcher = subprocess.Popen([sys.executable, "-m", "reins.cli", "webhook-worker"], cwd=REPO_ROOT,
                                  env={**os.environ, **hooked_env}, stdout=log, stderr=subprocess.STDOUT)
    yield worker, logs / "webhooks.log"
    stop_process(dispatcher)
    worker.stop()


@pytest.fixture(scope="module")
def client(hooked_env):
    settings = settings_from(hooked_env).model_copy(update={"tenants_file": hooked_env["REINS_TENANTS_FILE"],
                                                            "key_prefix": hooked_env["REINS_KEY_PREFIX"],
                                                            "webhook_retry_intervals_seconds": [1, 1, 1]})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_completed_job_is_delivered_after_retry(client, processes, receiver):
    headers = {"Authorization": f"Bearer {TENANT_KEYS['alpha']}"}
    job = client.post("/v1/generate", json={"model": "tiny-wan", "prompt": "a cat"}, headers=headers).json()
    assert wait_for_job(client, job["id"], headers)["status"] == "completed"
    receiver.wait_for(2)
    (first_headers, first_body), (second_headers, second_body) = receiver.deliveries[:2]
    # The first attempt got 500, so the same message came again with the same id and a fresh signature.
    assert first_headers["webhook-id"] == second_headers["webhook-id"]
    assert first_body == second_body
    expected = independent_signature(SECRET, second_headers["webhook-id"], second_headers["webhook-timestamp"],
                                     second_body)
    assert second_headers["webhook-signature"] == expected
    payload = json.loads(second_body)
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job["id"]
    assert payload["data"]["result"]["url"] == f"/v1/jobs/{job['id']}/content"
    assert "webhook_urls" not in payload["data"]


def _webhook_attempts(port: int, tenant: str) -> dict[str, float]:
    """Scrape the dispatcher's /metrics and return the attempt counts of `tenant` by outcome."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("reins_webhook_attempts_total{") and f'tenant="{tenant}"' in line:
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] = float(line.rsplit(" ", 1)[1])
    return counts


def test_metrics_count_retried_delivery(client, processes, receiver, hooked_env):
    headers = {"Authorization": f"Bearer {TENANT_KEYS['alpha']}"}
    before = len(receiver.deliveries)
    job = client.post("/v1/generate", json={"model": "tiny-wan", "prompt": "a dog"}, headers=headers).json()
    assert wait_for_job(client, job["id"], headers)["status"] == "completed"
    # The receiver responds 500 to its first delivery in this module, so one attempt failed whatever ran before.
    receiver.wait_for(before + 1)
    port = int(hooked_env["REINS_WEBHOOK_METRICS_PORT"])
    deadline = time.monotonic() + 10
    while (attempts := _webhook_attempts(port, "alpha")).get("delivered", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert attempts.get("failed", 0) >= 1
    assert attempts.get("delivered", 0) >= 1
    assert attempts.get("dropped", 0) == 0


def test_cancelled_job_is_delivered(client, processes, receiver):
    headers = {"Authorization": f"Bearer {TENANT_KEYS['alpha']}"}
    before = len(receiver.deliveries)
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    # No worker of this module serves the image model, so the job is still queued when it is cancelled.
    job = client.post("/v1/generate", data={"model": "tiny-wan-i2v", "prompt": "x"},
                      files={"image": ("i.png", buffer.getvalue(), "image/png")}, headers=headers).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    receiver.wait_for(before + 1)
    payload = json.loads(receiver.deliveries[before][1])
    assert payload["type"] == "job.cancelled"
    assert payload["data"]["id"] == job["id"]


def test_request_webhook_needs_tenant_secret(client):
    headers = {"Authorization": f"Bearer {TENANT_KEYS['beta']}"}
    response = client.post("/v1/generate", json={"model": "tiny-wan", "prompt": "x", "steering_strength": 0.5,
                                                 "webhook_url": "https://example.com/hook"}, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "webhook_url"
