"""Warm pipeline: a job end to end through the API, Redis and a real worker, against the same call in-process.

Starts a private Redis, `reins api` and `reins worker` with a tiny Wan pipeline, and loads the same pipeline in this
process with a Steerer and the steering configuration the worker builds from the job record. Two warm-up jobs and
two warm-up calls come first. Then each round runs three arms, in the next of their six orders:

- one end-to-end job;
- one in-process `generate` call with the same parameters (prompt, seed, size, steps, strength 1);
- the same call followed by the H.264 encode that the worker also does (`reins.video.write_mp4`).

End to end is from just before the POST is sent to the job record's `finished_at` (written by the worker after the
video is stored), so the client's polling interval does not count; the client-observed time is reported as well.
In-process is the wall time of `reins.pipelines.generate`. The figure is the median over rounds of the ratio of the
job to the plain call of the same round; the ratio to the call with the encode is reported too, to separate the
encode from the rest of the service's cost.

Run: python bench/warm_pipeline.py [--rounds N] [--size tiny|small] [--threads N] [--profile-worker]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import pstats
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (API_KEY, REPO_ROOT, Services, emit, machine_facts, percentiles, rounded,  # noqa: E402
                     setup_logging, write_config, write_random_direction, write_tenants)

logger = logging.getLogger("bench.warm_pipeline")

TARGET_RATIO = 1.10
PROMPT = "a person with a weapon on a street at night"


def epoch(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def run_job(client: httpx.Client, body: dict, poll_seconds: float) -> dict:
    """Submit one job, wait until it ends, and return the job with its timings in seconds."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    sent = time.time()
    response = client.post("/v1/generate", json=body, headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"POST returned {response.status_code}: {response.text}")
    job_id = response.json()["id"]
    deadline = time.monotonic() + 300
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after 300 s")
        time.sleep(poll_seconds)
    observed = time.time()
    if job["status"] != "completed":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
    finished = epoch(job["finished_at"])
    return {
        "job": job,
        "end_to_end": finished - sent,
        "observed": observed - sent,
        "api": epoch(job["created_at"]) - sent,
        "queue": epoch(job["started_at"]) - epoch(job["created_at"]),
        "worker": finished - epoch(job["started_at"]),
    }


