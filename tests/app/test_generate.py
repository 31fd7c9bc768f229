"""API tests: httpx against the app, with a mock worker consuming the real RQ queue on a private Redis."""

from __future__ import annotations

import json
import zlib

import httpx
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from reins.processes import free_port
from reins.video import probe_mp4
from tests.conftest import WorkerProcess, settings_from, wait_for_job


@pytest.fixture(scope="module")
def client(service_env) -> TestClient:
    with TestClient(create_app(settings_from(service_env))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def mock_worker(service_env, tmp_path_factory):
    env = {**service_env, "REINS_WORKER_METRICS_PORT": str(free_port())}
    worker = WorkerProcess(env, tmp_path_factory.mktemp("logs") / "mock-worker.log", mock=True)
    worker.metrics_url = f"http://127.0.0.1:{env['REINS_WORKER_METRICS_PORT']}/metrics"
    worker.wait_until_listening(Redis.from_url(service_env["REINS_REDIS_URL"]))
    yield worker
    worker.stop()


def submit(client: TestClient, headers: dict, **fields):
    body = {"model": "tiny-wan", "prompt": "a red car moving left", **fields}
    return client.post("/v1/generate", json=body, headers=headers)


def test_generate_returns_job_object(client, api_headers):
    response = submit(client, api_headers["alpha"], seed=7)
    assert response.status_code == 202
    job = response.json()
    assert job["object"] == "job"
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["model"] == "tiny-wan"
    assert job["progress"] == 0.0
    assert job["created_at"]
    assert job["request"]["seed"] == 7
    assert job["request"]["num_frames"] == 9
    assert (job["request"]["height"], job["request"]["width"]) == (32, 32)
    assert job["request"]["prompt_truncated"] is False
    assert job["steering"]["strength"] == 1.0
    assert job["steering"]["strength_source"] == "tenant_default"
    assert job["steering"]["step_window"] == [0.0, 0.5]
    assert job["steering"]["branch_mode"] == "both"
    assert job["steering"]["token_gate"] is False
    assert len(job["steering"]["direction_sha256"]) == 64


def test_requested_strength_is_recorded(client, api_headers):
    job = submit(client, api_headers["beta"], steering_strength=0.7).json()
    assert job["steering"]["strength"] == 0.7
    assert job["steering"]["strength_source"] == "request"


def test_job_completes_with_playable_mp4(client, api_headers, mock_worker):
    job = submit(client, api_headers["alpha"], num_frames=13, height=48, width=64).json()
    done = wait_for_job(client, job["id"], api_headers["alpha"])
    assert done["status"] == "completed", done
    assert done["progress"] == 1.0
    assert done["started_at"] and done["finished_at"]
    assert done["result"]["url"] == f"/v1/jobs/{job['id']}/content"

    content = client.get(done["result"]["url"], headers=api_headers["alpha"])
    assert content.status_code == 200
    assert content.headers["content-type"] == "video/mp4"
    assert len(content.content) == done["result"]["bytes"]


def test_content_has_requested_shape(client, api_headers, mock_worker, tmp_path):
    job = submit(client, api_headers["alpha"], num_frames=17, height=64, width=32).json()
    wait_for_job(client, job["id"], api_headers["alpha"])
    path = tmp_path / "out.mp4"
    path.write_bytes(client.get(f"/v1/jobs/{job['id']}/content", headers=api_headers["alpha"]).content)
    info = probe_mp4(path)
    assert info["codec"].startswith("h264")
    assert info["frames"] == 17
    assert (info["width"], info["height"]) == (32, 64)


def test_content_before_completion_is_409(client, api_headers, service_env):
    # A record written without enqueueing stays queued, because no worker ever receives it.
    job = submit(client, api_headers["alpha"]).json()
    job["id"] = "job_never_enqueued"
    client.app.state.jobs.create(job)
    response = client.get("/v1/jobs/job_never_enqueued/content", headers=api_headers["alpha"])
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_not_completed"


def test_rq_job_is_json_with_size_timeout(client, api_headers, service_env):
    settings = settings_from(service_env)
    job = submit(client, api_headers["alpha"], num_frames=33, height=256, width=256, num_inference_steps=20).json()
    redis = Redis.from_url(service_env["REINS_REDIS_URL"])
    raw = redis.hget(f"rq:job:{job['id']}", "data")
    payload = json.loads(zlib.decompress(raw))  # RQ compresses the serialised call; the call itself is JSON

    assert payload[0] == "worker.tasks.run_job"
    assert payload[2] == [job["id"]]
    stored_timeout = int(redis.hget(f"rq:job:{job['id']}", "timeout"))
    assert stored_timeout == settings.job_timeout_seconds(33, 256, 256, 20)
    assert stored_timeout > settings.job_timeout_seconds(9, 32, 32, 4)


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"guidance_scale": "NaN"}, "guidance_scale", "JSON number"),
        ({"seed": 2**70}, "seed", "less than or equal"),
        ({"num_frame": 9}, "num_frame", "unknown field"),
        ({"num_frames": 15}, "num_frames", "nearest valid value is 13"),
        ({"num_frames": 16}, "num_frames", "nearest valid value is 17"),
        ({"height": 36}, "height", "nearest valid value is 32"),
        ({"width": 40}, "width", "divisible by 16"),
        ({"height": 512}, "height", "at most 256"),
        ({"num_inference_steps": 0}, "num_inference_steps", "greater than or equal to 1"),
        ({"num_inference_steps": 21}, "num_inference_steps", "at most 20"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": "x" * 4001}, "prompt", "at most 4000 characters"),
        ({"prompt": 12}, "prompt", "valid string"),
        ({"steering_strength": 2.5}, "steering_strength", "[0.0, 2.0]"),
        ({"steering_strength": -0.1}, "steering_strength", "[0.0, 2.0]"),
        ({"steering_strength": "1"}, "steering_strength", "JSON number"),
        ({"model": "wan-14b"}, "model", "available models: tiny-wan"),
    ],
)
def test_invalid_field_is_422_naming_it(client, api_headers, fields, field, fragment):
    response = submit(client, api_headers["alpha"], **fields)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    assert fragment in error["message"]


