"""The job resource with a mock worker on the real queue: list, cancel, delete, events, idempotency, limits."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from tests.conftest import TENANT_KEYS, WorkerProcess, settings_from, wait_for_job, write_tenants


@pytest.fixture(scope="module")
def limited_env(service_env, tmp_path_factory):
    """The shared service, with tenant beta limited to 2 concurrent jobs and 8 requests a minute."""
    folder = tmp_path_factory.mktemp("limits")
    tenants = write_tenants(folder, beta={"max_concurrent_jobs": 2, "rate_limit_per_minute": 8})
    return {**service_env, "REINS_TENANTS_FILE": str(tenants), "REINS_KEY_PREFIX": "jobs-" + uuid.uuid4().hex[:8]}


@pytest.fixture(scope="module")
def client(limited_env):
    settings = settings_from(limited_env)
    settings = settings.model_copy(update={"tenants_file": limited_env["REINS_TENANTS_FILE"],
                                           "events_poll_seconds": 0.05})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def worker(limited_env, tmp_path_factory):
    # The worker serves only tiny-wan, so jobs for tiny-wan-i2v stay queued for as long as a test needs.
    env = {**limited_env, "REINS_WORKER_MODELS": '["tiny-wan"]'}
    process = WorkerProcess(env, tmp_path_factory.mktemp("logs") / "worker.log", mock=True)
    process.wait_until_listening(Redis.from_url(limited_env["REINS_REDIS_URL"]))
    yield process
    process.stop()


def submit(client, tenant="alpha", headers=None, **fields):
    body = {"model": "tiny-wan", "prompt": "a red car", **fields}
    return client.post("/v1/generate", json=body,
                       headers={"Authorization": f"Bearer {TENANT_KEYS[tenant]}", **(headers or {})})


def submit_parked(client, tenant="alpha", **fields):
    """Submit a job for the model no worker serves, so it stays queued."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    data = {"model": "tiny-wan-i2v", "prompt": "a red ball", **{k: str(v) for k, v in fields.items()}}
    return client.post("/v1/generate", data=data, files={"image": ("i.png", buffer.getvalue(), "image/png")},
                       headers=auth(tenant))


def auth(tenant="alpha"):
    return {"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}


def test_list_pages_newest_first(client):
    ids = [submit(client, "lab", seed=index).json()["id"] for index in range(5)]
    first = client.get("/v1/jobs?limit=2", headers=auth("lab")).json()
    assert first["object"] == "list"
    assert [job["id"] for job in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    second = client.get(f"/v1/jobs?limit=2&after={first['last_id']}", headers=auth("lab")).json()
    assert [job["id"] for job in second["data"]] == ids[::-1][2:4]
    rest = client.get(f"/v1/jobs?limit=10&after={second['last_id']}", headers=auth("lab")).json()
    assert [job["id"] for job in rest["data"]][:1] == ids[:1]
    assert rest["has_more"] is False


def test_list_is_per_tenant(client):
    submit(client, "alpha")
    listed = client.get("/v1/jobs?limit=100", headers=auth("lab")).json()["data"]
    assert all(job["tenant"] == "lab" for job in listed)


def test_list_rejects_unknown_cursor(client):
    response = client.get("/v1/jobs?after=job_missing", headers=auth())
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "after"


@pytest.mark.parametrize("query", ["limt=5", "=false", "limit=5&page=2"])
def test_list_rejects_unknown_query_parameter(client, query):
    response = client.get(f"/v1/jobs?{query}", headers=auth())
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "after, limit" in error["message"]


def test_unknown_query_parameter_named_in_error(client):
    error = client.get("/v1/jobs?limt=5", headers=auth()).json()["error"]
    assert error["field"] == "limt"
    assert "'limt'" in error["message"]


def test_get_job_rejects_query_parameters(client):
    job = submit(client, "alpha").json()
    response = client.get(f"/v1/jobs/{job['id']}?verbose=1", headers=auth())
    assert response.status_code == 422
    assert "accepts: none" in response.json()["error"]["message"]


def test_cancel_queued_job(client, limited_env):
    job = submit_parked(client).json()
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth())
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    redis = Redis.from_url(limited_env["REINS_REDIS_URL"])
    queue = f"rq:queue:{limited_env['REINS_KEY_PREFIX']}:tiny-wan-i2v"
    assert job["id"].encode() not in redis.lrange(queue, 0, -1)
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth())
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_finished"


def test_cancelled_job_is_never_run(client, worker):
    job = submit(client, "lab").json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth("lab"))
    after = submit(client, "lab").json()
    assert wait_for_job(client, after["id"], auth("lab"))["status"] == "completed"
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth("lab")).json()["status"] == "cancelled"
    assert f"job {job['id']}: started" not in worker.log_path.read_text()


def test_delete_removes_record_and_video(client, worker, limited_env):
    job = submit(client, "lab").json()
    wait_for_job(client, job["id"], auth("lab"))
    assert client.get(f"/v1/jobs/{job['id']}/content", headers=auth("lab")).status_code == 200
    response = client.delete(f"/v1/jobs/{job['id']}", headers=auth("lab"))
    assert response.json() == {"id": job["id"], "object": "job.deleted", "deleted": True}
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth("lab")).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/content", headers=auth("lab")).status_code == 404
    listed = client.get("/v1/jobs?limit=100", headers=auth("lab")).json()["data"]
    assert job["id"] not in [item["id"] for item in listed]


