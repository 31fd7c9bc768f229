"""Steering hooks on the tiny Wan pipeline, loaded through from_pretrained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reins.directions import load_direction
from reins.pipelines import GenerationParams, NonFiniteLatentsError, generate, load_pipeline
from reins.steering import Steerer, SteeringConfig
from tests.conftest import SHIPPED_DIRECTION

PARAMS = GenerationParams(prompt="a red car moving left", num_frames=9, height=32, width=32, num_inference_steps=4)


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def unsteered(pipeline):
    return generate(pipeline, PARAMS)


@pytest.fixture
def steerer(pipeline):
    attached = Steerer(pipeline, block_index=2)
    yield attached
    attached.detach()


def config(strength: float, **fields) -> SteeringConfig:
    direction = load_direction(SHIPPED_DIRECTION)
    return SteeringConfig(direction.vector, strength, direction.metadata.reference_norm, **fields)


def test_strength_zero_is_bit_identical(pipeline, steerer, unsteered):
    frames = generate(pipeline, PARAMS, steerer, config(0.0))
    assert np.array_equal(frames, unsteered)
    assert steerer.calls_steered == 0


def test_steering_changes_output(pipeline, steerer, unsteered):
    frames = generate(pipeline, PARAMS, steerer, config(1.0))
    assert not np.array_equal(frames, unsteered)
    assert np.abs(frames.astype(int) - unsteered).mean() > 0.5


def test_default_window_is_first_half_both_branches(pipeline, steerer):
    generate(pipeline, PARAMS, steerer, config(1.0))
    # 4 steps, window [0, 0.5): steps 0 and 1, each with a conditional and an unconditional call.
    assert steerer.calls_steered == 4


def test_cond_mode_skips_unconditional_calls(pipeline, steerer):
    generate(pipeline, PARAMS, steerer, config(1.0, branch_mode="cond"))
    assert steerer.calls_steered == 2


def test_full_window_steers_every_step(pipeline, steerer):
    generate(pipeline, PARAMS, steerer, config(1.0, step_window=(0.0, 1.0)))
    assert steerer.calls_steered == 8


def test_without_guidance_steering_still_applies(pipeline, steerer):
    params = GenerationParams(**{**PARAMS.__dict__, "guidance_scale": 1.0})
    generate(pipeline, params, steerer, config(1.0))
    assert steerer.calls_steered == 2


def test_added_vector_matches_formula(pipeline, steerer):
    block = pipeline.transformer.blocks[2]
    captured = {}

    def record(module, args, output):
        captured.setdefault("outputs", []).append(output.detach().clone())

    # A torch forward hook receives the block's output after the diffusers hook chain has run.
    handle = block.register_forward_hook(record)
    try:
        generate(pipeline, PARAMS, steerer, config(0.0))
        plain = captured.pop("outputs")[0]
        generate(pipeline, PARAMS, steerer, config(0.5))
        steered = captured.pop("outputs")[0]
    finally:
        handle.remove()
    direction = load_direction(SHIPPED_DIRECTION)
    expected = torch.from_numpy(direction.vector) * 0.5 * direction.metadata.reference_norm
    assert torch.allclose(steered - plain, expected.expand_as(plain), atol=1e-5)


def test_failure_mid_denoise_resets_state(pipeline, steerer, unsteered):
    with pytest.raises(NonFiniteLatentsError):
        generate(pipeline, PARAMS, steerer, config(1e30))
    assert not steerer.active
    assert np.array_equal(generate(pipeline, PARAMS, steerer, None), unsteered)


def test_exception_in_step_callback_resets_state(pipeline, steerer, unsteered):
    def fail_at_step_one(step_index, num_steps):
        if step_index == 1:
            raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        generate(pipeline, PARAMS, steerer, config(1.0), on_step=fail_at_step_one)
    assert not steerer.active
    assert np.array_equal(generate(pipeline, PARAMS, steerer, config(0.0)), unsteered)


def test_detach_restores_pipeline(pipeline, unsteered):
    block = pipeline.transformer.blocks[2]
    steerer = Steerer(pipeline, block_index=2)
    generate(pipeline, PARAMS, steerer, config(1.0))
    steerer.detach()
    assert block._diffusers_hook.get_hook("reins_steering") is None
    assert np.array_equal(generate(pipeline, PARAMS), unsteered)


def test_second_attach_on_same_block_is_rejected(pipeline, steerer):
    with pytest.raises(ValueError, match="already exists"):
        Steerer(pipeline, block_index=2)


def test_default_block_is_half_depth(pipeline):
    steerer = Steerer(pipeline)
    try:
        assert steerer.block_index == len(pipeline.transformer.blocks) // 2
    finally:
        steerer.detach()


def test_wrong_direction_size_is_rejected(pipeline, steerer):
    wrong = SteeringConfig(np.ones(7, dtype=np.float32) / np.sqrt(7), 1.0, 1.0)
    with pytest.raises(ValueError, match="hidden size is 24"):
        with steerer.steer(wrong):
            pass


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"strength": float("nan")}, "strength must be finite"),
        ({"reference_norm": 0.0}, "reference_norm"),
        ({"step_window": (0.6, 0.4)}, "step_window"),
        ({"branch_mode": "uncond"}, "branch_mode"),
    ],
)
def test_invalid_config_is_rejected(fields, message):
    values = {"direction": np.ones(24, dtype=np.float32), "strength": 1.0, "reference_norm": 1.0, **fields}
    with pytest.raises(ValueError, match=message):
        SteeringConfig(**values)


def test_bfloat16_pipeline_is_steered(tiny_model_dir):
    pipeline = load_pipeline(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    steerer = Steerer(pipeline, block_index=2)
    plain = generate(pipeline, PARAMS, steerer, config(0.0))
    steered = generate(pipeline, PARAMS, steerer, config(1.0))
    assert steerer.calls_steered == 4
    assert not np.array_equal(plain, steered)


def capture_steered_block(pipeline, steerer, steering):
    """Return the steered block's first output (conditional call at step 0) after the hook."""
    outputs = []
    handle = pipeline.transformer.blocks[2].register_forward_hook(
        lambda module, args, output: outputs.append(output.detach().clone())
    )
    try:
        generate(pipeline, PARAMS, steerer, steering)
    finally:
        handle.remove()
    return outputs[0]


