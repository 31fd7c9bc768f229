"""Steering overhead: wall time and peak memory of a steered generation against an unhooked one.

Arms, run on one `small` tiny Wan pipeline (8 blocks, 128x128, 17 frames, 8 steps, classifier-free guidance):

- `unhooked`: no Steerer attached, the pipeline exactly as diffusers loads it. It is the baseline of the target
  because a server without steering would run it. Everything steering adds (the hook dispatch on the steered
  block, the probe, the vector add) counts against steering.
- `steered`: a Steerer attached at the middle block, strength 1 (the vector add runs in the first half of the steps).
- `strength0`: the same Steerer at strength 0, which is what the worker runs for a tenant that turns steering off.
  It is reported for comparison, because it separates the hook and probe cost from the add.

The arms run in rounds, each round in one of the six orders of the three arms in turn, so drift in machine load
hits every arm alike. The ratio of a round is steered / unhooked time within that round; the figure is the median
over rounds. Hooks are attached and removed between runs, outside the timed region.

Peak memory is measured in a child process started with glibc's mmap threshold fixed at 64 KiB, so that tensors
above that size are returned to the kernel when freed and the resident set follows the live tensors. Before each
run the child resets its resident-set high-water mark (`/proc/self/clear_refs`, Linux 4.0 and later), and the
figure is VmHWM after the run minus VmRSS before it.

Run: python bench/steering_overhead.py [--rounds N] [--memory-rounds N] [--size small|tiny] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine_facts, percentiles, rounded, setup_logging  # noqa: E402

logger = logging.getLogger("bench.steering_overhead")

ARMS = ("unhooked", "steered", "strength0")
TARGET_RATIO = 1.01
PROMPT = "a person with a weapon on a street at night"


def build(size: str, folder: Path):
    from reins.pipelines import GenerationParams, load_pipeline
    from reins.tiny import TINY_MODELS, save_tiny_model

    model_dir = save_tiny_model(folder / f"wan-{size}", family="wan", size=size)
    pipeline = load_pipeline(str(model_dir), device="cpu", dtype="float32")
    defaults = TINY_MODELS["wan"].defaults[size]
    params = GenerationParams(prompt=PROMPT, num_frames=defaults.num_frames, height=defaults.height,
                              width=defaults.width, num_inference_steps=defaults.num_inference_steps, seed=3)
    return pipeline, params


def run_arm(pipeline, params, arm: str, token_gate: bool = False) -> tuple[float, object]:
    """Run one generation of `arm` and return its wall time in seconds and its count of steered block calls."""
    from reins.pipelines import generate
    from reins.steering import Steerer, SteeringConfig

    steerer = config = None
    if arm != "unhooked":
        steerer = Steerer(pipeline)
        direction = np.random.default_rng(0).normal(size=steerer.hidden_size).astype(np.float32)
        direction /= np.linalg.norm(direction)
        # With the token gate, the reference (0, -1) makes a token's score its projection on the direction.
        config = SteeringConfig(direction=direction, strength=1.0 if arm == "steered" else 0.0, reference_norm=1.0,
                                token_gate=token_gate, probe_reference=(0.0, -1.0) if token_gate else None)
    gc.collect()
    started = time.perf_counter()
    generate(pipeline, params, steerer, config)
    elapsed = time.perf_counter() - started
    calls = steerer.calls_steered if steerer is not None else 0
    if steerer is not None:
        steerer.detach()
    return elapsed, calls


def hook_seconds(pipeline, params, runs: int, token_gate: bool = False) -> list[float]:
    """Return, per steered generation, the wall time spent inside the steering hook's `post_forward`.

    This counts the work steering adds directly (probe, scales, vector add, and the token gate if asked) without the
    run-to-run noise of the whole generation. The hook dispatch of diffusers' HookRegistry around it is not included.
    """
    from reins.steering import SteeringHook

    original = SteeringHook.post_forward
    spent = [0.0]

    def timed(self, module, output):
        started = time.perf_counter()
        try:
            return original(self, module, output)
        finally:
            spent[0] += time.perf_counter() - started

    SteeringHook.post_forward = timed
    try:
        totals = []
        for _ in range(runs):
            spent[0] = 0.0
            run_arm(pipeline, params, "steered", token_gate=token_gate)
            totals.append(spent[0])
        return totals
    finally:
        SteeringHook.post_forward = original


def bootstrap_median_interval(values: list[float], draws: int = 5000, seed: int = 0) -> list[float]:
    """Return the 95% percentile-bootstrap interval of the median of `values`."""
    rng = np.random.default_rng(seed)
    samples = rng.choice(np.asarray(values), size=(draws, len(values)), replace=True)
    medians = np.median(samples, axis=1)
    return [round(float(np.percentile(medians, 2.5)), 4), round(float(np.percentile(medians, 97.5)), 4)]


def read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def memory_child(size: str, rounds: int) -> None:
    """Print, as JSON, each arm's peak extra resident memory per run (bytes)."""
    with tempfile.TemporaryDirectory(prefix="reins-bench-memory-") as folder:
        pipeline, params = build(size, Path(folder))
    for arm in ARMS:  # warm-up: first calls allocate lazily initialised state
        run_arm(pipeline, params, arm)
    peaks = {arm: [] for arm in ARMS}
    orders = list(itertools.permutations(ARMS))
    for index in range(rounds):
        for arm in orders[index % len(orders)]:
            gc.collect()
            Path("/proc/self/clear_refs").write_text("5")
            before = read_status_kib("VmRSS")
            run_arm(pipeline, params, arm)
            peaks[arm].append((read_status_kib("VmHWM") - before) * 1024)
    print(json.dumps(peaks))


