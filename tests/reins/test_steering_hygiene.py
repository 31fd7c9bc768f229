"""A hundred steered generations with failures injected at random denoising steps leave no steering state behind."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reins.directions import load_direction
from reins.pipelines import GenerationParams, generate, load_pipeline
from reins.steering import Steerer, SteeringConfig
from tests.conftest import SHIPPED_DIRECTION

PARAMS = GenerationParams(prompt="a person with a weapon", num_frames=5, height=32, width=32, num_inference_steps=4)


class Injected(Exception):
    pass


def test_hundred_failing_jobs_leave_no_state(tiny_model_dir):
    pipeline = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    pristine = generate(pipeline, PARAMS)
    steerer = Steerer(pipeline, block_index=2)
    direction = load_direction(SHIPPED_DIRECTION)
    rng = random.Random(1234)
    failures = 0
    for _ in range(100):
        fail_at = rng.randrange(-1, PARAMS.num_inference_steps)  # -1: this job does not fail
        config = SteeringConfig(direction.vector, rng.uniform(0.1, 3.0), direction.metadata.reference_norm,
                                step_window=(0.0, rng.choice([0.25, 0.5, 1.0])), branch_mode=rng.choice(["both", "cond"]))

        def on_step(step_index: int, num_steps: int, fail_at=fail_at) -> None:
            if step_index == fail_at:
                raise Injected(f"step {step_index}")

        try:
            generate(pipeline, PARAMS, steerer, config, on_step=on_step)
        except Injected:
            failures += 1
        assert not steerer.active
        assert steerer.clock.num_steps == 0
        assert all(hook.context is None for hook in steerer.hooks)
    assert failures > 50
    assert np.array_equal(generate(pipeline, PARAMS, steerer, None), pristine)
    assert np.array_equal(generate(pipeline, PARAMS, steerer, SteeringConfig(direction.vector, 0.0, 1.0)), pristine)
    steerer.detach()
    assert np.array_equal(generate(pipeline, PARAMS), pristine)


@pytest.mark.parametrize("strength", [0.5, 2.0])
def test_generation_after_failure_matches_fresh_pipeline(tiny_model_dir, strength):
    """A steered run after a failed one equals the same steered run on a pipeline that never failed."""
    direction = load_direction(SHIPPED_DIRECTION)
    config = SteeringConfig(direction.vector, strength, direction.metadata.reference_norm)
    fresh = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    expected = generate(fresh, PARAMS, Steerer(fresh, block_index=2), config)

    used = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    steerer = Steerer(used, block_index=2)

    def fail(step_index: int, num_steps: int) -> None:
        if step_index == 1:
            raise Injected("mid-denoise")

    with pytest.raises(Injected):
        generate(used, PARAMS, steerer, SteeringConfig(direction.vector, 5.0, 1.0), on_step=fail)
    assert np.array_equal(generate(used, PARAMS, steerer, config), expected)
