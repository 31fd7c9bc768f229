"""The `reins` command line, run as a subprocess the way a user runs it."""

import json
import subprocess
import sys

import pytest

from reins.video import probe_mp4, read_comment
from tests.conftest import SHIPPED_DIRECTION


def reins(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reins.cli", "--log-level", "WARNING", *arguments],
                          capture_output=True, text=True, timeout=300)


def test_tiny_model_then_generate(tmp_path):
    model = tmp_path / "model"
    assert reins("tiny-model", "--out", str(model)).returncode == 0
    out = tmp_path / "clip.mp4"
    result = reins("generate", "--model", str(model), "--prompt", "a cat", "--direction", str(SHIPPED_DIRECTION),
                   "--strength", "0.5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["block_index"] == 2
    assert output["step_window"] == [0.0, 0.5]
    info = probe_mp4(out)
    assert info["frames"] == 9
    assert (info["width"], info["height"]) == (32, 32)


def test_generate_toy_with_token_gate(tmp_path):
    from reins.directions import load_direction

    out = tmp_path / "toy.mp4"
    direction = SHIPPED_DIRECTION.parent / "toy.safetensors"
    result = reins("generate", "--model", "toy", "--prompt", "a red square moving left", "--direction",
                   str(direction), "--strength", "1", "--step-window", "0", "1",
                   "--token-gate", "--num-frames", "3", "--height", "16", "--width", "16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["token_gate"] is True
    assert output["step_window"] == [0.0, 1.0]
    assert probe_mp4(out)["frames"] == 3
    comment = read_comment(out)
    for fragment in ("model=toy", "seed=0", "strength=1.0", "strength_mode=relative", "block=7", "window=0.0-1.0",
                     "preserve_norm=off", "token_gate=on", "adaptive=off",
                     "direction_sha256=" + load_direction(direction).metadata.sha256):
        assert fragment in comment, (fragment, comment)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["generate", "--prompt", "x", "--out", "o.mp4", "--strength", "nan", "--model", "m"], "finite"),
        (["generate", "--prompt", "x", "--out", "o.mp4", "--strength", "1", "--model", "m"], "--direction is required"),
        (["generate", "--prompt", "x", "--out", "o.mp4", "--strength", "0", "--model", "m", "--token-gate"],
         "missing --direction: --token-gate reads the probe score"),
        (["generate", "--prompt", "x", "--out", "o.mp4", "--strength", "0", "--model", "m", "--adaptive"],
         "missing --direction: --adaptive reads the probe score"),
        (["generate", "--prompt", "x", "--out", "o.mp4", "--model", "m", "--token-gate"],
         "missing --direction: --token-gate reads the probe score"),
        (["generate", "--prompt", "x", "--out", "o.gif", "--strength", "0", "--model", "m"],
         "invalid --out o.gif: expected a file name ending in .mp4"),
        (["generate", "--prompt", "x", "--out", "o.mp4", "--strength", "0", "--model", "m", "--dtype", "f8"],
         "argument --dtype: invalid choice: 'f8'"),
        (["generate", "--prompt", "x", "--out", "o.mp4", "--strength", "0", "--model", "m", "--device", "gpu0"],
         "argument --device: expected auto, cpu, cuda or cuda:N, got 'gpu0'"),
        (["generate", "--prompt", "x", "--out", "o.mp4", "--strength", "0", "--model", "m", "--guidance-scale", "-1"],
         "argument --guidance-scale: expected a number of 0 or more"),
        (["toy", "eval", "--plot", "marker.txt/sweep.png"], "invalid --plot marker.txt/sweep.png: marker.txt is a file"),
        (["tiny-model", "--out", "o", "--size", "huge"], "invalid choice"),
        (["toy", "eval", "--shipped", "--direction-out", "d.safetensors"], "invalid --direction-out with --shipped"),
        (["toy", "eval", "--model", "./absent"], "invalid --model './absent': not a toy checkpoint"),
        (["tiny-model", "--out", "o", "--family", "sora"], "invalid choice"),
        (["discover", "--model", "m", "--prompts", "absent.jsonl", "--out", "d.safetensors"], "--prompts"),
        (["demo", "--model", "toy", "--strength", "99"], "invalid --strength 99.0: expected 0.0 to 2.0"),
        (["generate", "--prompt", "x", "--out", "o.mp4", "--strength", "0", "--model", "./absent"],
         "invalid --model './absent': folder not found"),
        (["generate", "--prompt", "x", "--out", "o.mp4", "--strength", "0", "--model", "m", "--step-window", "0.8",
          "0.2"], "--step-window START must be below END"),
    ],
)
def test_bad_input_exits_2(tmp_path, arguments, message):
    (tmp_path / "marker.txt").write_text("a file where a folder is expected")
    result = subprocess.run([sys.executable, "-m", "reins.cli", *arguments], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("arguments", [["toy", "eval", "--model", "./absent"], ["toy", "eval", "--bogus"]])
def test_error_shows_subcommand_usage(tmp_path, arguments):
    result = subprocess.run([sys.executable, "-m", "reins.cli", *arguments],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: reins toy eval"), result.stderr


def test_token_gate_needs_probe_means(tmp_path):
    from dataclasses import replace

    from reins.directions import load_direction, save_direction

    shipped = load_direction(SHIPPED_DIRECTION.parent / "toy.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_direction(bare, shipped.vector, replace(shipped.metadata, probe_safe_mean=None, probe_unsafe_mean=None))
    result = reins("generate", "--model", "toy", "--prompt", "x", "--direction", str(bare), "--strength", "1",
                   "--token-gate", "--out", str(tmp_path / "o.mp4"))
    assert result.returncode == 2
    assert f"invalid --token-gate with --direction {bare}: the file has no distinct safe and unsafe" in result.stderr


def test_generate_rejects_invalid_height(tiny_model_dir, tmp_path):
    result = reins("generate", "--model", str(tiny_model_dir), "--prompt", "x", "--strength", "0",
                   "--height", "36", "--out", str(tmp_path / "o.mp4"))
    assert result.returncode == 2
    assert "--height must be divisible by 16" in result.stderr
    assert "nearest valid value is 32" in result.stderr
