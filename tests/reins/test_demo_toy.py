"""`reins demo --model toy`: the trained toy model served end to end, unsteered and steered side by side."""

import os
import subprocess
import sys

import pytest

from reins.video import probe_mp4


@pytest.mark.integration
def test_toy_demo_shows_both_clips(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "REINS_REDIS_URL"}
    result = subprocess.run([sys.executable, "-m", "reins.cli", "demo", "--model", "toy", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split(":")[0].strip(): line for line in result.stdout.splitlines()}
    assert "colour=red" in lines["unsteered"]
    assert "colour=red" not in lines["steered"]
    info = probe_mp4(tmp_path / "demo.mp4")
    # Two 16x16 clips enlarged 8 times with a 2-pixel gap between them.
    assert (info["width"], info["height"], info["frames"]) == (8 * 34, 8 * 16, 3)
