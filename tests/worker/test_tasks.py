"""The worker's job function with a stand-in renderer, against a real Redis."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from redis import Redis

from app.jobs import JobStore
from app.storage import LocalStorage
from reins.video import read_comment
from worker.metrics import WorkerMetrics
from worker.tasks import WorkerRuntime, error_code


def record(job_id: str, steps: int = 4) -> dict:
    return {
        "id": job_id, "tenant": "alpha", "model": "tiny-wan", "status": "queued", "progress": 0.0,
        "created_at": "2026-01-01T00:00:00+00:00",
        "request": {"prompt": "a cat", "negative_prompt": "", "num_frames": 5, "height": 16, "width": 16,
                    "num_inference_steps": steps, "guidance_scale": 5.0, "seed": 1},
        "steering": {"strength": 1.0, "strength_source": "request", "direction_sha256": "0" * 64, "block_index": 2,
                     "reference_norm": 1.0, "step_window": [0.0, 0.5], "branch_mode": "both"},
    }


class RecordingRenderer:
    """Runs the steps and reads back the stored progress after each one; can fail at a chosen step."""

    def __init__(self, jobs: JobStore, fail_at_step: int | None = None) -> None:
        self.jobs = jobs
        self.fail_at_step = fail_at_step
        self.seen: list[tuple[str, float]] = []

    def render(self, job: dict, on_step, image=None):
        steps = job["request"]["num_inference_steps"]
        for step in range(steps):
            if step == self.fail_at_step:
                raise RuntimeError(f"injected failure at step {step}")
            on_step(step, steps)
            stored = self.jobs.get(job["id"])
            self.seen.append((stored["status"], stored["progress"]))
        return np.zeros((5, 16, 16, 3), dtype=np.uint8), {"calls_steered": 2}


@pytest.fixture
def jobs(redis_url):
    return JobStore(Redis.from_url(redis_url), "tasks-" + uuid.uuid4().hex[:8], ttl_seconds=600)


def runtime(jobs, renderer, tmp_path):
    return WorkerRuntime(renderer, jobs, LocalStorage(tmp_path), WorkerMetrics(), fps=8)


def test_progress_is_written_every_step(jobs, tmp_path):
    jobs.create(record("job_a"))
    renderer = RecordingRenderer(jobs)
    runtime(jobs, renderer, tmp_path).run("job_a")
    assert renderer.seen == [("in_progress", 0.2375), ("in_progress", 0.475), ("in_progress", 0.7125),
                             ("in_progress", 0.95)]
    done = jobs.get("job_a")
    assert done["status"] == "completed"
    assert done["progress"] == 1.0
    assert done["result"]["steered_block_calls"] == 2
    assert (tmp_path / "job_a.mp4").is_file()


def test_failure_is_recorded_and_reraised(jobs, tmp_path):
    jobs.create(record("job_b"))
    with pytest.raises(RuntimeError, match="step 2"):
        runtime(jobs, RecordingRenderer(jobs, fail_at_step=2), tmp_path).run("job_b")
    failed = jobs.get("job_b")
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "internal_error", "message": "injected failure at step 2"}
    assert failed["progress"] == 0.475
    assert not (tmp_path / "job_b.mp4").exists()


def test_missing_record_is_skipped(jobs, tmp_path):
    assert runtime(jobs, RecordingRenderer(jobs), tmp_path).run("job_gone") == {"status": "skipped"}


def test_job_not_queued_is_skipped(jobs, tmp_path):
    jobs.create({**record("job_c"), "status": "cancelled"})
    renderer = RecordingRenderer(jobs)
    assert runtime(jobs, renderer, tmp_path).run("job_c") == {"status": "skipped"}
    assert renderer.seen == []


def test_update_never_recreates_expired_record(jobs):
    assert jobs.update("job_never_created", progress=0.5) is False
    assert not jobs.redis.exists(jobs.key("job_never_created"))


def test_error_codes():
    from reins.pipelines import NonFiniteLatentsError
    from rq.timeouts import JobTimeoutException

    assert error_code(NonFiniteLatentsError("x")) == "non_finite_latents"
    assert error_code(JobTimeoutException("x")) == "timeout"
    assert error_code(ValueError("x")) == "internal_error"


def test_video_carries_provenance(jobs, tmp_path):
    job = record("job_provenance")
    job["steering"]["model_revision"] = "abc123"
    jobs.create(job)
    runtime(jobs, RecordingRenderer(jobs), tmp_path).run("job_provenance")
    comment = read_comment(tmp_path / "job_provenance.mp4")
    for fragment in ("job=job_provenance", "model=tiny-wan", "revision=abc123", "seed=1", "strength=1.0",
                     "block=2", "window=0.0-0.5", "branch=both", "token_gate=off", "direction_sha256=" + "0" * 64):
        assert fragment in comment, (fragment, comment)


def test_video_records_token_gate(jobs, tmp_path):
    job = record("job_gated")
    job["steering"]["token_gate"] = True
    jobs.create(job)
    runtime(jobs, RecordingRenderer(jobs), tmp_path).run("job_gated")
    assert "token_gate=on" in read_comment(tmp_path / "job_gated.mp4")


def test_storage_failure_fails_job(jobs, tmp_path):
    from app.storage import StorageError

    class UnreachableStorage:
        def put_file(self, key, path):
            raise StorageError("S3 endpoint unreachable after 4 attempts")

        def delete(self, key):
            pass

    jobs.create(record("job_storage"))
    worker_runtime = WorkerRuntime(RecordingRenderer(jobs), jobs, UnreachableStorage(), WorkerMetrics(), fps=8)
    with pytest.raises(StorageError):
        worker_runtime.run("job_storage")
    failed = jobs.get("job_storage")
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "storage_error"
    assert failed.get("result") is None
