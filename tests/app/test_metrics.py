"""Metric names, bounded labels, queue figures from Redis, and counts that stay right across API processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from reins.processes import free_port, stop_process, wait_for_port
from tests.conftest import REPO_ROOT, TENANT_KEYS, settings_from

NAME = re.compile(r"^reins_(api|queue|worker)_[a-z_]+$")


def samples(text: str):
    for family in text_string_to_metric_families(text):
        yield from family.samples


def test_api_metrics_have_bounded_labels(service_env):
    settings = settings_from(service_env).model_copy(update={"key_prefix": "metrics-" + uuid.uuid4().hex[:8]})
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {TENANT_KEYS['alpha']}"}
        for index in range(3):
            client.post("/v1/generate", json={"model": "tiny-wan", "prompt": f"prompt number {index}"},
                        headers=headers)
            client.get(f"/v1/jobs/job_{uuid.uuid4().hex}", headers=headers)
        client.get("/no/such/route")
        text = client.get("/metrics").text

    allowed = {
        "route": {"/v1/generate", "/v1/jobs/{job_id}", "unmatched", "/metrics"},
        "method": {"GET", "POST"},
        "model": {"tiny-wan", "tiny-wan-i2v"},
        "tenant": set(TENANT_KEYS),
        "status": {"202", "404"},
        "code": {"invalid_request"},
    }
    found = list(samples(text))
    assert {sample.name for sample in found} >= {"reins_api_requests_total", "reins_api_jobs_submitted_total",
                                                 "reins_queue_depth_jobs", "reins_queue_workers"}
    for sample in found:
        assert NAME.match(sample.name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
                          .removesuffix("_created")), sample.name
        for label, value in sample.labels.items():
            if label == "le":
                continue
            assert value in allowed[label], (sample.name, label, value)
    depth = {s.labels["model"]: s.value for s in found if s.name == "reins_queue_depth_jobs"}
    assert depth["tiny-wan"] == 3


def test_counts_add_up_across_processes(service_env, tmp_path):
    port = free_port()
    metrics_folder = tmp_path / "metrics"
    metrics_folder.mkdir()
    env = {**os.environ, **service_env, "REINS_PORT": str(port), "REINS_KEY_PREFIX": "multi-" + uuid.uuid4().hex[:8],
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_folder)}
    log = (tmp_path / "api.log").open("w")
    api = subprocess.Popen([sys.executable, "-m", "reins.cli", "api", "--workers", "2"], cwd=REPO_ROOT, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60, api)
        base = f"http://127.0.0.1:{port}"
        for _ in range(40):
            # A new connection per request lets both processes accept some of them.
            assert httpx.get(f"{base}/healthz", headers={"connection": "close"}).status_code == 200
        time.sleep(0.2)
        writers = {path.name.rsplit("_", 1)[1] for path in metrics_folder.glob("counter_*.db")}
        assert len(writers) == 2, f"requests reached {len(writers)} process(es)"
        for _ in range(4):
            text = httpx.get(f"{base}/metrics", headers={"connection": "close"}).text
            counted = sum(sample.value for sample in samples(text)
                          if sample.name == "reins_api_requests_total" and sample.labels["route"] == "/healthz")
            assert counted == 40
    finally:
        stop_process(api)
        log.close()
