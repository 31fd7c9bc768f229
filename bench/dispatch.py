"""Dispatch latency: from the enqueue (the `POST /v1/generate` returning) to the start of the job on an idle worker.

Starts a private Redis, `reins api` and one mock worker. The mock worker (tests/mock_worker.py) runs the production
RQ worker, job function, job store and encoder, with numpy frames in place of the pipeline. `--real` uses
`reins worker` with the tiny Wan pipeline instead, which runs the same dispatch path. Jobs run one at a time: submit, wait until the job
is completed, pause so the worker is back in its blocking dequeue, repeat. Per job it records, on the one machine
clock that all processes share:

- `start`: the job record's `started_at`, written by the worker's job function when it marks the job in_progress
  (the target's measure);
- `pickup`: RQ's `started_at` on its own job hash, taken by the worker when it dequeues the job;

each minus the time the POST returned to the client, and the record's `created_at` as a third reference.

Run: python bench/dispatch.py [--samples N] [--real]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (API_KEY, REPO_ROOT, Services, emit, machine_facts, percentiles, rounded,  # noqa: E402
                     setup_logging, write_config, write_tenants)

logger = logging.getLogger("bench.dispatch")

TARGET_MS = 10.0


def epoch(value: str | datetime) -> float:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:  # RQ stores UTC without an offset
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="sequential jobs (default 100)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between a job's end and the next "
                                                                   "submission (default 0.05)")
    parser.add_argument("--real", action="store_true", help="use `reins worker` with the tiny Wan pipeline")
    args = parser.parse_args()
    setup_logging()
    from redis import Redis
    from rq.job import Job as RQJob
    from rq.serializers import JSONSerializer

    from reins.tiny import save_tiny_model

    services = Services()
    samples = {"start_ms": [], "pickup_ms": [], "created_to_start_ms": [], "post_ms": []}
    try:
        folder = services.folder
        model_dir = save_tiny_model(folder / "tiny-wan")
        config, tenants = folder / "reins.toml", folder / "tenants.toml"
        write_config(config, model_dir, REPO_ROOT / "directions" / "tiny-wan.safetensors",
                     {"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4})
        write_tenants(tenants)
        env = services.env(config, tenants, REINS_QUEUE_WITHOUT_WORKER="reject")
        url = services.start_api(env)
        services.start_worker(env, mock=not args.real)
        services.wait_for_workers(1)
        redis = Redis.from_url(services.redis_url)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        deadline = time.monotonic() + 600
        with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
            for index in range(args.samples + 2):  # the first two warm the worker and are dropped
                if time.monotonic() > deadline:
                    logger.warning("stopping after %d jobs: the 600 s bound was reached", index)
                    break
                sent = time.time()
                response = client.post("/v1/generate", headers=headers,
                                       json={"model": "tiny-wan", "prompt": f"dispatch sample {index}", "seed": index})
                returned = time.time()
                if response.status_code != 202:
                    raise RuntimeError(f"POST returned {response.status_code}: {response.text}")
                job_id = response.json()["id"]
                job_deadline = time.monotonic() + 120
                while True:
                    job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
                    if job["status"] in ("completed", "failed", "cancelled"):
                        break
                    if time.monotonic() > job_deadline:
                        raise TimeoutError(f"job {job_id} still {job['status']} after 120 s")
                    time.sleep(0.01)
                if job["status"] != "completed":
                    raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
                rq_job = RQJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
                if index >= 2:
                    started = epoch(job["started_at"])
                    samples["start_ms"].append((started - returned) * 1000)
                    samples["pickup_ms"].append((epoch(rq_job.started_at) - returned) * 1000)
                    samples["created_to_start_ms"].append((started - epoch(job["created_at"])) * 1000)
                    samples["post_ms"].append((returned - sent) * 1000)
                time.sleep(args.pause)
    finally:
        services.close()

    median = float(np.median(samples["start_ms"]))
    emit({
        "name": "dispatch",
        "value": round(median, 3),
        "unit": "milliseconds (median, POST returned -> job record started_at)",
        "target": f"<= {TARGET_MS}",
        "met": bool(median <= TARGET_MS),
        "worker": "reins worker, tiny Wan pipeline" if args.real else "tests.mock_worker (production RQ worker "
                                                                      "and job function, numpy frames)",
        "start_ms": percentiles(samples["start_ms"], (50, 90, 99)),
        "pickup_ms": percentiles(samples["pickup_ms"], (50, 90, 99)),
        "created_to_start_ms": percentiles(samples["created_to_start_ms"], (50, 90, 99)),
        "post_ms": percentiles(samples["post_ms"], (50, 90, 99)),
        "samples_ms": {name: rounded(values, 3) for name, values in samples.items()},
        "machine": machine_facts(),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
