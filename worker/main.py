"""The worker process: load pipelines once, then consume the models' RQ queues without forking per job."""

from __future__ import annotations

import logging
import time

from prometheus_client import start_http_server
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from app.jobs import JobStore
from app.redis_connection import connect
from app.settings import Settings
from app.storage import make_storage
from app.webhooks import enqueue_deliveries
from worker.metrics import WorkerMetrics
from worker.tasks import Renderer, WorkerRuntime, install_runtime

logger = logging.getLogger(__name__)

RECONNECT_FIRST_DELAY_SECONDS = 0.5
RECONNECT_MAX_DELAY_SECONDS = 30.0


def selected_models(settings: Settings) -> list:
    config = settings.server_config
    names = settings.worker_models or list(config.models)
    unknown = [name for name in names if name not in config.models]
    if unknown:
        raise ValueError(f"REINS_WORKER_MODELS names unknown models {unknown}; configured: {list(config.models)}")
    return [config.models[name] for name in names]


def run_worker(settings: Settings, renderer: Renderer | None = None, burst: bool = False) -> None:
    """Load the models (unless a renderer is given), then process jobs until stopped (or the queues are empty in burst mode)."""
    models = selected_models(settings)
    if renderer is None:
        from worker.pool import (
            PipelinePool,  # torch is imported only by the real worker
        )

        renderer = PipelinePool(models, device=settings.worker_device, dtype=settings.worker_dtype)

    metrics = WorkerMetrics()
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.host, registry=metrics.registry)
        logger.info("worker metrics on http://%s:%d/metrics", settings.host, settings.worker_metrics_port)

    redis = connect(settings.redis_url)
    jobs = JobStore(redis, settings.key_prefix, settings.job_ttl_seconds)

    def queue_webhooks(record: dict, status: str) -> None:
        enqueue_deliveries(redis, settings.key_prefix, record, status, settings.webhook_retry_intervals_seconds)

    install_runtime(WorkerRuntime(renderer, jobs, make_storage(settings), metrics, settings.video_fps,
                                  on_finish=queue_webhooks,
                                  heartbeat_interval_seconds=settings.heartbeat_interval_seconds))

    queues = [settings.queue_name(model.name) for model in models]
    delay = RECONNECT_FIRST_DELAY_SECONDS
    while True:
        worker = SimpleWorker(queues, connection=redis, serializer=JSONSerializer)
        logger.info("worker consuming %s", ", ".join(queues))
        try:
            worker.work(burst=burst, with_scheduler=False, logging_level=settings.log_level)
            return
        except (RedisConnectionError, RedisTimeoutError) as error:
            # The pipelines stay loaded, and only the RQ worker is rebuilt once Redis responds again. A job that
            # was running is requeued by the API's reaper when its heartbeats stop.
            logger.warning("redis unavailable (%s); reconnecting", error)
        while not _redis_answers(redis):
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY_SECONDS)
        delay = RECONNECT_FIRST_DELAY_SECONDS
        logger.info("redis is back; resuming")


def _redis_answers(redis) -> bool:
    try:
        return bool(redis.ping())
    except (RedisConnectionError, RedisTimeoutError):
        return False