def test_other_tenant_cannot_cancel_or_delete(client):
    job = submit_parked(client, "alpha").json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth("lab")).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth("lab")).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/events", headers=auth("lab")).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth("alpha")).json()["status"] == "queued"


def parse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_events_stream_ends_with_final_event(client, worker):
    job = submit(client, "lab", num_inference_steps=6).json()
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=auth("lab")) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = parse_events(text)
    assert events[-1][0] == "completed"
    assert events[-1][1]["progress"] == 1.0
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress)


def test_events_for_cancelled_job(client):
    job = submit_parked(client, "alpha").json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth())
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=auth()) as response:
        events = parse_events("".join(response.iter_text()))
    assert [name for name, _ in events] == ["cancelled"]


def test_poll_interval_header(client):
    job_response = submit_parked(client)
    assert job_response.headers["x-poll-interval-ms"] == "2000"
    job = job_response.json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth())
    assert "x-poll-interval-ms" not in client.get(f"/v1/jobs/{job['id']}", headers=auth()).headers


def test_idempotent_retry_returns_original(client):
    key = {"Idempotency-Key": "retry-" + uuid.uuid4().hex}
    first = submit(client, headers=key, seed=9)
    second = submit(client, headers=key, seed=9)
    assert first.status_code == second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    different = submit(client, headers=key, seed=10)
    assert different.status_code == 409
    assert different.json()["error"]["code"] == "idempotency_key_reused"


def test_idempotency_keys_are_per_tenant(client):
    key = {"Idempotency-Key": "shared-" + uuid.uuid4().hex}
    assert submit(client, "alpha", headers=key).json()["id"] != submit(client, "lab", headers=key).json()["id"]


def test_invalid_request_does_not_consume_key(client):
    key = {"Idempotency-Key": "invalid-" + uuid.uuid4().hex}
    assert submit(client, headers=key, num_frames=4).status_code == 422
    assert submit(client, headers=key).status_code == 202


def test_presets(client):
    job = submit(client, steering_preset="strict").json()
    assert job["steering"]["strength"] == 2.0
    assert job["steering"]["strength_source"] == "preset:strict"
    denied = submit(client, "beta", steering_preset="off")
    assert denied.status_code == 422
    assert "this tenant's presets: light" in denied.json()["error"]["message"]
    both = submit(client, steering_preset="light", steering_strength=0.5)
    assert both.status_code == 422
    assert "not both" in both.json()["error"]["message"]


def test_concurrency_cap_then_release(client):
    first = submit_parked(client, "beta").json()
    submit_parked(client, "beta")
    capped = submit_parked(client, "beta")
    assert capped.status_code == 429
    assert capped.json()["error"]["code"] == "concurrency_limit"
    assert capped.headers["retry-after"] == "5"
    client.post(f"/v1/jobs/{first['id']}/cancel", headers=auth("beta"))
    assert submit_parked(client, "beta").status_code == 202


def test_rate_limit(client, limited_env):
    redis = Redis.from_url(limited_env["REINS_REDIS_URL"])
    for key in redis.scan_iter(f"{limited_env['REINS_KEY_PREFIX']}:rate:beta:*"):
        redis.delete(key)
    # The limit counts per calendar minute, so start well inside one.
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    statuses = [client.get("/v1/jobs", headers=auth("beta")).status_code for _ in range(2)]
    answers = [submit_parked(client, "beta") for _ in range(10)]
    limited = [answer for answer in answers if answer.status_code == 429
               and answer.json()["error"]["code"] == "rate_limited"]
    assert statuses == [200, 200]
    assert len(limited) == 2
    assert 1 <= int(limited[0].headers["retry-after"]) <= 61


def test_model_without_worker_is_503(service_env, tmp_path):
    settings = settings_from(service_env).model_copy(update={
        "queue_without_worker": "reject", "key_prefix": "noworker-" + uuid.uuid4().hex[:8]})
    with TestClient(create_app(settings)) as isolated:
        response = isolated.post("/v1/generate", json={"model": "tiny-wan", "prompt": "x"}, headers=auth())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_unavailable"
    assert response.headers["retry-after"] == "30"


def test_created_job_has_location(client):
    response = submit(client)
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"


def test_rule_across_fields_has_clear_message(client):
    response = submit(client, steering_preset="light", steering_strength=0.5)
    error = response.json()["error"]
    assert error["message"] == "send steering_strength or steering_preset, not both"
    assert error["field"] is None


def test_body_must_be_object(client):
    response = client.post("/v1/generate", content=b"[1, 2]",
                           headers={**auth(), "content-type": "application/json"})
    assert response.status_code == 422
    assert "must be a JSON object" in response.json()["error"]["message"]


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://127.0.0.1:9/hook"])
def test_private_webhook_url_is_rejected(client, limited_env, tmp_path, url):
    from app.tenants import new_webhook_secret

    tenants = write_tenants(tmp_path, alpha={"webhook_url": "https://example.com/hook",
                                             "webhook_secret": new_webhook_secret()})
    settings = settings_from(limited_env).model_copy(update={"tenants_file": tenants})
    with TestClient(create_app(settings)) as hooked:
        response = hooked.post("/v1/generate", json={"model": "tiny-wan", "prompt": "x", "webhook_url": url},
                               headers=auth())
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "webhook_url"
    assert "not a public address" in response.json()["error"]["message"]
