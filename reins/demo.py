"""`reins demo`: the whole service on one machine, from an empty folder to a steered mp4.

It builds the tiny Wan pipeline, writes a configuration with one demo tenant, starts a private redis-server (unless
REINS_REDIS_URL is set), the API and one worker. It then submits a request, follows its progress and downloads the
video with reins.client, and stops everything it started.

With `--model toy` it serves the trained toy model instead, submits the same prompt unsteered and steered, and
writes both clips side by side (unsteered on the left), with what the toy judge reads in each.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.protocol import Job
from app.tenants import create_tenant
from reins.client import ReinsAPIError, ReinsClient, WaitTimeout
from reins.processes import REDIS_INSTALL_HINT, ServiceError, free_port, start_redis, stop_process, wait_for_port
from reins.tiny import read_tiny_marker, save_tiny_model
from reins.video import probe_mp4

DIRECTIONS = Path(__file__).resolve().parent.parent / "directions"
SHIPPED_DIRECTION = DIRECTIONS / "tiny-wan.safetensors"
SHIPPED_PROMPTS = DIRECTIONS / "tiny-wan.prompts.jsonl"
MODEL_NAME = "tiny-wan"
DEFAULT_PROMPT = "a red car moving left on a street at night"
TOY_MODEL = "toy"
TOY_PROMPT = "a red square moving left"
# The toy model's section. Its steps, guidance, step window, token gate and the demo tenant's strength are the ones
# `reins toy eval` used and recommends, read from directions/manifest.json.
TOY_SECTION = """[models.toy]
path = "toy"
family = "toy"
direction = "{direction}"
default_num_frames = 3
default_height = 16
default_width = 16
default_inference_steps = {policy.num_inference_steps}
default_guidance_scale = {policy.guidance_scale}
step_window = [{policy.step_window[0]}, {policy.step_window[1]}]
token_gate = {token_gate}
"""


def _say(message: str) -> None:
    print(message, flush=True)


def _direction_for(model_dir: Path, workdir: Path) -> Path:
    """Use the shipped direction for the tiny model; fit one from the shipped prompts if it is absent."""
    if SHIPPED_DIRECTION.is_file():
        return SHIPPED_DIRECTION
    target = workdir / "tiny-wan.safetensors"
    if not target.is_file():
        _say(f"no shipped direction at {SHIPPED_DIRECTION}; fitting one with reins discover")
        subprocess.run(
            [sys.executable, "-m", "reins.cli", "--log-level", "WARNING", "discover", "--model", str(model_dir),
             "--prompts", str(SHIPPED_PROMPTS), "--out", str(target), "--model-id", MODEL_NAME],
            check=True, stdout=subprocess.DEVNULL,
        )
    return target


@dataclass(frozen=True)
class ToyPolicy:
    """Steering and generation settings of the shipped toy direction, as `reins toy eval` measured them."""

    strength: float
    step_window: tuple[float, float]
    token_gate: bool
    num_inference_steps: int
    guidance_scale: float


def toy_policy() -> ToyPolicy:
    """Return the recommended settings of the shipped toy direction from directions/manifest.json."""
    entry = json.loads((DIRECTIONS / "manifest.json").read_text())["toy.safetensors"]
    generation = entry["generation"]
    return ToyPolicy(strength=float(entry["strength"]), step_window=tuple(entry["steering_step_window"]),
                     token_gate=bool(entry.get("token_gate", False)),
                     num_inference_steps=int(generation["num_inference_steps"]),
                     guidance_scale=float(generation["guidance_scale"]))


def strength_range(default_strength: float) -> tuple[float, float]:
    """Return the (lowest, highest) strength that the demo tenant allows, given its default strength."""
    return 0.0, max(2.0, 2 * default_strength)


def default_strength(model: str) -> float:
    """Return the demo tenant's default strength for `model` ("toy" or the tiny model)."""
    return toy_policy().strength if model == "toy" else 1.0


def write_demo_config(workdir: Path, model_dir: Path | None, direction: Path) -> tuple[Path, Path, str]:
    """Write the model configuration and a tenants file with one demo tenant; return both paths and its key."""
    tenants = workdir / "tenants.toml"
    tenants.unlink(missing_ok=True)
    policy = toy_policy() if model_dir is None else None
    strength = policy.strength if policy else 1.0
    low, high = strength_range(strength)
    _, api_key = create_tenant(tenants, "demo", default_strength=strength, min_strength=low, max_strength=high)
    config = workdir / "reins.toml"
    if model_dir is None:
        section = TOY_SECTION.format(direction=direction.resolve(), policy=policy,
                                     token_gate=str(policy.token_gate).lower())
        config.write_text("# Written by reins demo.\n" + section)
        return config, tenants, api_key
    config.write_text(
        f"""# Written by reins demo.
[models.{MODEL_NAME}]
path = "{model_dir.resolve()}"
family = "wan"
direction = "{direction.resolve()}"
default_num_frames = 9
default_height = 32
default_width = 32
default_inference_steps = 4

"""
    )
    return config, tenants, api_key


