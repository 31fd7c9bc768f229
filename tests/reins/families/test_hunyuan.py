"""HunyuanVideo adapter: input rules, the tiny tokenizer's prompt template, block layout and true guidance calls."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from reins.families.hunyuan import HUNYUAN
from reins.pipelines import GenerationParams, generate
from reins.steering import Steerer, SteeringConfig
from reins.tiny import TINY_MODELS, build_pipeline

DEFAULTS = TINY_MODELS["hunyuan"].defaults["tiny"]


@pytest.fixture(scope="module")
def pipeline():
    pipeline = build_pipeline("hunyuan", size="tiny", seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _params(guidance_scale: float) -> GenerationParams:
    return GenerationParams(prompt="a red car", num_frames=DEFAULTS.num_frames, height=DEFAULTS.height,
                            width=DEFAULTS.width, num_inference_steps=2, guidance_scale=guidance_scale, seed=1)


@pytest.mark.parametrize("frames", [1, 5, 9, 33, 129])
def test_hunyuan_accepts_4k_plus_1_frames(frames):
    assert HUNYUAN.frame_count_error(frames) is None


@pytest.mark.parametrize(("frames", "nearest"), [(2, 1), (8, 9), (128, 129), (130, 129)])
def test_hunyuan_frame_error_names_nearest(frames, nearest):
    message = HUNYUAN.frame_count_error(frames)
    assert f"got {frames}" in message
    assert f"nearest valid value is {nearest}" in message


@pytest.mark.parametrize(("size", "nearest"), [(24, 16), (40, 32), (730, 736)])
def test_hunyuan_size_error_names_nearest(size, nearest):
    assert f"nearest valid value is {nearest}" in HUNYUAN.size_error(size)


def test_hunyuan_real_defaults_are_valid():
    assert (HUNYUAN.default_height, HUNYUAN.default_width, HUNYUAN.default_num_frames) == (720, 1280, 129)
    assert HUNYUAN.frame_count_error(HUNYUAN.default_num_frames) is None
    assert HUNYUAN.size_error(HUNYUAN.default_height) is None
    assert HUNYUAN.size_error(HUNYUAN.default_width) is None


def test_hunyuan_template_prefix_is_crop_start(pipeline):
    prefix = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    assert len(pipeline.tokenizer(prefix).input_ids) == DEFAULT_PROMPT_TEMPLATE["crop_start"]


def test_hunyuan_crop_keeps_whole_prompt(pipeline):
    prompt = "A red car moving left, zebra!"
    templated = pipeline.tokenizer(DEFAULT_PROMPT_TEMPLATE["template"].format(prompt)).input_ids
    alone = pipeline.tokenizer(prompt, add_special_tokens=False).input_ids
    after_crop = templated[DEFAULT_PROMPT_TEMPLATE["crop_start"]:]
    assert after_crop[: len(alone)] == alone
    assert pipeline.tokenizer.convert_ids_to_tokens(after_crop[len(alone):]) == ["<|eot_id|>"]


def test_hunyuan_blocks_are_dual_then_single(pipeline):
    transformer = pipeline.transformer
    blocks = [block for block, _ in HUNYUAN.blocks(transformer)]
    assert blocks == [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert HUNYUAN.depth(transformer) == len(blocks)
    # The default steered block, the middle of the combined depth, is the first single-stream block here.
    steerer = Steerer(pipeline)
    try:
        assert blocks[steerer.block_index] is transformer.single_transformer_blocks[0]
    finally:
        steerer.detach()


@pytest.mark.parametrize("block_index", [0, 3])
def test_hunyuan_steers_either_block_kind(pipeline, block_index):
    plain = generate(pipeline, _params(5.0))
    steerer = Steerer(pipeline, block_index=block_index)
    try:
        direction = np.random.default_rng(0).normal(size=steerer.hidden_size).astype(np.float32)
        steering = SteeringConfig(direction / np.linalg.norm(direction), 2.0, reference_norm=4.0)
        steered = generate(pipeline, _params(5.0), steerer, steering)
    finally:
        steerer.detach()
    assert not np.array_equal(steered, plain)


@pytest.mark.parametrize(("guidance_scale", "calls_per_step"), [(5.0, 2), (1.0, 1)])
def test_hunyuan_true_guidance_is_a_second_call(pipeline, guidance_scale, calls_per_step):
    block, _ = HUNYUAN.blocks(pipeline.transformer)[0]
    batch_sizes = []
    handle = block.register_forward_hook(lambda module, args, output: batch_sizes.append(output[0].shape[0]))
    try:
        generate(pipeline, _params(guidance_scale))
    finally:
        handle.remove()
    assert batch_sizes == [1] * (2 * calls_per_step)
