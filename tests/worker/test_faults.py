"""Faults with real processes: a worker killed mid-job, SIGTERM during a job, Redis down and back."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
import sys

import httpx
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from reins.processes import free_port, start_redis, stop_process, wait_for_port
from tests.conftest import REPO_ROOT, TENANT_KEYS, WorkerProcess, settings_from, wait_for_job

pytestmark = pytest.mark.integration
HEADERS = {"Authorization": f"Bearer {TENANT_KEYS['alpha']}"}


@pytest.fixture
def fault_env(service_env):
    """The shared service with a fresh prefix, fast heartbeats and slow mock steps (0.3 s each)."""
    return {**service_env, "REINS_KEY_PREFIX": "faults-" + uuid.uuid4().hex[:8],
            "REINS_HEARTBEAT_INTERVAL_SECONDS": "0.2", "REINS_HEARTBEAT_TIMEOUT_SECONDS": "1.5",
            "REINS_REAPER_INTERVAL_SECONDS": "0.3", "REINS_WORKER_MODELS": '["tiny-wan"]',
            "REINS_TEST_MOCK_STEP_SECONDS": "0.3"}


def app_for(env: dict, **overrides) -> TestClient:
    settings = settings_from(env).model_copy(update={
        "key_prefix": env["REINS_KEY_PREFIX"], "heartbeat_timeout_seconds": 1.5, "reaper_interval_seconds": 0.3,
        **overrides})
    return TestClient(create_app(settings))


def wait_until(predicate, timeout_seconds: float, message: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(message)


def start_job_on_new_worker(client, env: dict, log_path, steps: int) -> tuple[WorkerProcess, dict]:
    """Start a mock worker, submit a slow job and return once the worker has run its first step."""
    worker = WorkerProcess(env, log_path, mock=True)
    worker.wait_until_listening(Redis.from_url(env["REINS_REDIS_URL"]))
    job = client.post("/v1/generate", json={"model": "tiny-wan", "prompt": "slow", "num_inference_steps": steps},
                      headers=HEADERS).json()
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}", headers=HEADERS).json()["progress"] > 0, 20,
               "the job never started")
    return worker, job


def test_killed_worker_job_is_retried(fault_env, tmp_path):
    redis = Redis.from_url(fault_env["REINS_REDIS_URL"])
    with app_for(fault_env) as client:
        first, job = start_job_on_new_worker(client, fault_env, tmp_path / "first.log", steps=10)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()

        wait_until(lambda: client.get(f"/v1/jobs/{job['id']}", headers=HEADERS).json()["status"] == "queued", 20,
                   "the reaper did not requeue the job of the killed worker")
        second = WorkerProcess(fault_env, tmp_path / "second.log", mock=True)
        second.wait_until_listening(redis)
        try:
            done = wait_for_job(client, job["id"], HEADERS, timeout_seconds=60)
        finally:
            second.stop()
    assert done["status"] == "completed"
    assert redis.hget(f"{fault_env['REINS_KEY_PREFIX']}:job:{job['id']}", "attempts") == b"2"


def test_killed_worker_without_attempts_left_fails(fault_env, tmp_path):
    with app_for(fault_env, job_max_attempts=1) as client:
        worker, job = start_job_on_new_worker(client, fault_env, tmp_path / "worker.log", steps=10)
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        done = wait_for_job(client, job["id"], HEADERS, timeout_seconds=20)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "worker_lost"


def test_sigterm_finishes_current_job(fault_env, tmp_path):
    with app_for(fault_env) as client:
        worker, job = start_job_on_new_worker(client, fault_env, tmp_path / "worker.log", steps=6)
        worker.process.send_signal(signal.SIGTERM)
        # RQ's warm shutdown lets the job's remaining steps run first; a loaded machine can take a while.
        assert worker.process.wait(timeout=120) == 0
        done = client.get(f"/v1/jobs/{job['id']}", headers=HEADERS).json()
    assert done["status"] == "completed"


def test_redis_outage_gives_503_and_jobs_complete_after(fault_env, tmp_path):
    """Redis with append-only persistence stops mid-job and restarts on the same port: the API returns 503
    meanwhile, the running worker reconnects by itself, and every job accepted before the outage completes."""
    folder = tmp_path / "redis"
    port = free_port()
    redis_process, url = start_redis(folder, port=port, append_only=True)
    env = {**fault_env, "REINS_REDIS_URL": url}
    api_port = free_port()
    log = (tmp_path / "api.log").open("w")
    api = subprocess.Popen([sys.executable, "-m", "reins.cli", "api"], env={**os.environ, **env, "REINS_PORT": str(api_port)},
                           cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    worker = WorkerProcess(env, tmp_path / "worker.log", mock=True)
    try:
        wait_for_port(api_port, 60, api)
        worker.wait_until_listening(Redis.from_url(url))
        base = f"http://127.0.0.1:{api_port}"
        accepted = [httpx.post(f"{base}/v1/generate", json={"model": "tiny-wan", "prompt": f"before {index}"},
                               headers=HEADERS).json()["id"] for index in range(3)]
        time.sleep(0.5)  # the worker is now inside the first job

        stop_process(redis_process)
        down = httpx.post(f"{base}/v1/generate", json={"model": "tiny-wan", "prompt": "during"}, headers=HEADERS)
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "service_unavailable"
        assert down.headers["retry-after"]
        assert httpx.get(f"{base}/readyz").status_code == 503
        assert httpx.get(f"{base}/v1/jobs/{accepted[0]}", headers=HEADERS).status_code == 503
        time.sleep(2)

        redis_process, _ = start_redis(folder, port=port, append_only=True)
        assert httpx.get(f"{base}/readyz").status_code == 200
        for job_id in accepted:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = httpx.get(f"{base}/v1/jobs/{job_id}", headers=HEADERS).json()["status"]
                if status in ("completed", "failed"):
                    break
                time.sleep(0.1)
            assert status == "completed", job_id
        assert worker.process.poll() is None, "the worker exited instead of reconnecting"
    finally:
        worker.stop()
        stop_process(api)
        stop_process(redis_process)
        log.close()


def test_api_sigterm_drains_requests(service_env, tmp_path):
    """A request still uploading when the API gets SIGTERM gets its full response before the process exits."""
    import threading

    port = free_port()
    env = {**os.environ, **service_env, "REINS_PORT": str(port), "REINS_KEY_PREFIX": "drain-" + uuid.uuid4().hex[:8]}
    log = (tmp_path / "api.log").open("w")
    api = subprocess.Popen([sys.executable, "-m", "reins.cli", "api"], cwd=REPO_ROOT, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60, api)
        body = b'{"model": "tiny-wan", "prompt": "sent slowly", "seed": 3}'
        started = threading.Event()

        def slow_body():
            for index in range(0, len(body), 8):
                if index == 16:
                    started.set()
                time.sleep(0.2)
                yield body[index:index + 8]

        outcome = {}

        def send():
            outcome["response"] = httpx.post(f"http://127.0.0.1:{port}/v1/generate", content=slow_body(),
                                             headers={**HEADERS, "content-type": "application/json"}, timeout=30)

        sender = threading.Thread(target=send)
        sender.start()
        assert started.wait(10)
        api.send_signal(signal.SIGTERM)
        sender.join(30)
        # uvicorn re-raises SIGTERM once it has shut down cleanly, so the status is -SIGTERM rather than 0.
        assert api.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        stop_process(api)
        log.close()
    assert outcome["response"].status_code == 202
    assert outcome["response"].json()["request"]["seed"] == 3
    assert "Application shutdown complete" in (tmp_path / "api.log").read_text()