def measure_memory(size: str, rounds: int, threads: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}
    arguments = [sys.executable, __file__, "--memory-child", "--size", size, "--memory-rounds", str(rounds),
                 "--threads", str(threads)]
    output = subprocess.run(arguments, env=env, capture_output=True, text=True, timeout=600)
    if output.returncode != 0:
        raise RuntimeError(f"memory child failed with code {output.returncode}:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=18,
                        help="timed rounds; each runs every arm once, 6 rounds cycle through every order (default 18)")
    parser.add_argument("--memory-rounds", type=int, default=6, help="rounds of the memory child (default 6)")
    parser.add_argument("--size", choices=("tiny", "small"), default="small", help="tiny Wan size (default small)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads; 0 keeps torch's default (default 0)")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    setup_logging()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.size, args.memory_rounds)
        return 0

    import torch

    with tempfile.TemporaryDirectory(prefix="reins-bench-steering-") as folder:
        pipeline, params = build(args.size, Path(folder))
    for arm in ARMS:
        run_arm(pipeline, params, arm)
    times = {arm: [] for arm in ARMS}
    calls_steered = {}
    orders = list(itertools.permutations(ARMS))
    deadline = time.monotonic() + 600
    for index in range(args.rounds):
        if time.monotonic() > deadline:
            logger.warning("stopping after %d rounds: the 600 s bound was reached", index)
            break
        for arm in orders[index % len(orders)]:
            elapsed, calls = run_arm(pipeline, params, arm)
            times[arm].append(elapsed)
            calls_steered[arm] = calls
        logger.info("round %d: %s", index, {arm: round(values[-1], 4) for arm, values in times.items()})

    ratios = [s / u for s, u in zip(times["steered"], times["unhooked"])]
    ratios_vs_strength0 = [s / z for s, z in zip(times["steered"], times["strength0"])]
    ratios_strength0 = [z / u for z, u in zip(times["strength0"], times["unhooked"])]
    median_ratio = float(np.median(ratios))
    in_hook = hook_seconds(pipeline, params, runs=5)
    in_hook_gated = hook_seconds(pipeline, params, runs=5, token_gate=True)

    logger.info("measuring peak memory in a child process")
    peaks = measure_memory(args.size, args.memory_rounds, args.threads)
    from reins.steering import Steerer

    probe_steerer = Steerer(pipeline)
    hidden_size = probe_steerer.hidden_size
    probe_steerer.detach()
    # What steering may keep: the direction as a float32 tensor per hook, plus one copy on the block's device per
    # steered call, and at most one steered block output alive next to the original while the hook returns.
    latent_frames = (params.num_frames - 1) // 4 + 1
    tokens = latent_frames * (params.height // 8 // 2) * (params.width // 8 // 2)
    # One row: diffusers' WanPipeline (0.42) calls the transformer separately for each guidance branch.
    block_output_bytes = tokens * hidden_size * 4
    median_peak = {arm: float(np.median(values)) for arm, values in peaks.items()}
    extra_peak = median_peak["steered"] - median_peak["unhooked"]
    allowance = 2 * hidden_size * 4 + block_output_bytes
    # NOTE: the peak resident set varied by a few hundred KiB between identical runs on a 2-core machine. The
    # allowance is below that (80 KiB at small, 1.2 KiB at tiny), so met_memory can flip on noise.

    emit({
        "name": "steering_overhead",
        "value": round(median_ratio, 4),
        "unit": "ratio (steered / unhooked wall time, median over rounds)",
        "target": f"<= {TARGET_RATIO}; peak memory extra <= vectors + one block output ({allowance} bytes)",
        "met": bool(median_ratio <= TARGET_RATIO and extra_peak <= allowance),
        "met_time": bool(median_ratio <= TARGET_RATIO),
        "met_memory": bool(extra_peak <= allowance),
        "ratio_median_ci95": bootstrap_median_interval(ratios),
        "ratio_percentiles": percentiles(ratios, (10, 50, 90)),
        "hook_seconds_per_generation": rounded(in_hook),
        "hook_share_of_generation": round(float(np.median(in_hook)) / float(np.median(times["unhooked"])), 6),
        "hook_seconds_per_generation_token_gate": rounded(in_hook_gated),
        "hook_share_of_generation_token_gate": round(float(np.median(in_hook_gated))
                                                     / float(np.median(times["unhooked"])), 6),
        "ratio_steered_vs_strength0_median": round(float(np.median(ratios_vs_strength0)), 4),
        "ratio_strength0_vs_unhooked_median": round(float(np.median(ratios_strength0)), 4),
        "seconds": {arm: rounded(values) for arm, values in times.items()},
        "seconds_median": {arm: round(float(np.median(values)), 4) for arm, values in times.items()},
        "steered_block_calls_per_generation": calls_steered,
        "peak_extra_rss_bytes": {arm: [int(value) for value in values] for arm, values in peaks.items()},
        "peak_extra_rss_bytes_median": median_peak,
        "steered_minus_unhooked_peak_bytes": extra_peak,
        "block_output_bytes": block_output_bytes,
        "pipeline": {"family": "wan", "size": args.size, "num_frames": params.num_frames, "height": params.height,
                     "width": params.width, "num_inference_steps": params.num_inference_steps,
                     "guidance_scale": params.guidance_scale, "hidden_size": hidden_size, "tokens": tokens},
        "rounds": len(ratios),
        "machine": {**machine_facts(), "torch_threads": torch.get_num_threads()},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