def test_infinite_numbers_are_rejected(client, api_headers):
    # Python's json module parses 1e309 as inf; the raw body is sent to bypass the client's own encoder.
    for field in ("steering_strength", "guidance_scale"):
        body = '{"model": "tiny-wan", "prompt": "a cat", "%s": 1e309}' % field
        response = client.post(
            "/v1/generate", content=body, headers={**api_headers["alpha"], "content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field


def test_megabyte_prompt_is_413(client, api_headers):
    response = submit(client, api_headers["alpha"], prompt="x" * 1_000_000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "prompt" in response.json()["error"]["message"]


def test_other_tenant_range_applies(client, api_headers):
    response = submit(client, api_headers["beta"], steering_strength=1.0)
    assert response.status_code == 422
    assert "[0.25, 0.75]" in response.json()["error"]["message"]


def test_long_prompt_is_marked_truncated(client, api_headers):
    # Unknown words split into characters, so 600 letters exceed Wan's 512-token limit.
    job = submit(client, api_headers["alpha"], prompt="q" * 600).json()
    assert job["request"]["prompt_tokens"] > 512
    assert job["request"]["prompt_truncated"] is True


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic a2V5"}, {"Authorization": "Bearer"}]
)
def test_missing_or_wrong_key_is_401(client, headers):
    response = submit(client, headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_job_is_404(client, api_headers):
    response = client.get("/v1/jobs/job_doesnotexist", headers=api_headers["alpha"])
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_other_tenants_job_is_404(client, api_headers):
    job = submit(client, api_headers["alpha"]).json()
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/content"):
        response = client.get(path, headers=api_headers["beta"])
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"


def test_expired_job_is_404(client, api_headers, service_env):
    job = submit(client, api_headers["alpha"]).json()
    redis = Redis.from_url(service_env["REINS_REDIS_URL"])
    redis.delete(f"{service_env['REINS_KEY_PREFIX']}:job:{job['id']}")
    assert client.get(f"/v1/jobs/{job['id']}", headers=api_headers["alpha"]).status_code == 404


def test_job_record_has_ttl(client, api_headers, service_env):
    job = submit(client, api_headers["alpha"]).json()
    redis = Redis.from_url(service_env["REINS_REDIS_URL"])
    ttl = redis.ttl(f"{service_env['REINS_KEY_PREFIX']}:job:{job['id']}")
    assert 0 < ttl <= int(service_env["REINS_JOB_TTL_SECONDS"])


def test_every_response_has_request_id(client, api_headers):
    response = client.get("/healthz", headers={"x-request-id": "abc123"})
    assert response.headers["x-request-id"] == "abc123"
    assert len(submit(client, {}).headers["x-request-id"]) == 32


def test_metrics_count_requests_and_jobs(client, api_headers):
    submit(client, api_headers["beta"], steering_strength=0.5)
    client.get("/v1/jobs/job_nope", headers=api_headers["beta"])
    text = client.get("/metrics").text
    assert 'reins_api_jobs_submitted_total{model="tiny-wan",tenant="beta"}' in text
    assert 'reins_api_requests_total{method="POST",route="/v1/generate",status="202"}' in text
    assert 'route="/v1/jobs/{job_id}"' in text
    assert "job_nope" not in text
    assert "reins_api_request_duration_seconds_bucket" in text


def test_readyz_and_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}


def test_worker_metrics_after_job(client, api_headers, mock_worker):
    job = submit(client, api_headers["alpha"], num_inference_steps=3).json()
    assert wait_for_job(client, job["id"], api_headers["alpha"])["status"] == "completed"
    text = httpx.get(mock_worker.metrics_url).text
    assert 'reins_worker_jobs_total{model="tiny-wan",status="completed",tenant="alpha"}' in text
    assert 'reins_worker_steering_strength_count{model="tiny-wan"}' in text
    assert 'reins_worker_decode_duration_seconds_count{model="tiny-wan"}' in text
    assert 'reins_worker_job_latency_seconds_count{model="tiny-wan"}' in text
    assert 'reins_worker_step_duration_seconds_count{model="tiny-wan"}' in text
    assert 'reins_worker_job_duration_seconds_count{model="tiny-wan"}' in text
    assert job["id"] not in text



def png_bytes(width: int, height: int, color=(200, 30, 30), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


def submit_form(client, headers, fields: dict, image: bytes, filename: str = "photo.png"):
    files = {"image": (filename, image, "application/octet-stream")}
    return client.post("/v1/generate", data={name: str(value) for name, value in fields.items()}, files=files,
                       headers=headers)


def test_image_to_video_job_completes(client, api_headers, mock_worker, tmp_path):
    response = submit_form(client, api_headers["alpha"], {"model": "tiny-wan-i2v", "prompt": "a red ball", "seed": "4",
                                                           "steering_strength": "0.5"}, png_bytes(300, 200))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["request"]["seed"] == 4
    assert job["steering"]["strength"] == 0.5
    image = job["request"]["input_image"]
    assert (image["source_width"], image["source_height"], image["source_format"]) == (300, 200, "PNG")
    done = wait_for_job(client, job["id"], api_headers["alpha"])
    assert done["status"] == "completed", done
    path = tmp_path / "v.mp4"
    path.write_bytes(client.get(done["result"]["url"], headers=api_headers["alpha"]).content)
    assert probe_mp4(path)["frames"] == 9


def test_form_fields_are_validated(client, api_headers):
    for fields, field in (
        ({"model": "tiny-wan-i2v", "prompt": "x", "guidance_scale": "NaN"}, "guidance_scale"),
        ({"model": "tiny-wan-i2v", "prompt": "x", "num_frames": "ten"}, "num_frames"),
        ({"model": "tiny-wan-i2v", "prompt": "x", "colour": "red"}, "colour"),
    ):
        response = submit_form(client, api_headers["alpha"], fields, png_bytes(32, 32))
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field


def test_image_model_without_image_is_422(client, api_headers):
    response = submit(client, api_headers["alpha"], model="tiny-wan-i2v")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "image"
    assert "image-to-video" in response.json()["error"]["message"]


def test_text_model_with_image_is_422(client, api_headers):
    response = submit_form(client, api_headers["alpha"], {"model": "tiny-wan", "prompt": "x"}, png_bytes(32, 32))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "image"
    assert "text-to-video" in response.json()["error"]["message"]


def test_undecodable_image_is_422(client, api_headers):
    response = submit_form(client, api_headers["alpha"], {"model": "tiny-wan-i2v", "prompt": "x"},
                           b"\x89PNG\r\n\x1a\n not really")
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_image", "image")


def test_oversized_image_is_413(client, api_headers):
    huge = png_bytes(7000, 7000, mode="L", color=0)
    response = submit_form(client, api_headers["alpha"], {"model": "tiny-wan-i2v", "prompt": "x"}, huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "image_too_large"
    assert "49000000 pixels" in response.json()["error"]["message"]


def test_phone_formats_are_accepted(client, api_headers):
    for mode, fmt in (("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "GIF"), ("RGB", "WEBP")):
        response = submit_form(client, api_headers["alpha"], {"model": "tiny-wan-i2v", "prompt": "x"},
                               png_bytes(40, 64, color=None if mode == "P" else (10, 20, 30, 40)[: len(mode)],
                                         mode=mode, fmt=fmt))
        assert response.status_code == 202, (fmt, response.text)


def test_other_content_type_is_415(client, api_headers):
    response = client.post("/v1/generate", content=b"model=tiny-wan",
                           headers={**api_headers["alpha"], "content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_openapi_describes_both_bodies(client):
    document = client.get("/openapi.json").json()
    body = document["paths"]["/v1/generate"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    schemas = document["components"]["schemas"]
    assert "steering_strength" in schemas["GenerateRequest"]["properties"]
    assert schemas["GenerateRequestForm"]["properties"]["image"]["format"] == "binary"


def test_readyz_reports_storage(service_env, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the video folder should be")
    settings = settings_from(service_env).model_copy(update={"storage_dir": blocked})
    with TestClient(create_app(settings)) as isolated:
        response = isolated.get("/readyz")
    assert response.status_code == 503
    assert "storage" in response.json()


def test_api_key_never_logged(client, api_headers, caplog):
    import logging

    with caplog.at_level(logging.DEBUG):
        submit(client, api_headers["alpha"])
        submit(client, {"Authorization": "Bearer a-wrong-key-that-must-not-be-logged"})
        client.get("/v1/jobs", headers=api_headers["alpha"])
    text = caplog.text
    assert "job_" in text  # the capture works: the accepted job was logged
    assert "a-wrong-key-that-must-not-be-logged" not in text
    for header in api_headers.values():
        assert header["Authorization"].split()[1] not in text
