"""Every tiny pipeline: loads through from_pretrained and obeys the steering contract of its family's adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reins.families import family_for_pipeline, get_family
from reins.pipelines import GenerationParams, generate, load_pipeline
from reins.steering import Steerer, SteeringConfig
from reins.tiny import TINY_MODELS, read_tiny_marker, save_tiny_model

NAMES = sorted(TINY_MODELS)


@pytest.fixture(scope="module", params=NAMES)
def loaded(request, tmp_path_factory):
    name = request.param
    folder = save_tiny_model(tmp_path_factory.mktemp("tiny") / name, family=name)
    pipeline = load_pipeline(str(folder), device="cpu", dtype="float32")
    defaults = TINY_MODELS[name].defaults["tiny"]
    family = get_family(TINY_MODELS[name].family)
    image = None
    if family.image_input == "required":
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (defaults.height, defaults.width, 3),
                                                                   dtype=np.uint8))
    params = GenerationParams(prompt="a red car moving left", num_frames=defaults.num_frames,
                              height=defaults.height, width=defaults.width,
                              num_inference_steps=defaults.num_inference_steps, guidance_scale=5.0, seed=3)
    return name, folder, pipeline, family, params, image


def unit_direction(size: int, seed: int = 0) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=size).astype(np.float32)
    return vector / np.linalg.norm(vector)


def config(steerer: Steerer, strength, **fields) -> SteeringConfig:
    return SteeringConfig(unit_direction(steerer.hidden_size), strength, reference_norm=4.0, **fields)


def test_loads_with_its_family(loaded):
    name, folder, pipeline, family, _, _ = loaded
    assert read_tiny_marker(folder)["family"] == family.name
    assert family_for_pipeline(pipeline) is family
    assert family.frame_count_error(TINY_MODELS[name].defaults["tiny"].num_frames) is None
    assert family.size_error(TINY_MODELS[name].defaults["tiny"].height) is None


def test_strength_zero_is_bit_identical(loaded):
    _, _, pipeline, family, params, image = loaded
    plain = generate(pipeline, params, image=image)
    steerer = Steerer(pipeline)
    try:
        assert np.array_equal(generate(pipeline, params, steerer, config(steerer, 0.0), image=image), plain)
        steered = generate(pipeline, params, steerer, config(steerer, 2.0), image=image)
        assert steerer.calls_steered > 0
        assert not np.array_equal(steered, plain)
    finally:
        steerer.detach()
    assert np.array_equal(generate(pipeline, params, image=image), plain)


def test_every_transformer_is_steered(loaded):
    _, _, pipeline, family, params, image = loaded
    steerer = Steerer(pipeline)
    try:
        generate(pipeline, params, steerer, config(steerer, 1.0, step_window=(0.0, 1.0)), image=image)
        assert len(steerer.hooks) == len(family.transformers(pipeline))
        assert all(hook.calls_steered > 0 for hook in steerer.hooks)
    finally:
        steerer.detach()


def _block_outputs_at_first_step(pipeline, steerer, params, image, steering):
    """Return the steered block's output rows at denoising step 0, split into (conditional, unconditional)."""
    block, index = steerer.family.blocks(steerer.transformers[0])[steerer.block_index]
    calls = []

    def record(module, args, kwargs, output):
        if steerer.clock.step_index == 0:
            hidden = output if index is None else output[index]
            calls.append(hidden.detach().clone())

    handle = block.register_forward_hook(record, with_kwargs=True)
    try:
        generate(pipeline, params, steerer, steering, image=image)
    finally:
        handle.remove()
    if steerer.family.guidance_layout == "batched_uncond_first":
        (both,) = calls
        half = both.shape[0] // 2
        return both[half:], both[:half]
    cond, uncond = calls
    return cond, uncond


def test_cond_mode_leaves_uncond_untouched(loaded):
    _, _, pipeline, family, params, image = loaded
    steerer = Steerer(pipeline)
    try:
        plain_cond, plain_uncond = _block_outputs_at_first_step(pipeline, steerer, params, image, config(steerer, 0.0))
        cond, uncond = _block_outputs_at_first_step(
            pipeline, steerer, params, image, config(steerer, 1.0, branch_mode="cond")
        )
        assert torch.equal(uncond, plain_uncond)
        assert not torch.equal(cond, plain_cond)
        both_cond, both_uncond = _block_outputs_at_first_step(pipeline, steerer, params, image, config(steerer, 1.0))
        assert not torch.equal(both_uncond, plain_uncond)
    finally:
        steerer.detach()


def test_steering_without_guidance(loaded):
    _, _, pipeline, family, params, image = loaded
    unguided = GenerationParams(**{**params.__dict__, "guidance_scale": 1.0})
    steerer = Steerer(pipeline)
    try:
        plain = generate(pipeline, unguided, steerer, config(steerer, 0.0), image=image)
        steered = generate(pipeline, unguided, steerer, config(steerer, 2.0), image=image)
        assert steerer.calls_steered > 0
        assert not np.array_equal(plain, steered)
    finally:
        steerer.detach()


def test_per_sample_strength_matches_single_runs(loaded):
    _, _, pipeline, family, params, image = loaded
    second = GenerationParams(**{**params.__dict__, "prompt": "a calm garden with a flower", "seed": 11})
    steerer = Steerer(pipeline)
    try:
        alone = [
            generate(pipeline, params, steerer, config(steerer, 0.0), image=image),
            generate(pipeline, second, steerer, config(steerer, 1.5), image=image),
        ]
        images = None if image is None else [image, image]
        together = generate(pipeline, [params, second], steerer, config(steerer, (0.0, 1.5)),
                            image=images if images is None else image)
    finally:
        steerer.detach()
    for index in range(2):
        difference = np.abs(together[index].astype(int) - alone[index].astype(int))
        # Batched kernels round differently from single ones, so a uint8 frame may move by a step or two.
        assert difference.max() <= 3, f"sample {index}: max difference {difference.max()}"
        assert difference.mean() < 0.05
