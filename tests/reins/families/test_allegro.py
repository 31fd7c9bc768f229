"""Allegro adapter: the frame rule against the pipeline and VAE, decoding after loading, and guidance batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reins.families import family_for_pipeline
from reins.families.allegro import ALLEGRO, latent_frame_count
from reins.pipelines import GenerationParams, generate, load_pipeline
from reins.tiny import TINY_MODELS, build_pipeline, save_tiny_model

DEFAULTS = TINY_MODELS["allegro"].defaults["tiny"]


@pytest.fixture(scope="module")
def pipeline():
    pipeline = build_pipeline("allegro", size="tiny", seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _params(guidance_scale: float, num_frames: int = DEFAULTS.num_frames) -> GenerationParams:
    return GenerationParams(prompt="a red car", num_frames=num_frames, height=DEFAULTS.height, width=DEFAULTS.width,
                            num_inference_steps=2, guidance_scale=guidance_scale, seed=1)


@pytest.mark.parametrize("frames", [19, 21, 22, 24, 40, 56, 72, 85, 88])
def test_allegro_accepts_whole_tile_frames(frames):
    assert ALLEGRO.frame_count_error(frames) is None


@pytest.mark.parametrize(
    ("frames", "nearest"), [(1, 19), (17, 19), (20, 19), (23, 22), (25, 24), (81, 83), (87, 86), (89, 88)]
)
def test_allegro_frame_error_names_nearest(frames, nearest):
    message = ALLEGRO.frame_count_error(frames)
    assert f"got {frames}" in message
    assert f"nearest valid value is {nearest}" in message


def test_allegro_frame_rule_matches_pipeline_and_vae(pipeline):
    vae = pipeline.vae
    temporal = vae.config.temporal_compression_ratio
    tile_frames, tile_stride = vae.kernel[0] // temporal, vae.stride[0] // temporal
    for frames in range(1, 100):
        latents = pipeline.prepare_latents(1, 4, frames, DEFAULTS.height, DEFAULTS.width, torch.float32, "cpu", None)
        assert latents.shape[2] == latent_frame_count(frames)
        whole_tiles = latents.shape[2] >= tile_frames and (latents.shape[2] - tile_frames) % tile_stride == 0
        assert (ALLEGRO.frame_count_error(frames) is None) == whole_tiles, f"{frames} frames"


def test_allegro_real_defaults_are_valid():
    assert (ALLEGRO.default_height, ALLEGRO.default_width, ALLEGRO.default_num_frames) == (720, 1280, 88)
    assert ALLEGRO.frame_count_error(ALLEGRO.default_num_frames) is None
    assert ALLEGRO.size_error(ALLEGRO.default_height) is None
    assert ALLEGRO.size_error(ALLEGRO.default_width) is None
    assert "nearest valid value is 32" in ALLEGRO.size_error(40)


def test_allegro_loaded_pipeline_decodes_every_frame(tmp_path):
    folder = save_tiny_model(tmp_path / "allegro", family="allegro")
    pipeline = load_pipeline(str(folder), device="cpu", dtype="float32")
    assert family_for_pipeline(pipeline) is ALLEGRO
    assert pipeline.vae.use_tiling
    assert pipeline.vae.use_slicing
    frames = generate(pipeline, [_params(5.0, num_frames=19), _params(5.0, num_frames=19)])
    assert frames.shape == (2, 19, DEFAULTS.height, DEFAULTS.width, 3)
    # A frame outside every decoding tile stays at the VAE's zero output, one flat grey.
    spread = frames.reshape(2, 19, -1).std(axis=-1)
    assert np.all(spread > 0)


@pytest.mark.parametrize(("guidance_scale", "rows"), [(5.0, 2), (1.0, 1)])
def test_allegro_guidance_doubles_the_batch(pipeline, guidance_scale, rows):
    block, _ = ALLEGRO.blocks(pipeline.transformer)[0]
    batch_sizes = []
    handle = block.register_forward_hook(lambda module, args, output: batch_sizes.append(output.shape[0]))
    try:
        generate(pipeline, _params(guidance_scale))
    finally:
        handle.remove()
    assert batch_sizes == [rows, rows]
