"""Mochi adapter: input rules against the pipeline and VAE, and guidance batching on the tiny pipeline."""

from __future__ import annotations

import pytest
import torch

from reins.families.mochi import MOCHI
from reins.pipelines import GenerationParams, generate
from reins.tiny import TINY_MODELS, build_pipeline

DEFAULTS = TINY_MODELS["mochi"].defaults["tiny"]


@pytest.fixture(scope="module")
def pipeline():
    pipeline = build_pipeline("mochi", size="tiny", seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _params(guidance_scale: float, num_frames: int = DEFAULTS.num_frames) -> GenerationParams:
    return GenerationParams(prompt="a red car", num_frames=num_frames, height=DEFAULTS.height, width=DEFAULTS.width,
                            num_inference_steps=2, guidance_scale=guidance_scale, seed=1)


@pytest.mark.parametrize("frames", [1, 7, 13, 19, 85, 163])
def test_mochi_accepts_6k_plus_1_frames(frames):
    assert MOCHI.frame_count_error(frames) is None


@pytest.mark.parametrize(("frames", "nearest"), [(2, 1), (5, 7), (10, 7), (11, 13), (84, 85), (162, 163)])
def test_mochi_frame_error_names_nearest(frames, nearest):
    message = MOCHI.frame_count_error(frames)
    assert f"got {frames}" in message
    assert f"nearest valid value is {nearest}" in message


@pytest.mark.parametrize(("size", "nearest"), [(24, 16), (40, 32), (850, 848)])
def test_mochi_size_error_names_nearest(size, nearest):
    assert f"nearest valid value is {nearest}" in MOCHI.size_error(size)


def test_mochi_real_defaults_are_valid():
    assert (MOCHI.default_height, MOCHI.default_width, MOCHI.default_num_frames) == (480, 848, 19)
    assert MOCHI.frame_count_error(MOCHI.default_num_frames) is None
    assert MOCHI.size_error(MOCHI.default_height) is None
    assert MOCHI.size_error(MOCHI.default_width) is None


def test_mochi_valid_frames_decode_exactly(pipeline):
    for frames in (1, 7, 13):
        latents = pipeline.prepare_latents(1, 12, DEFAULTS.height, DEFAULTS.width, frames, torch.float32, "cpu", None)
        with torch.no_grad():
            video = pipeline.vae.decode(latents).sample
        assert video.shape[2] == frames


def test_mochi_generates_requested_frames(pipeline):
    assert generate(pipeline, _params(1.0, num_frames=13)).shape == (13, DEFAULTS.height, DEFAULTS.width, 3)


@pytest.mark.parametrize(("guidance_scale", "rows"), [(5.0, 2), (1.0, 1)])
def test_mochi_guidance_doubles_the_batch(pipeline, guidance_scale, rows):
    block, _ = MOCHI.blocks(pipeline.transformer)[0]
    batch_sizes = []
    handle = block.register_forward_hook(lambda module, args, output: batch_sizes.append(output[0].shape[0]))
    try:
        generate(pipeline, _params(guidance_scale))
    finally:
        handle.remove()
    assert batch_sizes == [rows, rows]
