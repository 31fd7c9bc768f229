"""Tenant isolation: for every job endpoint, another tenant's job behaves exactly like a job that does not exist."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from tests.conftest import TENANT_KEYS, WorkerProcess, settings_from, wait_for_job

OWNER, OTHER = "alpha", "lab"


def auth(tenant: str) -> dict:
    return {"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}


@pytest.fixture(scope="module")
def env(service_env):
    return {**service_env, "REINS_KEY_PREFIX": "isolation-" + uuid.uuid4().hex[:8]}


@pytest.fixture(scope="module")
def client(env):
    with TestClient(create_app(settings_from(env).model_copy(update={"key_prefix": env["REINS_KEY_PREFIX"]}))) as c:
        yield c


@pytest.fixture(scope="module")
def owned_job(client, env, tmp_path_factory):
    """A completed job of OWNER, with a stored video."""
    worker = WorkerProcess(env, tmp_path_factory.mktemp("logs") / "worker.log", mock=True)
    worker.wait_until_listening(Redis.from_url(env["REINS_REDIS_URL"]))
    try:
        job = client.post("/v1/generate", json={"model": "tiny-wan", "prompt": "private"}, headers=auth(OWNER)).json()
        assert wait_for_job(client, job["id"], auth(OWNER))["status"] == "completed"
    finally:
        worker.stop()
    return job["id"]


ENDPOINTS = [
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/content"),
    ("GET", "/v1/jobs/{id}/events"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("DELETE", "/v1/jobs/{id}"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_other_tenant_sees_not_found(client, owned_job, method, path):
    foreign = client.request(method, path.format(id=owned_job), headers=auth(OTHER))
    missing = client.request(method, path.format(id="job_" + uuid.uuid4().hex), headers=auth(OTHER))
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["code"] == missing.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_no_key_is_401(client, owned_job, method, path):
    response = client.request(method, path.format(id=owned_job))
    assert response.status_code == 401


def test_list_hides_other_tenants(client, owned_job):
    listed = client.get("/v1/jobs?limit=100", headers=auth(OTHER)).json()["data"]
    assert owned_job not in [job["id"] for job in listed]
    cursor = client.get(f"/v1/jobs?after={owned_job}", headers=auth(OTHER))
    assert cursor.status_code == 422


def test_owner_still_has_everything(client, owned_job):
    """Runs last: the attempts above must not have changed or removed the job."""
    job = client.get(f"/v1/jobs/{owned_job}", headers=auth(OWNER)).json()
    assert job["status"] == "completed"
    assert client.get(f"/v1/jobs/{owned_job}/content", headers=auth(OWNER)).status_code == 200
    assert owned_job in [item["id"] for item in client.get("/v1/jobs?limit=100", headers=auth(OWNER)).json()["data"]]
