"""Prometheus metrics of a worker process, served on their own port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Tenants come from the tenants file, so the label has a bounded set of values.
        self.jobs_total = Counter(
            "reins_worker_jobs_total", "Jobs finished by this worker, by model, tenant and outcome.",
            ["model", "tenant", "status"], registry=self.registry,
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
        self.decode_duration_seconds = Histogram(
            "reins_worker_decode_duration_seconds",
            "Wall time from the last denoising step to decoded frames (the VAE decode), by model.", ["model"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.latency_seconds = Histogram(
            "reins_worker_job_latency_seconds", "Time from job creation to stored video (queue wait included), by model.",
            ["model"], buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        )
        self.steering_strength = Histogram(
            "reins_worker_steering_strength", "Steering strength applied per job (multiples of the reference norm).",
            ["model"], buckets=(0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 8), registry=self.registry,
        )
        self.probe_score = Histogram(
            "reins_worker_probe_score", "Probe score per job: about 0 for typical safe, about 1 for typical unsafe.",
            ["model"], buckets=(-1, -0.5, 0, 0.25, 0.5, 0.75, 1, 1.5, 2), registry=self.registry,
        )
        self.gpu_memory_bytes = Gauge(
            "reins_worker_gpu_memory_peak_bytes", "Peak GPU memory allocated by torch during the last job.",
            ["device"], registry=self.registry,
        )
