"""LTX-Video adapters: frame and size rules, and their agreement with the diffusers pipelines they describe."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import LTXImageToVideoPipeline, LTXPipeline
from PIL import Image

from reins.families import family_for_pipeline
from reins.families.ltx import LTX, LTX_I2V
from reins.tiny.ltx import _components, build_ltx, build_ltx_i2v

FAMILIES = [LTX, LTX_I2V]


@pytest.fixture(scope="module")
def tiny_ltx():
    pipeline = build_ltx("tiny", 0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
@pytest.mark.parametrize("frames", [1, 9, 17, 121, 161])
def test_ltx_accepts_8k_plus_1_frames(family, frames):
    assert family.frame_count_error(frames) is None


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
@pytest.mark.parametrize(("frames", "nearest"), [(2, 1), (8, 9), (12, 9), (13, 9), (14, 17), (160, 161)])
def test_ltx_frame_error_names_nearest(family, frames, nearest):
    message = family.frame_count_error(frames)
    assert f"must be 8k+1 for {family.name} models" in message
    assert f"nearest valid value is {nearest}" in message


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
@pytest.mark.parametrize(("size", "nearest"), [(48, 32), (50, 64), (500, 512), (700, 704), (720, 704)])
def test_ltx_size_error_names_nearest(family, size, nearest):
    assert f"nearest valid value is {nearest}" in family.size_error(size)


def test_ltx_size_below_minimum():
    assert LTX.size_error(16) == "must be at least 32, got 16"
    assert LTX.size_error(32) is None


@pytest.mark.parametrize("pipeline_class", [LTXPipeline, LTXImageToVideoPipeline])
def test_ltx_defaults_match_pipeline_signature(pipeline_class):
    family = LTX if pipeline_class is LTXPipeline else LTX_I2V
    parameters = inspect.signature(pipeline_class.__call__).parameters
    assert parameters["max_sequence_length"].default == family.text_token_limit
    assert parameters["height"].default == family.default_height
    assert parameters["width"].default == family.default_width
    assert parameters["num_frames"].default == family.default_num_frames
    assert family.guidance_argument in parameters


def test_ltx_size_rule_matches_check_inputs(tiny_ltx):
    for size in range(32, 200, 4):
        try:
            tiny_ltx.check_inputs(prompt="a car", height=size, width=size)
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == (LTX.size_error(size) is None), f"size {size}"


def test_ltx_tiny_vae_compresses_like_released(tiny_ltx):
    spatial = tiny_ltx.vae_spatial_compression_ratio * tiny_ltx.transformer_spatial_patch_size
    assert spatial == LTX.spatial_multiple
    assert tiny_ltx.vae_temporal_compression_ratio * tiny_ltx.transformer_temporal_patch_size == LTX.frame_multiple


@pytest.mark.parametrize(("requested", "produced"), [(9, 9), (12, 9), (16, 9), (17, 17)])
def test_ltx_rounds_invalid_frames_down(tiny_ltx, requested, produced):
    frames = tiny_ltx(prompt="a car", height=32, width=32, num_frames=requested, num_inference_steps=2,
                      guidance_scale=1.0, output_type="np").frames
    assert frames.shape[1] == produced


def test_ltx_guidance_threshold_matches_pipeline(tiny_ltx):
    for scale in (0.5, 1.0, 1.01, 3.0):
        tiny_ltx._guidance_scale = scale
        assert tiny_ltx.do_classifier_free_guidance == LTX.uses_guidance(scale), f"guidance_scale {scale}"


def test_ltx_hidden_size_is_block_output_width(tiny_ltx):
    widths = []
    block = LTX.blocks(tiny_ltx.transformer)[0][0]
    handle = block.register_forward_hook(lambda module, args, output: widths.append(output.shape[-1]))
    try:
        tiny_ltx(prompt="a car", height=32, width=32, num_frames=9, num_inference_steps=2, output_type="np")
    finally:
        handle.remove()
    assert widths
    assert set(widths) == {LTX.hidden_size(tiny_ltx.transformer)}


def test_ltx_adapters_detected_from_pipelines():
    assert family_for_pipeline(build_ltx("tiny", 0)) is LTX
    assert family_for_pipeline(build_ltx_i2v("tiny", 0)) is LTX_I2V


def test_ltx_same_seed_same_weights():
    first = build_ltx("tiny", 5).transformer.state_dict()
    second = build_ltx("tiny", 5).transformer.state_dict()
    other = build_ltx("tiny", 6).transformer.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


@pytest.mark.xfail(raises=TypeError, strict=True,
                   reason="diffusers 0.42.1 draws the decoder noise with torch.randn, which takes one generator")
def test_ltx_i2v_batch_with_timestep_conditioned_vae():
    # When this passes, diffusers has fixed the bug and the NOTE on LTX_I2V in reins/families/ltx.py can go.
    pipeline = LTXImageToVideoPipeline(**_components("tiny", 0, timestep_conditioning=True))
    pipeline.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    pipeline(image=[image, image], prompt=["a car", "a dog"], height=32, width=32, num_frames=9,
             num_inference_steps=2, output_type="np",
             generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