def test_absolute_strength_ignores_reference_norm(pipeline, steerer):
    plain = capture_steered_block(pipeline, steerer, config(0.0))
    steered = capture_steered_block(pipeline, steerer, config(0.5, strength_mode="absolute"))
    added = (steered - plain)[0, 0]
    assert torch.isclose(added.norm(), torch.tensor(0.5), atol=1e-5)


def test_preserve_norm_keeps_token_norms(pipeline, steerer):
    plain = capture_steered_block(pipeline, steerer, config(0.0))
    steered = capture_steered_block(pipeline, steerer, config(1.0, preserve_norm=True))
    assert torch.allclose(steered.norm(dim=-1), plain.norm(dim=-1), rtol=1e-5)
    assert not torch.allclose(steered, plain)


def test_probe_score_is_independent_of_strength(pipeline, steerer):
    direction = load_direction(SHIPPED_DIRECTION)
    scores = []
    for strength in (0.0, 1.0):
        generate(pipeline, PARAMS, steerer, config(strength, probe_reference=direction.probe_reference))
        scores.append(steerer.probe_scores())
    assert scores[0] == scores[1]
    assert len(scores[0]) == 1


def test_adaptive_scales_by_probe_score(pipeline, steerer):
    direction = load_direction(SHIPPED_DIRECTION)
    safe, unsafe = direction.probe_reference
    plain = capture_steered_block(pipeline, steerer, config(0.0))
    projection = float((plain[0].float() @ torch.from_numpy(direction.vector)).mean())
    expected_factor = min(max((safe - projection) / (safe - unsafe), 0.0), 1.0)
    fixed = capture_steered_block(pipeline, steerer, config(1.0))
    adaptive = capture_steered_block(pipeline, steerer, config(1.0, adaptive=True,
                                                               probe_reference=direction.probe_reference))
    assert torch.allclose(adaptive - plain, (fixed - plain) * expected_factor, atol=1e-5)


def test_adaptive_needs_probe_reference():
    with pytest.raises(ValueError, match="probe_reference"):
        SteeringConfig(np.ones(24, dtype=np.float32), 1.0, 1.0, adaptive=True)


def _token_gate(plain: torch.Tensor, vector: np.ndarray, probe_reference: tuple[float, float]) -> torch.Tensor:
    safe, unsafe = probe_reference
    scores = (safe - plain.float() @ torch.from_numpy(vector)) / (safe - unsafe)
    return scores.clamp(0.0, 1.0)


def test_token_gate_scales_per_token(pipeline, steerer):
    direction = load_direction(SHIPPED_DIRECTION)
    plain = capture_steered_block(pipeline, steerer, config(0.0))
    fixed = capture_steered_block(pipeline, steerer, config(1.0))
    gated = capture_steered_block(pipeline, steerer, config(1.0, token_gate=True,
                                                            probe_reference=direction.probe_reference))
    gate = _token_gate(plain, direction.vector, direction.probe_reference)
    # Tokens differ in score, so a per-sample factor could not pass this.
    assert float(gate.max() - gate.min()) > 0.1
    assert torch.allclose(gated - plain, (fixed - plain) * gate[..., None], atol=1e-5)


def test_token_gate_keeps_safe_tokens(pipeline, steerer):
    direction = load_direction(SHIPPED_DIRECTION)
    safe, unsafe = direction.probe_reference
    plain = capture_steered_block(pipeline, steerer, config(0.0))
    # Move the reference so that about half of the tokens score at or below 0.
    projections = plain.float() @ torch.from_numpy(direction.vector)
    middle = float(projections.median())
    reference = (middle, middle + (unsafe - safe))
    gated = capture_steered_block(pipeline, steerer, config(1.0, token_gate=True, probe_reference=reference))
    closed = _token_gate(plain, direction.vector, reference) == 0
    assert bool(closed.any())
    assert not bool(closed.all())
    assert torch.equal(gated[closed], plain[closed])
    assert not torch.equal(gated[~closed], plain[~closed])


def test_probe_direction_moves_only_gate(pipeline, steerer):
    direction = load_direction(SHIPPED_DIRECTION)
    reference = direction.probe_reference
    vector = np.random.default_rng(0).standard_normal(direction.vector.shape[0]).astype(np.float32)
    vector /= np.linalg.norm(vector)
    plain = capture_steered_block(pipeline, steerer, config(0.0))
    random_push = capture_steered_block(pipeline, steerer, SteeringConfig(
        vector, 1.0, direction.metadata.reference_norm, token_gate=True, probe_reference=reference,
        probe_direction=direction.vector))
    gate = _token_gate(plain, direction.vector, reference)
    expected = gate[..., None] * direction.metadata.reference_norm * torch.from_numpy(vector)
    assert torch.allclose(random_push - plain, expected, atol=1e-5)


def test_token_gate_checks_inputs():
    vector = np.ones(24, dtype=np.float32)
    with pytest.raises(ValueError, match="probe_reference"):
        SteeringConfig(vector, 1.0, 1.0, token_gate=True)
    with pytest.raises(ValueError, match="probe_direction has shape"):
        SteeringConfig(vector, 1.0, 1.0, probe_direction=np.ones(8, dtype=np.float32))