def run_demo(workdir: Path, out: Path | None, prompt: str | None, strength: float | None,
             model: str = MODEL_NAME) -> int:
    if not os.environ.get("REINS_REDIS_URL") and shutil.which("redis-server") is None:
        _say(f"error: {REDIS_INSTALL_HINT}")
        return 1
    workdir.mkdir(parents=True, exist_ok=True)
    out = out or workdir / "demo.mp4"
    if model == TOY_MODEL:
        model_dir, direction = None, DIRECTIONS / "toy.safetensors"
        prompt = prompt or TOY_PROMPT
    else:
        prompt = prompt or DEFAULT_PROMPT
        model_dir = workdir / "models" / MODEL_NAME
        if read_tiny_marker(model_dir) is None:
            _say(f"building the tiny Wan pipeline in {model_dir}")
            save_tiny_model(model_dir)
        direction = _direction_for(model_dir, workdir)
    config, tenants, api_key = write_demo_config(workdir, model_dir, direction)

    started: list[subprocess.Popen] = []
    try:
        redis_url = os.environ.get("REINS_REDIS_URL")
        if redis_url:
            _say("using the Redis at REINS_REDIS_URL")
        else:
            try:
                redis, redis_url = start_redis(workdir / "redis")
            except ServiceError as error:
                _say(f"error: {error}")
                return 1
            started.append(redis)
            _say(f"started a private redis-server at {redis_url}")

        port = free_port()
        key_prefix = f"reins-demo-{secrets.token_hex(4)}"
        env = dict(
            os.environ,
            REINS_REDIS_URL=redis_url,
            REINS_CONFIG_FILE=str(config),
            REINS_TENANTS_FILE=str(tenants),
            REINS_STORAGE_DIR=str(workdir / "videos"),
            REINS_PORT=str(port),
            REINS_WORKER_METRICS_PORT="0",
            REINS_KEY_PREFIX=key_prefix,
        )
        logs = (workdir / "api.log").open("w"), (workdir / "worker.log").open("w")
        api = subprocess.Popen([sys.executable, "-m", "reins.cli", "api"], env=env, stdout=logs[0], stderr=logs[0])
        started.append(api)
        worker = subprocess.Popen([sys.executable, "-m", "reins.cli", "worker"], env=env, stdout=logs[1], stderr=logs[1])
        started.append(worker)
        wait_for_port(port, 60, api)
        _say(f"API on http://127.0.0.1:{port} (logs in {workdir}/api.log), worker started (logs in {workdir}/worker.log)")
        _wait_for_worker(redis_url, f"{key_prefix}:{model}", worker)

        body = {"seed": 0}
        if strength is not None:
            body["steering_strength"] = strength
        out.parent.mkdir(parents=True, exist_ok=True)
        # Retries are off: the demo polls for the worker itself, faster than the 30 s Retry-After of a 503.
        with ReinsClient(f"http://127.0.0.1:{port}", api_key, max_retries=0) as client:
            if model == TOY_MODEL:
                # The same prompt and seed twice: unsteered, then with the tenant's default strength.
                unsteered_path = workdir / "toy-unsteered.mp4"
                steered_path = workdir / "toy-steered.mp4"
                unsteered = _run_job(client, model, prompt, {"seed": 0, "steering_strength": 0.0}, worker,
                                     unsteered_path, label="unsteered")
                job = _run_job(client, model, prompt, body, worker, steered_path, label="steered")
                if unsteered is None or job is None:
                    return 1
                _write_side_by_side(unsteered_path, steered_path, out)
                _describe_toy_clips(unsteered_path, steered_path)
            else:
                job = _run_job(client, model, prompt, body, worker, out)
                if job is None:
                    return 1

        info = probe_mp4(out)
        _say(f"wrote {out.resolve()} ({info['codec']}, {info['width']}x{info['height']}, {info['frames']} frames)")
        _say("steering applied: " + json.dumps(job.steering.model_dump(mode="json")))
        return 0
    finally:
        for process in reversed(started):
            stop_process(process)


