"""Prometheus metrics of a worker process, served on their own port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_total = Counter(
            "reins_worker_jobs_total", "Jobs finished by this worker, by model and outcome.", ["model", "status"],
            registry=self.registry,
        )
        self.job_duration_seconds = Histogram(
            "reins_worker_job_duration_seconds", "Wall time of a job from start to stored video, by model.", ["model"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.step_duration_seconds = Histogram(
            "reins_worker_step_duration_seconds", "Wall time of one denoising step, by model.", ["model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.encode_duration_seconds = Histogram(
            "reins_worker_encode_duration_seconds", "Wall time of H.264 encoding and upload, by model.", ["model"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "reins_worker_queue_wait_seconds", "Time from job creation to job start, by model.", ["model"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
            registry=self.registry,
        )
        self.busy = Gauge("reins_worker_busy", "1 while the worker runs a job.", registry=self.registry)
