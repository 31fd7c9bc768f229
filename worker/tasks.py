"""The RQ job function and the per-process runtime it uses.

RQ imports `worker.tasks.run_job` by name, with the job id as its only argument (JSON-serialised). The worker
process installs its runtime with `install_runtime` before it starts consuming, so pipelines stay loaded across jobs.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from app.jobs import JobNotFound, JobStore
from app.logs import job_context
from app.storage import Storage, input_image_key, video_key
from reins.video import provenance_comment, write_mp4
from worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)


class Renderer(Protocol):
    """Turns a job record into frames; `PipelinePool` in production, a numpy stand-in in API tests."""

    def render(self, record: dict, on_step, image=None) -> tuple[np.ndarray, dict]: ...


def error_code(error: BaseException) -> str:
    """Return the job error code recorded for an exception raised while running a job."""
    names = {
        "NonFiniteLatentsError": "non_finite_latents",
        "FileNotFoundError": "input_missing",
        "StorageError": "storage_error",
        "JobTimeoutException": "timeout",
        "DirectionMismatch": "direction_mismatch",
    }
    return names.get(type(error).__name__, "internal_error")


class JobCancelled(Exception):
    """The client cancelled or deleted the job while it ran; raised from the step callback to stop denoising."""


class WorkerRuntime:
    def __init__(self, renderer: Renderer, jobs: JobStore, storage: Storage, metrics: WorkerMetrics, fps: int,
                 on_finish: Callable[[dict, str], None] | None = None, heartbeat_interval_seconds: float = 5.0) -> None:
        self.renderer = renderer
        self.jobs = jobs
        self.storage = storage
        self.metrics = metrics
        self.fps = fps
        # Called with the final record and status of every job that ends here (webhook deliveries).
        self.on_finish = on_finish
        self.heartbeat_interval_seconds = heartbeat_interval_seconds

    def _finished(self, job_id: str, status: str) -> None:
        if self.on_finish is None:
            return
        try:
            self.on_finish(self.jobs.get(job_id), status)
        except JobNotFound:
            pass
        except Exception:
            # A webhook that cannot be queued must not turn a finished job into a failed one.
            logger.exception("job %s: could not queue webhook deliveries", job_id)

    def run(self, job_id: str) -> dict:
        with job_context(job_id):
            return self._run(job_id)

    def _run(self, job_id: str) -> dict:
        try:
            record = self.jobs.get(job_id)
        except JobNotFound:
            logger.warning("job %s: record not found (expired or deleted); skipping", job_id)
            return {"status": "skipped"}
        previous = self.jobs.start(job_id)
        if previous != "queued":
            logger.info("job %s: status is %s, not queued; skipping", job_id, previous)
            return {"status": "skipped"}

        model, tenant = record["model"], record["tenant"]
        with job_context(job_id, tenant, model), self._heartbeat(job_id):
            return self._render_and_store(job_id, record)

    @contextmanager
    def _heartbeat(self, job_id: str) -> Iterator[None]:
        """Send heartbeats from a thread while the job runs, so that the API can tell a slow job from a dead worker."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval_seconds):
                try:
                    self.jobs.heartbeat(job_id)
                except Exception as error:  # a missed heartbeat is retried at the next interval
                    logger.warning("job %s: heartbeat failed: %s", job_id, error)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _render_and_store(self, job_id: str, record: dict) -> dict:
        model, tenant = record["model"], record["tenant"]
        started = time.perf_counter()
        created = datetime.fromisoformat(record["created_at"])
        self.metrics.queue_wait_seconds.labels(model).observe(max(0.0, time.time() - created.timestamp()))
        logger.info("job %s: started model=%s tenant=%s", job_id, model, tenant)
        self.metrics.busy.set(1)
        last_step = {"at": time.perf_counter()}

        def on_step(step_index: int, num_steps: int) -> None:
            now = time.perf_counter()
            self.metrics.step_duration_seconds.labels(model).observe(now - last_step["at"])
            last_step["at"] = now
            if self.jobs.cancel_requested(job_id):
                raise JobCancelled(f"cancelled after denoising step {step_index}")
            # Denoising is reported as 0-95%; encoding and upload take the rest.
            self.jobs.update(job_id, progress=round(0.95 * (step_index + 1) / num_steps, 4))

        try:
            image = self._input_image(record)
            frames, facts = self.renderer.render(record, on_step, image)
            encode_started = time.perf_counter()
            self.metrics.decode_duration_seconds.labels(model).observe(encode_started - last_step["at"])
            key = video_key(job_id)
            with tempfile.TemporaryDirectory(prefix="reins-") as folder:
                path = Path(folder) / key
                write_mp4(frames, path, fps=self.fps, metadata=self._video_metadata(record))
                size_bytes = path.stat().st_size
                self.storage.put_file(key, path)
            self.metrics.encode_duration_seconds.labels(model).observe(time.perf_counter() - encode_started)
        except JobCancelled as cancelled:
            logger.info("job %s: %s", job_id, cancelled)
            self.jobs.finish(job_id, tenant, "cancelled")
            self._finished(job_id, "cancelled")
            self.metrics.jobs_total.labels(model, tenant, "cancelled").inc()
            return {"status": "cancelled"}
        except Exception as error:
            code = error_code(error)
            logger.error("job %s: failed (%s): %s", job_id, code, error, exc_info=True)
            self.jobs.finish(job_id, tenant, "failed", error={"code": code, "message": str(error)[:500]})
            self._finished(job_id, "failed")
            self.metrics.jobs_total.labels(model, tenant, "failed").inc()
            raise
        finally:
            self.metrics.busy.set(0)
            self.metrics.job_duration_seconds.labels(model).observe(time.perf_counter() - started)

        facts_for_request = {k: facts[k] for k in ("prompt_tokens", "prompt_truncated") if facts.get(k) is not None}
        if not self.jobs.finish(
            job_id,
            tenant,
            "completed",
            progress=1.0,
            request=dict(record["request"], **facts_for_request),
            result={
                "url": f"/v1/jobs/{job_id}/content",
                "content_type": "video/mp4",
                "bytes": size_bytes,
                "num_frames": int(frames.shape[0]),
                "height": int(frames.shape[1]),
                "width": int(frames.shape[2]),
                "frames_sha256": hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest(),
                "steered_block_calls": int(facts.get("calls_steered", 0)),
                "probe_score": facts.get("probe_score"),
            },
        ):
            # The record was deleted while the video was being stored, so the video must not outlive it.
            logger.info("job %s: deleted while running; removing its video", job_id)
            self.storage.delete(key)
            return {"status": "deleted"}
        self._finished(job_id, "completed")
        self.metrics.jobs_total.labels(model, tenant, "completed").inc()
        self.metrics.latency_seconds.labels(model).observe(max(0.0, time.time() - created.timestamp()))
        self.metrics.steering_strength.labels(model).observe(float(record["steering"]["strength"]))
        if facts.get("probe_score") is not None:
            self.metrics.probe_score.labels(model).observe(float(facts["probe_score"]))
        if facts.get("gpu_memory_peak_bytes") is not None:
            self.metrics.gpu_memory_bytes.labels(facts["device"]).set(facts["gpu_memory_peak_bytes"])
        logger.info("job %s: completed in %.2fs (%s)", job_id, time.perf_counter() - started, facts)
        return {"status": "completed"}

    def _input_image(self, record: dict):
        """Return the stored input image of an image-to-video job, or None for a text-to-video job."""
        if not record["request"].get("input_image"):
            return None
        import io

        from PIL import Image

        stream = self.storage.open(input_image_key(record["id"]))
        if stream is None:
            raise FileNotFoundError(f"input image of job {record['id']} is missing from storage")
        # PIL needs a seekable file, and an S3 response body is not one.
        with stream:
            data = stream.read()
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

    @staticmethod
    def _video_metadata(record: dict) -> dict[str, str]:
        """Return mp4 metadata that is enough to regenerate the video: model, seed and the steering applied."""
        steering = record["steering"]
        return {"comment": provenance_comment({
            "job": record["id"], "model": record["model"], "revision": steering.get("model_revision") or None,
            "seed": record["request"]["seed"], "strength": steering["strength"], "block": steering["block_index"],
            "window": steering["step_window"], "branch": steering["branch_mode"],
            "token_gate": bool(steering.get("token_gate")), "direction_sha256": steering["direction_sha256"],
        })}


_runtime: WorkerRuntime | None = None


def install_runtime(runtime: WorkerRuntime) -> None:
    global _runtime
    _runtime = runtime


def run_job(job_id: str) -> dict:
    """Run one job by id. Called by RQ inside the worker process."""
    if _runtime is None:
        raise RuntimeError("worker runtime not installed; start workers with 'reins worker'")
    return _runtime.run(job_id)
