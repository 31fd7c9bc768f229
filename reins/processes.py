"""Starting and stopping the local processes that the demo and the tests run: redis-server, the API, a worker."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

REDIS_INSTALL_HINT = (
    "redis-server was not found on PATH. Install it (Debian/Ubuntu: 'apt-get install redis-server'; "
    "macOS: 'brew install redis') or point REINS_REDIS_URL at a running Redis."
)


class ServiceError(RuntimeError):
    """A local service could not be started."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free at the time of the call."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_seconds: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"process {process.args[0]} exited with code {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceError(f"nothing listened on 127.0.0.1:{port} within {timeout_seconds} s")


def start_redis(folder: Path, port: int | None = None, append_only: bool = False) -> tuple[subprocess.Popen, str]:
    """Start a private redis-server on loopback; return the process and its URL.

    By default it keeps nothing on disk. With `append_only` it logs every write to an append-only file in `folder`
    and reloads it at the next start, as the compose file's Redis does.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(REDIS_INSTALL_HINT)
    folder = folder.resolve()  # redis-server changes into --dir before it opens the log file
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
         "yes" if append_only else "no", "--appendfsync", "always",
         "--dir", str(folder), "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, 10, process)
    return process, f"redis://127.0.0.1:{port}/0"


def stop_process(process: subprocess.Popen, timeout_seconds: float = 10) -> None:
    """Send SIGTERM, wait, then SIGKILL if the process is still running."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
