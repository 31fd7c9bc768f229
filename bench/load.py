"""Load test: many jobs from concurrent clients against the real API, a real Redis and mock workers.

Starts a private redis-server, `reins api` and mock workers (`python -m tests.mock_worker`: the production RQ worker,
job function, job store and encoder, with numpy frames in place of the pipeline), all on 127.0.0.1. Then:

1. Submits `--jobs` jobs from `--clients` concurrent asyncio httpx clients. Each submission has its own
   Idempotency-Key and is retried with the same key and body after a transport error, 429, 503 or 5xx (up to
   `--attempts` tries, honouring Retry-After up to 2 s). Every `--replay-every`-th accepted submission is sent once
   more with its key, as a client does when it lost the response. The API must return the same job id.
2. Waits until every accepted job is completed or failed (reading the job records in Redis) or `--finish-timeout`
   passes, then reads each job once through `GET /v1/jobs/{id}`.
3. Prints one JSON object with the counts, throughput and submission latency percentiles. The counts are: submitted,
   accepted, rejected by status code, completed, failed by error code, lost (accepted but not finished within the
   bound) and duplicated (a submission that got two job ids, or more job records than accepted submissions).

Run: python bench/load.py [--jobs 2000] [--clients 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (API_KEY, REPO_ROOT, TENANT, Services, emit, machine_facts, percentiles,  # noqa: E402
                     setup_logging, write_config, write_tenants)

logger = logging.getLogger("bench.load")

RETRY_STATUSES = {429, 500, 502, 503, 504}
TERMINAL = ("completed", "failed", "cancelled")
# A small job, so the run measures the service rather than the encoder: 5 frames of 16x16, 2 steps.
JOB_FIELDS = {"model": "tiny-wan", "num_frames": 5, "height": 16, "width": 16, "num_inference_steps": 2}


class Submission:
    """The client-side record of one submission: its key, the job ids it was given and how it ended."""

    def __init__(self, index: int, run_id: str, fail: bool) -> None:
        self.index = index
        self.key = f"load-{run_id}-{index}"
        prompt = f"load job {index}"
        # tests/mock_worker.py fails jobs whose prompt starts with FAIL.
        self.body = {**JOB_FIELDS, "prompt": ("FAIL " if fail else "") + prompt, "seed": index}
        self.job_ids: list[str] = []
        self.final_status: int | None = None
        self.attempts = 0
        self.seconds = 0.0


async def post_once(client: httpx.AsyncClient, submission: Submission, latencies: list[float],
                    attempt_codes: Counter) -> httpx.Response | None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": submission.key}
    started = time.perf_counter()
    try:
        response = await client.post("/v1/generate", json=submission.body, headers=headers)
    except httpx.TransportError as error:
        attempt_codes[f"transport:{type(error).__name__}"] += 1
        return None
    latencies.append(time.perf_counter() - started)
    attempt_codes[str(response.status_code)] += 1
    return response


async def submit(client: httpx.AsyncClient, submission: Submission, attempts: int, latencies: list[float],
                 attempt_codes: Counter) -> None:
    started = time.perf_counter()
    for attempt in range(attempts):
        submission.attempts = attempt + 1
        response = await post_once(client, submission, latencies, attempt_codes)
        if response is not None:
            submission.final_status = response.status_code
            if response.status_code == 202:
                submission.job_ids.append(response.json()["id"])
                break
            if response.status_code not in RETRY_STATUSES:
                break
            delay = min(2.0, float(response.headers.get("Retry-After", "0.1")))
        else:
            delay = 0.1 * (attempt + 1)
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
    submission.seconds = time.perf_counter() - started


async def submit_all(url: str, submissions: list[Submission], clients: int, attempts: int, replay_every: int,
                     bound_seconds: float) -> dict:
    latencies: list[float] = []
    attempt_codes: Counter = Counter()
    replays = {"sent": 0, "same_id": 0, "other_id": 0, "not_202": 0}
    pending = iter(submissions)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = time.monotonic() + bound_seconds
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30, trust_env=False) as client:

        async def client_loop() -> None:
            for submission in pending:
                if time.monotonic() > deadline:
                    return
                await submit(client, submission, attempts, latencies, attempt_codes)
                if replay_every and submission.job_ids and submission.index % replay_every == 0:
                    replays["sent"] += 1
                    response = await post_once(client, submission, latencies, attempt_codes)
                    if response is None or response.status_code != 202:
                        replays["not_202"] += 1
                        continue
                    job_id = response.json()["id"]
                    replays["same_id" if job_id == submission.job_ids[0] else "other_id"] += 1
                    if job_id not in submission.job_ids:
                        submission.job_ids.append(job_id)

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "latencies": latencies, "attempt_codes": attempt_codes, "replays": replays}


def wait_until_finished(redis, store, job_ids: list[str], timeout_seconds: float) -> float:
    """Poll the job records until every job is terminal or the timeout passes, and return the seconds it took."""
    import json

    started = time.monotonic()
    unfinished = list(job_ids)
    while unfinished and time.monotonic() - started < timeout_seconds:
        with redis.pipeline(transaction=False) as pipe:
            for job_id in unfinished:
                pipe.hget(store.key(job_id), "status")
            statuses = pipe.execute()
        unfinished = [job_id for job_id, raw in zip(unfinished, statuses)
                      if raw is None or json.loads(raw) not in TERMINAL]
        if unfinished:
            time.sleep(0.25)
    logger.info("%d jobs unfinished after %.1f s", len(unfinished), time.monotonic() - started)
    return time.monotonic() - started


async def read_jobs(url: str, job_ids: list[str], clients: int) -> dict[str, dict | None]:
    """Return each job as `GET /v1/jobs/{id}` returns it (None for a 404)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    results: dict[str, dict | None] = {}
    semaphore = asyncio.Semaphore(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30, trust_env=False) as client:

        async def read(job_id: str) -> None:
            async with semaphore:
                response = await client.get(f"/v1/jobs/{job_id}", headers=headers)
                results[job_id] = response.json() if response.status_code == 200 else None

        await asyncio.gather(*(read(job_id) for job_id in job_ids))
    return results


