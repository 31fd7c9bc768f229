"""The shipped toy direction, its manifest entry, its evaluation report and the demo's configuration agree."""

import json

from app.config import load_config
from reins.demo import DIRECTIONS, write_demo_config
from reins.directions import load_direction


def _entry() -> dict:
    return json.loads((DIRECTIONS / "manifest.json").read_text())["toy.safetensors"]


def test_manifest_matches_report():
    entry = _entry()
    report = json.loads((DIRECTIONS / entry["report"]).read_text())
    direction = load_direction(DIRECTIONS / "toy.safetensors")
    assert direction.metadata.sha256 == entry["sha256"] == report["direction_sha256"]
    assert direction.metadata.block_index == entry["block_index"] == report["recommended_block"]
    assert entry["strength"] == report["recommended_strength"]
    assert entry["steering_step_window"] == report["recommended_step_window"]
    assert entry["token_gate"] == report["recommended_token_gate"]
    assert entry["adaptive_strength"] == report["recommended_adaptive_strength"]
    assert entry["adaptive_step_window"] == report["recommended_adaptive_step_window"]
    assert entry["generation"]["num_inference_steps"] == report["config"]["num_inference_steps"]
    assert entry["generation"]["guidance_scale"] == report["config"]["guidance_scale"]


def test_demo_section_matches_manifest(tmp_path):
    entry = _entry()
    config_path, _, _ = write_demo_config(tmp_path, None, DIRECTIONS / "toy.safetensors")
    model = load_config(config_path).models["toy"]
    assert list(model.step_window) == entry["steering_step_window"]
    assert model.token_gate == entry["token_gate"]
    assert model.default_inference_steps == entry["generation"]["num_inference_steps"]
    assert model.default_guidance_scale == entry["generation"]["guidance_scale"]