def _run_job(client: ReinsClient, model: str, prompt: str, body: dict, worker: subprocess.Popen,
             out: Path, label: str = "") -> Job | None:
    """Submit one job, follow it and download its video to `out`; print why and return None if it did not complete."""
    try:
        job = _submit_when_worker_ready(client, model, prompt, body, worker)
    except ReinsAPIError as error:
        _say(f"error: POST /v1/generate answered {error.status}: {error.code}: {error.message}")
        return None
    name = f"{label} {job.id}" if label else job.id
    _say(f"submitted {name}: {json.dumps(job.request.model_dump(mode='json'))}")
    job = _follow(client, job.id, worker)
    if job.status != "completed":
        error = job.error.model_dump(mode="json") if job.error else None
        _say(f"error: job {job.id} ended {job.status}: {error}")
        return None
    client.download(job.id, out)
    return job


def _read_frames(path: Path):
    import imageio_ffmpeg
    import numpy as np

    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    return np.stack([np.frombuffer(frame, dtype=np.uint8).reshape(height, width, 3) for frame in reader])


def _write_side_by_side(left: Path, right: Path, out: Path, scale: int = 8) -> None:
    """Write the two clips next to each other, enlarged `scale` times without smoothing, with a grey gap."""
    import numpy as np

    from reins.video import read_comment, write_mp4

    first, second = _read_frames(left), _read_frames(right)
    gap = np.full((first.shape[0], first.shape[1], 2, 3), 128, dtype=np.uint8)
    frames = np.concatenate([first, gap, second], axis=2).repeat(scale, axis=1).repeat(scale, axis=2)
    # Both jobs' provenance, so the side-by-side file records what each half is.
    comment = f"left: {read_comment(left)} | right: {read_comment(right)}"
    write_mp4(frames, out, fps=4, metadata={"comment": comment})


def _describe_toy_clips(unsteered: Path, steered: Path) -> None:
    """Print what the toy judge reads in each clip (read back from the H.264 files, so colours are approximate)."""
    from reins.toy.judge import ToyJudge

    judge = ToyJudge()
    _say("the video shows the unsteered clip on the left and the steered one on the right")
    for label, path in (("unsteered", unsteered), ("steered", steered)):
        reading = judge.read(_read_frames(path))
        _say(f"{label:>9}: object={reading.has_object} colour={reading.color} shape={reading.shape} "
             f"motion={reading.motion}")


def _wait_for_worker(redis_url: str, queue_name: str, worker: subprocess.Popen, timeout_seconds: float = 120) -> None:
    """Wait until the worker has loaded the model and registered on its queue, so that the first request is served."""
    from app.queue import count_workers
    from app.redis_connection import connect

    redis = connect(redis_url)
    deadline = time.monotonic() + timeout_seconds
    _say("waiting for the worker to load the model")
    while count_workers(redis, queue_name) == 0:
        if worker.poll() is not None:
            raise ServiceError(f"the worker exited with code {worker.returncode}; see its log")
        if time.monotonic() > deadline:
            raise ServiceError(f"the worker did not start within {timeout_seconds} s; see its log")
        time.sleep(0.1)


def _submit_when_worker_ready(client: ReinsClient, model: str, prompt: str, body: dict, worker: subprocess.Popen,
                              timeout_seconds: float = 120) -> Job:
    """Submit the request, retrying while the API returns 503 because the worker is still loading the model."""
    deadline = time.monotonic() + timeout_seconds
    # One Idempotency-Key for every attempt: a 503 releases the key, and a lost response cannot queue a second job.
    key = f"reins-demo-{secrets.token_hex(8)}"
    while True:
        try:
            return client.submit(model, prompt, idempotency_key=key, **body)
        except ReinsAPIError as error:
            if error.code != "model_unavailable" or time.monotonic() > deadline:
                raise
        if worker.poll() is not None:
            raise ServiceError(f"the worker exited with code {worker.returncode}; see its log")
        time.sleep(0.2)


def _follow(client: ReinsClient, job_id: str, worker: subprocess.Popen, timeout_seconds: float = 300) -> Job:
    """Follow the job until it ends, printing each progress change and checking every second that the worker
    still runs."""
    deadline = time.monotonic() + timeout_seconds
    last_state = None

    def show(job: Job) -> None:
        nonlocal last_state
        state = (job.status, job.progress)
        if state != last_state:
            _say(f"  {job.status:<12} {job.progress * 100:5.1f}%")
            last_state = state

    while time.monotonic() < deadline:
        try:
            return client.wait(job_id, timeout=min(1.0, deadline - time.monotonic()), on_progress=show)
        except WaitTimeout:
            if worker.poll() is not None:
                raise ServiceError(f"the worker exited with code {worker.returncode}; see its log") from None
    raise ServiceError(f"job {job_id} did not finish within {timeout_seconds} s")
