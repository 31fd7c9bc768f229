"""Helpers shared by the benchmark scripts: machine facts, percentiles, JSON output and local services.

Every service runs on 127.0.0.1 in a temporary folder and is stopped by `Services.close`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from reins.processes import free_port, start_redis, stop_process, wait_for_port  # noqa: E402

logger = logging.getLogger("bench")

API_KEY = "bench-key-0123456789"
TENANT = "bench"


def setup_logging() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # httpx logs every request at INFO, which would cost the client CPU time inside the measured loops.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict:
    """Return the facts a reader needs to compare a figure with another machine's."""
    facts = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in
                     ("numpy", "torch", "diffusers", "fastapi", "uvicorn", "starlette", "httpx", "redis", "rq")},
    }
    if "torch" in sys.modules:
        facts["torch_threads"] = sys.modules["torch"].get_num_threads()
    redis_server = shutil.which("redis-server")
    if redis_server:
        output = subprocess.run([redis_server, "--version"], capture_output=True, text=True, timeout=10).stdout
        facts["redis_server"] = output.strip()
    return facts


def percentiles(samples: list[float], points=(50, 90, 99)) -> dict:
    """Return the named percentiles, min, max, mean and count of `samples` (empty dict for no samples)."""
    if not samples:
        return {}
    values = np.asarray(samples, dtype=np.float64)
    result = {f"p{point}": float(np.percentile(values, point)) for point in points}
    result.update(min=float(values.min()), max=float(values.max()), mean=float(values.mean()), count=len(values))
    return result


def emit(result: dict) -> None:
    """Print the result as one JSON object on stdout."""
    json.dump(result, sys.stdout, indent=2, default=float)
    sys.stdout.write("\n")
    sys.stdout.flush()


def rounded(values: list[float], digits: int = 6) -> list[float]:
    return [round(float(value), digits) for value in values]


def write_tenants(path: Path, max_concurrent_jobs: int | None = None) -> None:
    """Write a tenants file with one tenant, `bench`, whose key is API_KEY and whose range allows strength 0 to 2."""
    from app.tenants import ApiKey, TenantConfig, hash_api_key, save_tenants

    extra = {} if max_concurrent_jobs is None else {"max_concurrent_jobs": max_concurrent_jobs}
    tenant = TenantConfig(name=TENANT, api_keys=[ApiKey(id="key_bench", sha256=hash_api_key(API_KEY))],
                          default_strength=1.0, min_strength=0.0, max_strength=2.0, **extra)
    save_tenants(path, {TENANT: tenant})


def write_random_direction(path: Path, hidden_size: int, block_index: int, seed: int = 0) -> None:
    """Write a random unit direction for the tiny Wan model (no safety meaning; it only has the right shape)."""
    from reins.directions import DirectionMetadata, save_direction

    metadata = DirectionMetadata(model_id="bench-tiny-wan", family="wan", block_index=block_index,
                                 hidden_size=hidden_size, reference_norm=3.0, label_source="random",
                                 num_safe=0, num_unsafe=0)
    save_direction(path, np.random.default_rng(seed).normal(size=hidden_size), metadata)


def write_config(path: Path, model_dir: Path, direction: Path, defaults: dict) -> None:
    """Write a server configuration that serves one model, `tiny-wan`, with `defaults` as its request defaults."""
    path.write_text(
        f"""[models.tiny-wan]
path = "{model_dir}"
family = "wan"
direction = "{direction}"
max_num_frames = 33
max_height = 256
max_width = 256
max_inference_steps = 20
default_num_frames = {defaults["num_frames"]}
default_height = {defaults["height"]}
default_width = {defaults["width"]}
default_inference_steps = {defaults["num_inference_steps"]}
"""
    )


class Services:
    """A temporary folder with a private redis-server, and the API and worker processes started in it."""

    def __init__(self, prefix: str = "reins-bench-") -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self.processes: list[subprocess.Popen] = []
        self._logs = []
        self.redis_process, self.redis_url = start_redis(self.folder / "redis")
        logger.info("redis-server at %s", self.redis_url)

    def env(self, config: Path, tenants: Path, **extra: str) -> dict[str, str]:
        """Return the REINS_* environment that the API and its workers share."""
        env = {
            "REINS_REDIS_URL": self.redis_url,
            "REINS_CONFIG_FILE": str(config),
            "REINS_TENANTS_FILE": str(tenants),
            "REINS_STORAGE_DIR": str(self.folder / "videos"),
            "REINS_KEY_PREFIX": "bench",
            "REINS_WORKER_METRICS_PORT": "0",
            "REINS_JOB_TTL_SECONDS": "3600",
            "REINS_LOG_LEVEL": "WARNING",
        }
        env.update(extra)
        return env

    def start(self, name: str, arguments: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        self._logs.append(log)
        process = subprocess.Popen(arguments, env={**os.environ, **env}, cwd=REPO_ROOT, stdout=log,
                                   stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start_api(self, env: dict[str, str], workers: int = 1, name: str = "api") -> str:
        """Start `reins api` on a free port and return its base URL once /healthz responds."""
        port = free_port()
        process = self.start(name, [sys.executable, "-m", "reins.cli", "api", "--port", str(port),
                                    "--workers", str(workers)], env)
        wait_for_port(port, 60, process)
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/healthz", 60)
        return url

    def start_worker(self, env: dict[str, str], mock: bool, name: str = "worker") -> subprocess.Popen:
        arguments = [sys.executable, "-m", "tests.mock_worker"] if mock else [sys.executable, "-m", "reins.cli",
                                                                               "worker"]
        return self.start(name, arguments, env)

    def wait_for_workers(self, count: int, timeout_seconds: float = 120) -> None:
        """Wait until `count` RQ workers have registered with this Redis."""
        from redis import Redis
        from rq import Worker

        redis = Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args} exited with code {process.returncode}; logs in {self.folder}")
            if len(Worker.all(connection=redis)) >= count:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{count} workers did not register within {timeout_seconds} s; logs in {self.folder}")

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text()[-chars:] if path.exists() else ""

    def close(self, keep_folder: bool = False) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        stop_process(self.redis_process)
        for log in self._logs:
            log.close()
        if not keep_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def wait_for_http(url: str, timeout_seconds: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not respond with 200 within {timeout_seconds} s")
