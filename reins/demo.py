"""`reins demo`: the whole service on one machine, from an empty folder to a steered mp4.

It builds the tiny Wan pipeline, writes a configuration with one demo tenant, starts a private redis-server (unless
REINS_REDIS_URL is set), the API and one worker, submits a request over HTTP, follows its progress, downloads the
video, and stops everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.protocol import TERMINAL_STATUSES
from app.tenants import create_tenant
from reins.processes import REDIS_INSTALL_HINT, ServiceError, free_port, start_redis, stop_process, wait_for_port
from reins.tiny import read_tiny_marker, save_tiny_model
from reins.video import probe_mp4

SHIPPED_DIRECTION = Path(__file__).resolve().parent.parent / "directions" / "tiny-wan.safetensors"
SHIPPED_PROMPTS = Path(__file__).resolve().parent.parent / "directions" / "tiny-wan.prompts.jsonl"
MODEL_NAME = "tiny-wan"


def _say(message: str) -> None:
    print(message, flush=True)


def _direction_for(model_dir: Path, workdir: Path) -> Path:
    """Use the shipped direction for the tiny model; fit one from the shipped prompts if it is absent."""
    if SHIPPED_DIRECTION.is_file():
        return SHIPPED_DIRECTION
    target = workdir / "tiny-wan.safetensors"
    if not target.is_file():
        _say(f"no shipped direction at {SHIPPED_DIRECTION}; fitting one with reins discover")
        subprocess.run(
            [sys.executable, "-m", "reins.cli", "--log-level", "WARNING", "discover", "--model", str(model_dir),
             "--prompts", str(SHIPPED_PROMPTS), "--out", str(target), "--model-id", MODEL_NAME],
            check=True, stdout=subprocess.DEVNULL,
        )
    return target


def write_demo_config(workdir: Path, model_dir: Path, direction: Path) -> tuple[Path, Path, str]:
    """Write the model configuration and a tenants file with one demo tenant; return both paths and its key."""
    tenants = workdir / "tenants.toml"
    tenants.unlink(missing_ok=True)
    _, api_key = create_tenant(tenants, "demo", default_strength=1.0, min_strength=0.0, max_strength=2.0)
    config = workdir / "reins.toml"
    config.write_text(
        f"""# Written by reins demo.
[models.{MODEL_NAME}]
path = "{model_dir.resolve()}"
family = "wan"
direction = "{direction.resolve()}"
default_num_frames = 9
default_height = 32
default_width = 32
default_inference_steps = 4

"""
    )
    return config, tenants, api_key


def run_demo(workdir: Path, out: Path | None, prompt: str, strength: float | None) -> int:
    if not os.environ.get("REINS_REDIS_URL") and shutil.which("redis-server") is None:
        _say(f"error: {REDIS_INSTALL_HINT}")
        return 1
    workdir.mkdir(parents=True, exist_ok=True)
    out = out or workdir / "demo.mp4"
    model_dir = workdir / "models" / MODEL_NAME
    if read_tiny_marker(model_dir) is None:
        _say(f"building the tiny Wan pipeline in {model_dir}")
        save_tiny_model(model_dir)
    direction = _direction_for(model_dir, workdir)
    config, tenants, api_key = write_demo_config(workdir, model_dir, direction)

    started: list[subprocess.Popen] = []
    try:
        redis_url = os.environ.get("REINS_REDIS_URL")
        if redis_url:
            _say("using the Redis at REINS_REDIS_URL")
        else:
            try:
                redis, redis_url = start_redis(workdir / "redis")
            except ServiceError as error:
                _say(f"error: {error}")
                return 1
            started.append(redis)
            _say(f"started a private redis-server at {redis_url}")

        port = free_port()
        env = dict(
            os.environ,
            REINS_REDIS_URL=redis_url,
            REINS_CONFIG_FILE=str(config),
            REINS_TENANTS_FILE=str(tenants),
            REINS_STORAGE_DIR=str(workdir / "videos"),
            REINS_PORT=str(port),
            REINS_WORKER_METRICS_PORT="0",
            REINS_KEY_PREFIX=f"reins-demo-{secrets.token_hex(4)}",
        )
        logs = (workdir / "api.log").open("w"), (workdir / "worker.log").open("w")
        api = subprocess.Popen([sys.executable, "-m", "reins.cli", "api"], env=env, stdout=logs[0], stderr=logs[0])
        started.append(api)
        worker = subprocess.Popen([sys.executable, "-m", "reins.cli", "worker"], env=env, stdout=logs[1], stderr=logs[1])
        started.append(worker)
        wait_for_port(port, 60, api)
        _say(f"API on http://127.0.0.1:{port} (logs in {workdir}/api.log), worker started (logs in {workdir}/worker.log)")

        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {api_key}"}
        body = {"model": MODEL_NAME, "prompt": prompt, "seed": 0}
        if strength is not None:
            body["steering_strength"] = strength
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            response = _submit_when_worker_ready(client, body, worker)
            if response.status_code != 202:
                _say(f"error: POST /v1/generate answered {response.status_code}: {response.text}")
                return 1
            job = response.json()
            _say(f"submitted {job['id']}: {json.dumps(job['request'])}")
            job = _follow(client, job["id"], worker)
            if job["status"] != "completed":
                _say(f"error: job {job['id']} ended {job['status']}: {job.get('error')}")
                return 1
            video = client.get(f"/v1/jobs/{job['id']}/content")
            video.raise_for_status()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(video.content)

        info = probe_mp4(out)
        _say(f"wrote {out.resolve()} ({info['codec']}, {info['width']}x{info['height']}, {info['frames']} frames)")
        _say("steering applied: " + json.dumps(job["steering"]))
        return 0
    finally:
        for process in reversed(started):
            stop_process(process)


def _submit_when_worker_ready(client: httpx.Client, body: dict, worker: subprocess.Popen,
                              timeout_seconds: float = 120) -> httpx.Response:
    """Submit the request, retrying while the API answers 503 because the worker is still loading the model."""
    deadline = time.monotonic() + timeout_seconds
    waiting_shown = False
    while True:
        response = client.post("/v1/generate", json=body)
        unavailable = response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
        if not unavailable or time.monotonic() > deadline:
            return response
        if worker.poll() is not None:
            raise ServiceError(f"the worker exited with code {worker.returncode}; see its log")
        if not waiting_shown:
            _say("waiting for the worker to load the model")
            waiting_shown = True
        time.sleep(0.2)


def _follow(client: httpx.Client, job_id: str, worker: subprocess.Popen, timeout_seconds: float = 300) -> dict:
    """Poll the job until it ends, printing each progress change."""
    deadline = time.monotonic() + timeout_seconds
    last_state = None
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        state = (job["status"], job["progress"])
        if state != last_state:
            _say(f"  {job['status']:<12} {job['progress'] * 100:5.1f}%")
            last_state = state
        if job["status"] in TERMINAL_STATUSES:
            return job
        if worker.poll() is not None:
            raise ServiceError(f"the worker exited with code {worker.returncode}; see its log")
        time.sleep(0.1)
    raise ServiceError(f"job {job_id} did not finish within {timeout_seconds} s")
