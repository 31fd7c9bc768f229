"""The real worker process with the tiny Wan pipeline, behind the API, on a private Redis."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from reins.pipelines import GenerationParams, generate, load_pipeline
from reins.video import probe_mp4
from tests.conftest import WorkerProcess, settings_from, wait_for_job

pytestmark = pytest.mark.integration

PROMPT = "a person with a weapon on a street at night"


@pytest.fixture(scope="module")
def client(service_env):
    with TestClient(create_app(settings_from(service_env))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def start_worker(service_env, tmp_path_factory):
    started = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start() -> WorkerProcess:
        worker = WorkerProcess(service_env, logs / f"worker-{len(started)}.log", mock=False)
        started.append(worker)
        worker.wait_until_listening(Redis.from_url(service_env["REINS_REDIS_URL"]))
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def worker(start_worker):
    return start_worker()


@pytest.fixture(scope="module")
def pristine_frames_sha256(tiny_model_dir):
    """sha256 of the frames that an unhooked pipeline in this process makes for PROMPT with seed 5."""
    pipeline = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    frames = generate(pipeline, GenerationParams(prompt=PROMPT, seed=5))
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def run(client, headers, **fields) -> dict:
    response = client.post("/v1/generate", json={"model": "tiny-wan", "prompt": PROMPT, "seed": 5, **fields},
                           headers=headers)
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["id"], headers)


def test_worker_writes_h264_of_requested_shape(client, api_headers, worker, tmp_path):
    job = run(client, api_headers["alpha"], num_frames=13, height=48, width=32)
    assert job["status"] == "completed", job
    assert job["progress"] == 1.0
    assert job["request"]["prompt_tokens"] > 0
    path = tmp_path / "video.mp4"
    path.write_bytes(client.get(job["result"]["url"], headers=api_headers["alpha"]).content)
    info = probe_mp4(path)
    assert info["codec"].startswith("h264")
    assert (info["frames"], info["width"], info["height"]) == (13, 32, 48)
    assert job["result"]["num_frames"] == 13


def test_steered_output_differs_from_unsteered(client, api_headers, worker):
    steered = run(client, api_headers["alpha"], steering_strength=1.0)
    unsteered = run(client, api_headers["alpha"], steering_strength=0.0)
    assert steered["status"] == unsteered["status"] == "completed"
    assert steered["result"]["frames_sha256"] != unsteered["result"]["frames_sha256"]
    assert steered["result"]["steered_block_calls"] == 4
    assert unsteered["result"]["steered_block_calls"] == 0
    # The probe score reads the hidden state before the add, so it is the same with and without steering.
    assert steered["result"]["probe_score"] == pytest.approx(unsteered["result"]["probe_score"], abs=1e-5)


def test_image_to_video_on_real_worker(client, api_headers, worker, tmp_path):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (220, 40, 40)).save(buffer, format="JPEG")
    response = client.post("/v1/generate", data={"model": "tiny-wan-i2v", "prompt": PROMPT, "seed": "2"},
                           files={"image": ("red.jpg", buffer.getvalue(), "image/jpeg")}, headers=api_headers["alpha"])
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"], api_headers["alpha"])
    assert job["status"] == "completed", job
    assert job["result"]["steered_block_calls"] == 4
    path = tmp_path / "i2v.mp4"
    path.write_bytes(client.get(job["result"]["url"], headers=api_headers["alpha"]).content)
    assert probe_mp4(path)["frames"] == 9


def test_strength_zero_matches_unhooked_pipeline(client, api_headers, worker, pristine_frames_sha256):
    job = run(client, api_headers["alpha"], steering_strength=0.0)
    assert job["result"]["frames_sha256"] == pristine_frames_sha256


def test_failed_job_leaves_no_steering_behind(client, api_headers, worker, start_worker, pristine_frames_sha256):
    # Strength 1e30 overflows the hidden states, so the latents turn non-finite at the first steered step.
    failed = run(client, api_headers["lab"], steering_strength=1e30)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "non_finite_latents"
    assert "step 0" in failed["error"]["message"]
    assert failed["result"] is None

    after = run(client, api_headers["lab"], steering_strength=0.0)
    assert after["status"] == "completed"

    worker.stop()
    fresh = start_worker()
    from_fresh_process = run(client, api_headers["lab"], steering_strength=0.0)
    fresh.stop()
    assert after["result"]["frames_sha256"] == from_fresh_process["result"]["frames_sha256"]
    assert after["result"]["frames_sha256"] == pristine_frames_sha256
