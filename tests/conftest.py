"""Shared fixtures: a private Redis, the tiny Wan pipeline, a server configuration, and worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from app.config import hash_api_key
from app.protocol import TERMINAL_STATUSES
from reins.processes import start_redis, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DIRECTION = REPO_ROOT / "directions" / "tiny-wan.safetensors"

TENANT_KEYS = {"alpha": "key-alpha-0123456789", "beta": "key-beta-0123456789", "lab": "key-lab-0123456789"}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of the test run's own: REINS_TEST_REDIS_URL if set, else a private redis-server on loopback."""
    if os.environ.get("REINS_TEST_REDIS_URL"):
        yield os.environ["REINS_TEST_REDIS_URL"]
        return
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_process(process)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reins.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-wan")


@pytest.fixture(scope="session")
def tiny_i2v(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny Wan image-to-video pipeline and a random direction file for it."""
    import numpy as np

    from reins.directions import DirectionMetadata, save_direction
    from reins.tiny import save_tiny_model

    folder = tmp_path_factory.mktemp("models")
    model_dir = save_tiny_model(folder / "tiny-wan-i2v", family="wan-i2v")
    direction = folder / "tiny-wan-i2v.safetensors"
    metadata = DirectionMetadata(model_id="tiny-wan-i2v", family="wan-i2v", block_index=2, hidden_size=24,
                                 reference_norm=3.0, label_source="random", num_safe=0, num_unsafe=0)
    save_direction(direction, np.random.default_rng(0).normal(size=24), metadata)
    return model_dir, direction


def write_config(folder: Path, model_dir: Path, direction: Path = SHIPPED_DIRECTION,
                 i2v: tuple[Path, Path] | None = None) -> Path:
    """Write a server configuration with the tiny models and three tenants of different policies."""
    i2v_section = ""
    if i2v is not None:
        i2v_section = f"""
[models.tiny-wan-i2v]
path = "{i2v[0]}"
family = "wan-i2v"
direction = "{i2v[1]}"
default_num_frames = 9
default_height = 32
default_width = 32
default_inference_steps = 4
"""
    path = folder / "reins.toml"
    path.write_text(
        i2v_section + f"""
[models.tiny-wan]
path = "{model_dir}"
family = "wan"
direction = "{direction}"
max_num_frames = 33
max_height = 256
max_width = 256
max_inference_steps = 20
default_num_frames = 9
default_height = 32
default_width = 32
default_inference_steps = 4

[tenants.alpha]
api_key_sha256 = "{hash_api_key(TENANT_KEYS['alpha'])}"
default_strength = 1.0
min_strength = 0.0
max_strength = 2.0

[tenants.beta]
api_key_sha256 = "{hash_api_key(TENANT_KEYS['beta'])}"
default_strength = 0.5
min_strength = 0.25
max_strength = 0.75

# A research tenant allowed any finite strength, used to force a generation to diverge.
[tenants.lab]
api_key_sha256 = "{hash_api_key(TENANT_KEYS['lab'])}"
default_strength = 0.0
min_strength = -1e30
max_strength = 1e30
"""
    )
    return path


@pytest.fixture(scope="module")
def service_env(tmp_path_factory: pytest.TempPathFactory, redis_url: str, tiny_model_dir: Path,
                tiny_i2v: tuple[Path, Path]) -> dict[str, str]:
    """Environment of one API and its workers: a key prefix of its own, so tests never see each other's jobs."""
    folder = tmp_path_factory.mktemp("service")
    return {
        "REINS_REDIS_URL": redis_url,
        "REINS_CONFIG_FILE": str(write_config(folder, tiny_model_dir, i2v=tiny_i2v)),
        "REINS_STORAGE_DIR": str(folder / "videos"),
        "REINS_KEY_PREFIX": "test-" + uuid.uuid4().hex[:8],
        "REINS_WORKER_METRICS_PORT": "0",
        "REINS_JOB_TTL_SECONDS": "3600",
    }


def settings_from(env: dict[str, str]):
    from app.settings import Settings

    return Settings(
        redis_url=env["REINS_REDIS_URL"],
        config_file=env["REINS_CONFIG_FILE"],
        storage_dir=env["REINS_STORAGE_DIR"],
        key_prefix=env["REINS_KEY_PREFIX"],
        job_ttl_seconds=int(env["REINS_JOB_TTL_SECONDS"]),
    )


class WorkerProcess:
    """A worker in a subprocess, real (`reins worker`) or mock (`tests.mock_worker`)."""

    def __init__(self, env: dict[str, str], log_path: Path, mock: bool) -> None:
        module = "tests.mock_worker" if mock else "reins.cli"
        arguments = [sys.executable, "-m", module] + ([] if mock else ["worker"])
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            arguments, env={**os.environ, **env}, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_until_listening(self, redis: Redis, timeout_seconds: float = 60) -> None:
        """Wait until the worker has registered with RQ, so that timing-free tests can rely on it."""
        from rq import Worker

        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            if any(worker.pid == self.process.pid for worker in Worker.all(connection=redis)):
                return
            time.sleep(0.05)
        raise TimeoutError(f"worker did not start within {timeout_seconds} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@pytest.fixture
def api_headers() -> dict[str, dict[str, str]]:
    return {name: {"Authorization": f"Bearer {key}"} for name, key in TENANT_KEYS.items()}


def wait_for_job(client, job_id: str, headers: dict, timeout_seconds: float = 120) -> dict:
    """Poll `GET /v1/jobs/{id}` until the job reaches a terminal status."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in TERMINAL_STATUSES:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_seconds} s")