def top_functions(profile_path: Path, count: int) -> list[dict]:
    stats = pstats.Stats(str(profile_path))
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        rows.append({"function": f"{Path(filename).name}:{line}:{function}", "calls": calls,
                     "own_s": round(own, 4), "cumulative_s": round(cumulative, 4)})
    rows.sort(key=lambda row: row["cumulative_s"], reverse=True)
    return rows[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=18,
                        help="rounds; each runs every arm once, 6 rounds cycle through every order (default 18)")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny", help="tiny Wan size (default tiny)")
    parser.add_argument("--poll", type=float, default=0.05, help="job polling interval in seconds (default 0.05)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads of the worker and of this process; 0 keeps torch's default")
    parser.add_argument("--profile-worker", action="store_true",
                        help="run the worker under cProfile and report its top functions")
    args = parser.parse_args()
    setup_logging()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from reins.directions import load_direction
    from reins.pipelines import GenerationParams, generate, load_pipeline
    from reins.steering import Steerer, SteeringConfig
    from reins.tiny import TINY_MODELS, save_tiny_model
    from reins.video import write_mp4

    defaults = TINY_MODELS["wan"].defaults[args.size]
    services = Services()
    profile_path = services.folder / "worker.prof"
    end_to_end, in_process, with_encode = [], [], []
    breakdown = {"api": [], "queue": [], "worker": [], "observed": []}
    try:
        folder = services.folder
        model_dir = save_tiny_model(folder / "tiny-wan", size=args.size)
        if args.size == "tiny":
            direction_path = REPO_ROOT / "directions" / "tiny-wan.safetensors"
        else:
            direction_path = folder / "direction.safetensors"
            write_random_direction(direction_path, hidden_size=64, block_index=4)
        config, tenants = folder / "reins.toml", folder / "tenants.toml"
        write_config(config, model_dir, direction_path, vars(defaults))
        write_tenants(tenants)
        env = services.env(config, tenants, REINS_QUEUE_WITHOUT_WORKER="reject", REINS_WORKER_DEVICE="cpu",
                           REINS_WORKER_DTYPE="float32")
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        url = services.start_api(env)
        worker_arguments = [sys.executable, "-m", "reins.cli", "worker"]
        if args.profile_worker:
            worker_arguments = [sys.executable, "-m", "cProfile", "-o", str(profile_path), "-m", "reins.cli",
                                "worker"]
        services.start("worker", worker_arguments, env)
        services.wait_for_workers(1, timeout_seconds=180)

        body = {"model": "tiny-wan", "prompt": PROMPT, "seed": 5, "steering_strength": 1.0}
        pipeline = load_pipeline(str(model_dir), device="cpu", dtype="float32")
        direction = load_direction(direction_path)
        steerer = Steerer(pipeline, block_index=direction.metadata.block_index)
        with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
            warm = [run_job(client, body, args.poll) for _ in range(2)]
            record = warm[-1]["job"]
            request, steering = record["request"], record["steering"]
            params = GenerationParams(**{name: request[name] for name in GenerationParams.__dataclass_fields__})
            steering_config = SteeringConfig(direction=direction.vector, strength=float(steering["strength"]),
                                             reference_norm=direction.metadata.reference_norm,
                                             step_window=tuple(steering["step_window"]),
                                             branch_mode=steering["branch_mode"],
                                             probe_reference=direction.probe_reference)

            def call(encode: bool = False) -> float:
                started = time.perf_counter()
                frames = generate(pipeline, params, steerer, steering_config)
                if encode:
                    write_mp4(frames, folder / "in-process.mp4", fps=16)
                return time.perf_counter() - started

            call(), call(encode=True)
            deadline = time.monotonic() + 600
            orders = list(itertools.permutations(("job", "call", "call_and_encode")))
            for index in range(args.rounds):
                if time.monotonic() > deadline:
                    logger.warning("stopping after %d rounds: the 600 s bound was reached", index)
                    break
                for arm in orders[index % len(orders)]:
                    if arm == "job":
                        timing = run_job(client, body, args.poll)
                        end_to_end.append(timing["end_to_end"])
                        for name in breakdown:
                            breakdown[name].append(timing[name])
                    elif arm == "call":
                        in_process.append(call())
                    else:
                        with_encode.append(call(encode=True))
                logger.info("round %d: job %.3f s, call %.3f s, call and encode %.3f s", index, end_to_end[-1],
                            in_process[-1], with_encode[-1])
    finally:
        services.close(keep_folder=args.profile_worker)

    round_ratios = [job / call for job, call in zip(end_to_end, in_process)]
    ratio = float(np.median(round_ratios))
    result = {
        "name": "warm_pipeline",
        "value": round(ratio, 4),
        "unit": "ratio (end-to-end job / in-process generate of the same round, median over rounds)",
        "target": f"<= {TARGET_RATIO}",
        "met": bool(ratio <= TARGET_RATIO),
        "ratio_by_round": rounded(round_ratios, 4),
        "ratio_of_medians": round(float(np.median(end_to_end) / np.median(in_process)), 4),
        "end_to_end_s": percentiles(end_to_end, (50, 90)),
        "in_process_s": percentiles(in_process, (50, 90)),
        "in_process_with_encode_s": percentiles(with_encode, (50, 90)),
        "ratio_to_in_process_with_encode": round(float(np.median(
            [job / call for job, call in zip(end_to_end, with_encode)])), 4),
        "breakdown_median_s": {name: round(float(np.median(values)), 4) for name, values in breakdown.items()},
        "samples_s": {"end_to_end": rounded(end_to_end), "in_process": rounded(in_process),
                      "in_process_with_encode": rounded(with_encode),
                      **{name: rounded(values) for name, values in breakdown.items()}},
        "generation": {"family": "wan", "size": args.size, **vars(defaults), "steering_strength": 1.0},
        "machine": {**machine_facts(), "torch_threads": torch.get_num_threads()},
    }
    if args.profile_worker:
        if profile_path.exists():
            result["worker_profile_top_cumulative"] = top_functions(profile_path, 40)
            result["worker_profile_file"] = str(profile_path)
        else:
            logger.warning("the worker wrote no profile to %s", profile_path)
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
