import json

import numpy as np
import pytest

from reins.directions import load_direction
from reins.discovery import class_mean_direction, discover, projection_accuracy, read_prompts
from reins.pipelines import GenerationParams, load_pipeline
from tests.conftest import REPO_ROOT


def test_class_mean_recovers_planted_direction():
    rng = np.random.default_rng(0)
    planted = rng.normal(size=64)
    planted /= np.linalg.norm(planted)
    labels = rng.integers(0, 2, size=2000)
    # Unsafe samples (label 1) sit at -planted, safe ones at +planted.
    features = rng.normal(size=(2000, 64)) + np.where(labels[:, None] == 1, -2.0, 2.0) * planted
    direction = class_mean_direction(features, labels)
    assert direction @ planted > 0.99
    assert projection_accuracy(features, labels, direction) > 0.95


def test_identical_classes_are_rejected():
    with pytest.raises(ValueError, match="identical"):
        class_mean_direction(np.ones((4, 3)), np.array([0, 1, 0, 1]))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "invalid JSON"),
        ('{"prompt": "x", "label": "maybe"}', '"label" must be'),
        ('{"label": "safe"}', '"prompt"'),
    ],
)
def test_bad_prompt_line_names_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "label": "safe"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        read_prompts(path)
    assert ":2:" in str(error.value)


def test_one_class_only_is_rejected(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a", "label": "safe"}) + "\n")
    with pytest.raises(ValueError, match="at least one safe and one unsafe"):
        read_prompts(path)


def test_discover_reproduces_shipped_direction(tiny_model_dir, tmp_path):
    pipeline = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    prompts = read_prompts(REPO_ROOT / "directions" / "tiny-wan.prompts.jsonl")
    params = GenerationParams(prompt="", num_frames=9, height=32, width=32, num_inference_steps=4)
    written = discover(pipeline, prompts, params, model_id="tiny", out=tmp_path / "d.safetensors")
    shipped = load_direction(REPO_ROOT / "directions" / "tiny-wan.safetensors")
    assert written.metadata.block_index == 2
    assert written.metadata.num_safe == 8 and written.metadata.num_unsafe == 8
    assert written.metadata.sha256 == shipped.metadata.sha256
    # The capture hooks are removed afterwards.
    assert all(block._diffusers_hook.get_hook("reins_capture") is None for block in pipeline.transformer.blocks)
