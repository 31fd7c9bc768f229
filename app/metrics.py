"""Prometheus metrics of the API. Names follow `reins_<subsystem>_<name>_<unit>`; labels are route templates,
methods, status codes, configured models, configured tenants and error codes, never ids or prompts.

Two kinds of figures stay right when the API runs as several processes:
- per-request counters and histograms use prometheus_client's multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set
  (each process writes its values to files there and /metrics sums them);
- queue figures are read from Redis at scrape time, so every process reports the same values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


class ApiMetrics:
    """The API's own metrics, on a registry of their own so that each app instance (and test) starts at zero."""

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


class QueueCollector:
    """Reads queue depth and live workers per model from Redis at scrape time."""

    def __init__(self, redis_getter, queue_names: dict[str, str]) -> None:
        self.redis_getter = redis_getter
        self.queue_names = queue_names

    def collect(self) -> Iterator[Metric]:
        from app.queue import count_workers, get_queue

        depth = GaugeMetricFamily("reins_queue_depth_jobs", "Jobs waiting in each model's queue.", labels=["model"])
        workers = GaugeMetricFamily("reins_queue_workers", "Live workers listening to each model's queue.",
                                    labels=["model"])
        redis = self.redis_getter()
        if redis is None:
            return
        try:
            for model, name in self.queue_names.items():
                depth.add_metric([model], get_queue(redis, name).count)
                workers.add_metric([model], count_workers(redis, name))
        except RedisError as error:
            logger.warning("queue metrics unavailable: %s", error)
            return
        yield depth
        yield workers


def render(metrics: ApiMetrics, queue_collector: QueueCollector) -> bytes:
    """Return the text exposition of every API metric, summed over processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = metrics.registry
    output = generate_latest(registry)
    scrape = CollectorRegistry()
    scrape.register(queue_collector)
    return output + generate_latest(scrape)
