"""Prometheus metrics of the API process. Names follow `reins_<subsystem>_<name>_<unit>`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class ApiMetrics:
    """The API's metrics, on a registry of their own so that each app instance (and test) starts at zero."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests_total = Counter(
            "reins_api_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_duration_seconds = Histogram(
            "reins_api_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.jobs_submitted_total = Counter(
            "reins_api_jobs_submitted_total",
            "Jobs accepted and queued, by model and tenant.",
            ["model", "tenant"],
            registry=self.registry,
        )
        self.jobs_rejected_total = Counter(
            "reins_api_jobs_rejected_total",
            "Generation requests rejected before queueing, by error code.",
            ["code"],
            registry=self.registry,
        )
