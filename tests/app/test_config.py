import subprocess
import sys

import pytest

from app.config import ConfigError, load_config
from tests.conftest import SHIPPED_DIRECTION, write_config


def test_valid_config_loads(tmp_path):
    config = load_config(write_config(tmp_path, tmp_path / "model"))
    assert set(config.models) == {"tiny-wan"}
    assert config.models["tiny-wan"].adapter.name == "wan"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.m]\npath='x'\nfamily='sora'\ndirection='d'\n", "unknown"),
        ("[models.m]\npath='x'\nfamily='wan'\ndirection='d'\nmax_frames=3\n", "max_frames"),
        ("[models.m]\npath='x'\nfamily='wan'\ndirection='d'\n[tenants.t]\ndefault_strength=1\n",
         "tenants belong in the tenants file"),
        ("[models.m]\npath='x'\nfamily='wan'\ndirection='d'\n[extra]\n", "unknown top-level keys"),
        ("models = [", "invalid TOML"),
        ("", r"no \[models.NAME\] section"),
    ],
)
def test_invalid_config_is_explained(tmp_path, text, message):
    path = tmp_path / "reins.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_names_variable(tmp_path):
    with pytest.raises(ConfigError, match="REINS_CONFIG_FILE"):
        load_config(tmp_path / "absent.toml")


def test_relative_paths_resolve_against_config(tmp_path):
    (tmp_path / "reins.toml").write_text("[models.m]\npath='./model'\nfamily='wan'\ndirection='d.safetensors'\n")
    model = load_config(tmp_path / "reins.toml").models["m"]
    assert model.path == str(tmp_path.resolve() / "model")
    assert model.direction == tmp_path.resolve() / "d.safetensors"


def test_hub_id_path_is_kept(tmp_path):
    (tmp_path / "reins.toml").write_text(
        "[models.m]\npath='Wan-AI/Wan2.1-T2V-1.3B-Diffusers'\nfamily='wan'\ndirection='d.safetensors'\n"
    )
    assert load_config(tmp_path / "reins.toml").models["m"].path == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def test_api_imports_without_torch():
    code = "import sys, app.main, app.routes.generate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert SHIPPED_DIRECTION.is_file()


def test_token_gate_needs_probe_means(tmp_path):
    from dataclasses import replace

    from app.config import ModelConfig
    from reins.directions import load_direction

    metadata = load_direction(SHIPPED_DIRECTION).metadata
    without_means = replace(metadata, probe_safe_mean=None)
    fields = dict(name="tiny", path=str(tmp_path), family="wan", direction=SHIPPED_DIRECTION)
    ModelConfig(**fields, token_gate=True).check_direction(metadata)
    ModelConfig(**fields).check_direction(without_means)
    with pytest.raises(ValueError, match="token_gate = true needs a direction file with distinct safe and unsafe"):
        ModelConfig(**fields, token_gate=True).check_direction(without_means)
