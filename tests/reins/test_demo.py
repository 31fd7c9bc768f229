"""`reins demo`, run as the README instructs a newcomer."""

import os
import subprocess
import sys

import pytest

from reins.video import probe_mp4


@pytest.mark.integration
def test_demo_writes_h264_and_exits_0(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "REINS_REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "reins.cli", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "demo" / "demo.mp4"
    assert f"wrote {out}" in result.stdout
    assert "steering applied" in result.stdout
    assert "completed" in result.stdout
    info = probe_mp4(out)
    assert info["codec"].startswith("h264")
    assert info["frames"] == 9


def test_demo_without_redis_explains_install(tmp_path):
    # A PATH holding only the Python interpreter's folder has no redis-server.
    env = {key: value for key, value in os.environ.items() if key != "REINS_REDIS_URL"}
    env["PATH"] = os.path.dirname(sys.executable)
    result = subprocess.run(
        [sys.executable, "-m", "reins.cli", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 1
    assert "redis-server was not found" in result.stdout
    assert "apt-get install redis-server" in result.stdout