def run_load(jobs: int = 2000, clients: int = 64, workers: int = 2, api_workers: int = 1, attempts: int = 5,
             replay_every: int = 10, fail_every: int = 0, submit_timeout: float = 300,
             finish_timeout: float = 300, model_dir: Path | None = None) -> dict:
    """Run the load test with its own Redis, API and mock workers, and return the result object."""
    from redis import Redis

    from app.jobs import JobStore
    from reins.tiny import save_tiny_model

    services = Services(prefix="reins-load-")
    try:
        folder = services.folder
        model_dir = model_dir or save_tiny_model(folder / "tiny-wan")
        config, tenants = folder / "reins.toml", folder / "tenants.toml"
        write_config(config, model_dir, REPO_ROOT / "directions" / "tiny-wan.safetensors",
                     {"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4})
        write_tenants(tenants)
        env = services.env(config, tenants, REINS_QUEUE_WITHOUT_WORKER="reject")
        url = services.start_api(env, workers=api_workers)
        for index in range(workers):
            services.start_worker(env, mock=True, name=f"worker-{index}")
        services.wait_for_workers(workers)

        run_id = uuid.uuid4().hex[:8]
        submissions = [Submission(index, run_id, fail=bool(fail_every) and index % fail_every == fail_every - 1)
                       for index in range(jobs)]
        logger.info("submitting %d jobs from %d clients", jobs, clients)
        started = time.monotonic()
        submitted = asyncio.run(submit_all(url, submissions, clients, attempts, replay_every, submit_timeout))
        accepted_ids = [s.job_ids[0] for s in submissions if s.job_ids]
        logger.info("accepted %d of %d in %.1f s; waiting for the workers", len(accepted_ids), jobs,
                    submitted["seconds"])

        redis = Redis.from_url(services.redis_url)
        store = JobStore(redis, env["REINS_KEY_PREFIX"], int(env["REINS_JOB_TTL_SECONDS"]))
        wait_until_finished(redis, store, accepted_ids, finish_timeout)
        end_to_end_seconds = time.monotonic() - started
        records_in_redis = redis.zcard(store.index_key(TENANT))
        final = asyncio.run(read_jobs(url, accepted_ids, clients))
        worker_exits = [process.returncode for process in services.processes if process.poll() is not None]
    finally:
        services.close()

    statuses = Counter(job["status"] if job else "not_found" for job in final.values())
    failed_by_code = Counter(job["error"]["code"] for job in final.values() if job and job["status"] == "failed")
    rejected = Counter(str(s.final_status) if s.final_status else "transport_error"
                       for s in submissions if not s.job_ids and s.attempts)
    unsent = sum(1 for s in submissions if not s.attempts)
    two_ids = sum(1 for s in submissions if len(set(s.job_ids)) > 1)
    extra_records = max(0, records_in_redis - len(accepted_ids))
    finished = statuses["completed"] + statuses["failed"] + statuses["cancelled"]
    return {
        "name": "load",
        "submitted": jobs - unsent,
        "accepted": len(accepted_ids),
        "rejected_by_code": dict(rejected),
        "not_sent_within_bound": unsent,
        "completed": statuses["completed"],
        "failed": statuses["failed"],
        "failed_by_code": dict(failed_by_code),
        "cancelled": statuses["cancelled"],
        "lost": len(accepted_ids) - finished,
        "lost_by_status": {status: count for status, count in statuses.items() if status not in TERMINAL},
        "duplicated": two_ids + extra_records,
        "submissions_with_two_job_ids": two_ids,
        "job_records_in_redis": records_in_redis,
        "expected_failures": sum(1 for s in submissions if s.body["prompt"].startswith("FAIL")),
        "replays": submitted["replays"],
        "attempts_by_code": dict(submitted["attempt_codes"]),
        "retried_submissions": sum(1 for s in submissions if s.attempts > 1),
        "throughput_jobs_per_second": {
            "submit": round(len(accepted_ids) / submitted["seconds"], 2),
            "end_to_end": round(finished / end_to_end_seconds, 2),
        },
        "seconds": {"submit": round(submitted["seconds"], 3), "end_to_end": round(end_to_end_seconds, 3)},
        "request_latency_ms": {key: (round(value * 1000, 3) if key != "count" else value)
                               for key, value in percentiles(submitted["latencies"], (50, 90, 99)).items()},
        "submission_latency_ms": {key: (round(value * 1000, 3) if key != "count" else value) for key, value in
                                  percentiles([s.seconds for s in submissions if s.attempts], (50, 90, 99)).items()},
        "settings": {"jobs": jobs, "clients": clients, "mock_workers": workers, "api_processes": api_workers,
                     "attempts": attempts, "replay_every": replay_every, "fail_every": fail_every,
                     "job": JOB_FIELDS, "submit_timeout_s": submit_timeout, "finish_timeout_s": finish_timeout},
        "processes_exited_early": worker_exits,
        "machine": machine_facts(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="submissions (default 2000)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="mock worker processes (default 2)")
    parser.add_argument("--api-workers", type=int, default=1, help="API server processes (default 1)")
    parser.add_argument("--attempts", type=int, default=5, help="tries per submission (default 5)")
    parser.add_argument("--replay-every", type=int, default=10,
                        help="send every Nth accepted submission again with its key; 0 turns it off (default 10)")
    parser.add_argument("--fail-every", type=int, default=0,
                        help="make every Nth job fail in the mock worker; 0 turns it off (default 0)")
    parser.add_argument("--submit-timeout", type=float, default=300, help="bound of the submission phase, s")
    parser.add_argument("--finish-timeout", type=float, default=300, help="bound of the wait for the workers, s")
    args = parser.parse_args()
    setup_logging()
    emit(run_load(args.jobs, args.clients, args.workers, args.api_workers, args.attempts, args.replay_every,
                  args.fail_every, args.submit_timeout, args.finish_timeout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
