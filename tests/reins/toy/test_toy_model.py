import json

import numpy as np
import pytest

from reins.cli import TOY_BLOCKS, main
from reins.families import family_for_pipeline, get_family
from reins.pipelines import GenerationParams, generate, load_pipeline
from reins.steering import Steerer, SteeringConfig
from reins.toy.pipeline import CHECKPOINT_DIR, TRAINING_RECORD, is_toy_checkpoint, training_record
from reins.toy.train import TrainingConfig, build_pipeline, train

MAX_CHECKPOINT_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline("toy", device="cpu", dtype="float32")


def _params(seed: int = 0, prompt: str = "a red square moving left") -> GenerationParams:
    return GenerationParams(prompt=prompt, num_frames=3, height=16, width=16, num_inference_steps=8,
                            guidance_scale=4.0, seed=seed)


def test_checkpoint_ships_under_size_limit():
    files = [path for path in CHECKPOINT_DIR.rglob("*") if path.is_file()]
    assert (CHECKPOINT_DIR / "model_index.json").is_file()
    assert sum(path.stat().st_size for path in files) < MAX_CHECKPOINT_BYTES


def test_checkpoint_records_training():
    record = training_record()
    assert record is not None
    assert record["config"] == json.loads(json.dumps(TrainingConfig(**record["config"]).__dict__))
    assert record["steps_done"] > 0
    assert record["seconds"] <= 60 * record["config"]["max_minutes"] + 60
    assert (CHECKPOINT_DIR / TRAINING_RECORD).is_file()


def test_checkpoint_zeroes_later_cross_attention(pipeline):
    text_blocks = training_record()["config"]["text_blocks"]
    for index, block in enumerate(pipeline.transformer.blocks):
        projection = block.attn2.to_out[0]
        zeroed = not projection.weight.any() and not projection.bias.any()
        assert zeroed == (index >= text_blocks), index


def test_training_keeps_later_cross_attention_zero(tmp_path):
    config = TrainingConfig(steps=3, batch_size=4, warmup_steps=1, num_layers=3, text_blocks=1)
    record = train(config, tmp_path / "toy", progress=False)
    assert record["steps_done"] == 3
    trained = load_pipeline(str(tmp_path / "toy"), device="cpu", dtype="float32").transformer
    assert trained.blocks[0].attn2.to_out[0].weight.any()
    for block in trained.blocks[1:]:
        assert not block.attn2.to_out[0].weight.any()
        assert not block.attn2.to_out[0].bias.any()


@pytest.mark.parametrize("text_blocks", [-1, 4])
def test_training_rejects_invalid_text_blocks(text_blocks):
    with pytest.raises(ValueError, match=f"invalid text_blocks {text_blocks}"):
        build_pipeline(TrainingConfig(num_layers=3, text_blocks=text_blocks))


def test_cli_text_blocks_match_depth():
    assert TOY_BLOCKS == TrainingConfig().num_layers


def test_cli_rejects_text_blocks_beyond_depth(capsys):
    with pytest.raises(SystemExit) as error:
        main(["toy", "train", "--text-blocks", "9"])
    assert error.value.code == 2
    message = capsys.readouterr().err
    assert "--text-blocks" in message
    assert "invalid choice: 9" in message


def test_toy_name_and_folder_are_recognised(tmp_path):
    assert is_toy_checkpoint("toy")
    assert is_toy_checkpoint(CHECKPOINT_DIR)
    assert not is_toy_checkpoint(tmp_path)


def test_loaded_toy_uses_toy_family(pipeline):
    family = family_for_pipeline(pipeline)
    assert family is get_family("toy")
    assert family.hidden_size(pipeline.transformer) == 64
    assert family.depth(pipeline.transformer) == 8


def test_generation_is_deterministic(pipeline):
    first = generate(pipeline, _params(seed=3))
    second = generate(pipeline, _params(seed=3))
    assert first.shape == (3, 16, 16, 3)
    assert first.dtype == np.uint8
    assert np.array_equal(first, second)


def test_zero_strength_is_bit_identical(pipeline):
    steerer = Steerer(pipeline, block_index=4)
    try:
        direction = np.zeros(64, dtype=np.float32)
        direction[0] = 1.0
        plain = generate(pipeline, _params(seed=1))
        steered = generate(pipeline, _params(seed=1), steerer, SteeringConfig(direction, 0.0, 1.0))
        moved = generate(pipeline, _params(seed=1), steerer, SteeringConfig(direction, 4.0, 10.0))
    finally:
        steerer.detach()
    assert np.array_equal(plain, steered)
    assert not np.array_equal(plain, moved)


def test_steering_hook_sees_both_branches(pipeline):
    steerer = Steerer(pipeline, block_index=0)
    try:
        direction = np.ones(64, dtype=np.float32) / 8.0
        generate(pipeline, _params(), steerer, SteeringConfig(direction, 1.0, 1.0, step_window=(0.0, 0.5)))
        both = steerer.calls_steered
        generate(pipeline, _params(), steerer,
                 SteeringConfig(direction, 1.0, 1.0, step_window=(0.0, 0.5), branch_mode="cond"))
        cond_only = steerer.calls_steered
    finally:
        steerer.detach()
    # 8 steps, the first half steered: 4 steps with a conditional and an unconditional call each.
    assert both == 8
    assert cond_only == 4
