"""Admission throughput: sustained `POST /v1/generate` requests per second against a bare FastAPI endpoint.

The product is `reins api` with a valid tenant key, a real private Redis and REINS_QUEUE_WITHOUT_WORKER=accept, so
every 202 has written a job record and an RQ job and no worker is needed. The baseline is bench/bare_api.py: the
same uvicorn arguments and process count, one route returning the same JSON body. One asyncio httpx client with a
fixed number of concurrent requests (closed loop: each request starts when the previous one on its slot returns)
drives both, in alternating rounds of fixed length, so drift in machine load hits both alike. The figure is the
ratio of the two total rates; the client shares the CPUs with the servers, as it would on one host.

Run: python bench/admission.py [--rounds N] [--seconds S] [--concurrency C] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (API_KEY, Services, emit, free_port, machine_facts, percentiles, setup_logging,  # noqa: E402
                     wait_for_http, wait_for_port, write_config, write_tenants)

logger = logging.getLogger("bench.admission")

TARGET_RATIO = 0.5
BODY = {"model": "tiny-wan", "prompt": "a red car moving left on a wet street", "seed": 1, "steering_strength": 1.0}


async def drive(url: str, seconds: float, concurrency: int) -> dict:
    """Send POSTs from `concurrency` slots for `seconds`; return the count of 202s, latencies and other codes."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    latencies: list[float] = []
    codes: Counter = Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30, trust_env=False) as client:
        deadline = time.perf_counter() + seconds

        async def slot() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post("/v1/generate", json=BODY, headers=headers)
                codes[response.status_code] += 1
                if response.status_code == 202:
                    latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(slot() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"accepted": codes[202], "seconds": elapsed, "latencies": latencies, "codes": dict(codes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per endpoint (default 4)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a round in seconds (default 5)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="server processes of each endpoint (default 1)")
    args = parser.parse_args()
    setup_logging()
    from reins.tiny import save_tiny_model

    services = Services()
    try:
        folder = services.folder
        model_dir = save_tiny_model(folder / "tiny-wan")
        config, tenants = folder / "reins.toml", folder / "tenants.toml"
        write_config(config, model_dir, Path(__file__).resolve().parent.parent / "directions" / "tiny-wan.safetensors",
                     {"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4})
        write_tenants(tenants)
        env = services.env(config, tenants, REINS_QUEUE_WITHOUT_WORKER="accept")
        product_url = services.start_api(env, workers=args.workers)

        sample = httpx.post(product_url + "/v1/generate", json=BODY, headers={"Authorization": f"Bearer {API_KEY}"},
                            timeout=30, trust_env=False)
        if sample.status_code != 202:
            raise RuntimeError(f"the product rejected the benchmark request: {sample.status_code} {sample.text}")
        response_file = folder / "bare-response.json"
        response_file.write_text(sample.text)
        port = free_port()
        bare = services.start("bare", [sys.executable, "-m", "bench.bare_api", "--port", str(port), "--workers",
                                       str(args.workers)], {"BENCH_BARE_RESPONSE_FILE": str(response_file)})
        wait_for_port(port, 60, bare)
        bare_url = f"http://127.0.0.1:{port}"
        wait_for_http(bare_url + "/healthz", 60)

        targets = {"product": product_url, "bare": bare_url}
        for name, url in targets.items():  # warm-up
            asyncio.run(drive(url, 1.0, args.concurrency))
        results = {name: [] for name in targets}
        for index in range(args.rounds):
            order = ("product", "bare") if index % 2 == 0 else ("bare", "product")
            for name in order:
                outcome = asyncio.run(drive(targets[name], args.seconds, args.concurrency))
                results[name].append(outcome)
                logger.info("round %d %s: %.0f requests/s, codes %s", index, name,
                            outcome["accepted"] / outcome["seconds"], outcome["codes"])
    finally:
        services.close()

    summary = {}
    for name, outcomes in results.items():
        latencies = [value for outcome in outcomes for value in outcome["latencies"]]
        codes: Counter = Counter()
        for outcome in outcomes:
            codes.update(outcome["codes"])
        summary[name] = {
            "requests_per_second": sum(o["accepted"] for o in outcomes) / sum(o["seconds"] for o in outcomes),
            "requests_per_second_by_round": [round(o["accepted"] / o["seconds"], 1) for o in outcomes],
            "latency_ms": {key: (value * 1000 if key != "count" else value)
                           for key, value in percentiles(latencies, (50, 99)).items()},
            "status_codes": {str(code): count for code, count in codes.items()},
        }
    ratio = summary["product"]["requests_per_second"] / summary["bare"]["requests_per_second"]
    round_ratios = [p / b for p, b in zip(summary["product"]["requests_per_second_by_round"],
                                          summary["bare"]["requests_per_second_by_round"])]
    emit({
        "name": "admission",
        "value": round(ratio, 4),
        "unit": "ratio (product / bare requests per second)",
        "target": f">= {TARGET_RATIO}",
        "met": bool(ratio >= TARGET_RATIO),
        "ratio_by_round": [round(value, 4) for value in round_ratios],
        "ratio_median_of_rounds": round(float(np.median(round_ratios)), 4),
        "product": summary["product"],
        "bare": summary["bare"],
        "settings": {"rounds": args.rounds, "seconds_per_round": args.seconds, "concurrency": args.concurrency,
                     "server_processes": args.workers, "request": BODY},
        "machine": machine_facts(),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
