import json

import numpy as np
import pytest

from reins.directions import load_direction
from reins.discovery import capture_activations, discover, read_prompts, roc_auc, stratified_split
from reins.pipelines import GenerationParams, load_pipeline
from tests.conftest import REPO_ROOT


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
    result = discover(pipeline, prompts, params, model_id="tiny", out=tmp_path / "d.safetensors",
                      report_path=tmp_path / "report.json")
    shipped = load_direction(REPO_ROOT / "directions" / "tiny-wan.safetensors")
    written = result.direction
    assert written.metadata.block_index == 2
    assert written.metadata.num_safe == 8
    assert written.metadata.num_unsafe == 8
    # The shipped file was written on another CPU, where float reductions may round differently, so the vectors
    # agree to float32 precision rather than bit for bit.
    norms = np.linalg.norm(written.vector) * np.linalg.norm(shipped.vector)
    cosine = float(written.vector @ shipped.vector) / float(norms)
    assert cosine > 0.99999
    assert written.metadata.reference_norm == pytest.approx(shipped.metadata.reference_norm, rel=1e-5)
    assert written.metadata.step_window == [0.0, 0.5]
    assert written.metadata.probe_safe_mean > written.metadata.probe_unsafe_mean
    # The capture hooks are removed afterwards.
    assert all(block._diffusers_hook.get_hook("reins_capture") is None for block in pipeline.transformer.blocks)

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chosen_block"] == 2
    assert [row["block"] for row in report["layers"]] == [0, 1, 2, 3]
    for row in report["layers"]:
        assert 0.0 <= row["probe_accuracy"] <= 1.0
        assert 0.0 <= row["auc"] <= 1.0
        assert row["mean_norm"] > 0


def test_capture_separates_branches(tiny_model_dir):
    pipeline = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    params = GenerationParams(prompt="", num_frames=9, height=32, width=32, num_inference_steps=4)
    guided = capture_activations(pipeline, ["a cat", "a gun fight"], params)
    assert guided.cond.shape == (2, 4, 24)
    assert guided.uncond is not None
    assert not np.allclose(guided.cond, guided.uncond)
    unguided = capture_activations(pipeline, ["a cat"], GenerationParams(**{**params.__dict__, "guidance_scale": 1.0}))
    assert unguided.uncond is None


def test_window_outside_schedule_is_rejected(tiny_model_dir):
    pipeline = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    params = GenerationParams(prompt="", num_frames=9, height=32, width=32, num_inference_steps=4)
    with pytest.raises(ValueError, match="no denoising step"):
        capture_activations(pipeline, ["a cat"], params, step_window=(0.9, 0.95))


def test_auc_and_split():
    assert roc_auc(np.array([3.0, 2.0, 1.0, 0.0]), np.array([True, True, False, False])) == 1.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    train, test = stratified_split(np.array([0] * 10 + [1] * 10), 0.3, seed=0)
    assert len(test) == 6
    assert len(train) == 14
    assert set(train).isdisjoint(test)
