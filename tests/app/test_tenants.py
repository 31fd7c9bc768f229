"""Tenants file, `reins tenants`, key rotation and the per-tenant policy in the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from app.tenants import (TenantRegistry, TenantsFileError, add_api_key, create_tenant, load_tenants,
                         revoke_api_key)


def reins_tenants(path, *arguments):
    return subprocess.run([sys.executable, "-m", "reins.cli", "tenants", "--file", str(path), *arguments],
                          capture_output=True, text=True, timeout=60)


def test_cli_create_list_revoke(tmp_path):
    path = tmp_path / "tenants.toml"
    created = reins_tenants(path, "create", "acme", "--max-strength", "1.5", "--preset", "gentle=0.3",
                            "--rate-limit-per-minute", "30")
    assert created.returncode == 0, created.stderr
    output = json.loads(created.stdout)
    key = output["api_key"]
    assert key.startswith("rk_")
    assert key not in path.read_text()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"

    listing = json.loads(reins_tenants(path, "list").stdout)
    assert listing[0]["tenant"] == "acme"
    assert listing[0]["presets"] == {"gentle": 0.3}
    assert listing[0]["rate_limit_per_minute"] == 30
    assert "sha256" not in json.dumps(listing)

    registry = TenantRegistry(path, known_models=[])
    assert registry.authenticate(key).name == "acme"
    revoked = reins_tenants(path, "revoke-key", "acme", output["key_id"])
    assert revoked.returncode == 0, revoked.stderr
    assert load_tenants(path)["acme"].api_keys == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["create", "t", "--default-strength", "5"], "min_strength <= default_strength <= max_strength"),
        (["create", "t", "--preset", "huge=9"], "outside [0.0, 2.0]"),
        (["create", "t", "--preset", "nonsense"], "NAME=STRENGTH"),
        (["revoke-key", "nobody", "key_x"], "tenants file not found"),
        (["create", "bad name!"], "name"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, arguments, message):
    result = reins_tenants(tmp_path / "tenants.toml", *arguments)
    assert result.returncode == 2
    assert message in result.stderr


def test_duplicate_tenant_is_rejected(tmp_path):
    path = tmp_path / "tenants.toml"
    create_tenant(path, "acme", 1.0, 0.0, 2.0)
    with pytest.raises(TenantsFileError, match="already exists"):
        create_tenant(path, "acme", 1.0, 0.0, 2.0)


def test_registry_reloads_after_rotation(tmp_path):
    path = tmp_path / "tenants.toml"
    tenant, first = create_tenant(path, "acme", 1.0, 0.0, 2.0)
    registry = TenantRegistry(path, known_models=[])
    assert registry.authenticate(first).name == "acme"
    key_id, second = add_api_key(path, "acme")
    time.sleep(0.01)
    assert registry.authenticate(second).name == "acme"
    revoke_api_key(path, "acme", tenant.api_keys[0].id)
    assert registry.authenticate(first) is None
    assert registry.authenticate(second).name == "acme"


def test_invalid_edit_keeps_previous_tenants(tmp_path):
    path = tmp_path / "tenants.toml"
    _, key = create_tenant(path, "acme", 1.0, 0.0, 2.0)
    registry = TenantRegistry(path, known_models=[])
    path.write_text(path.read_text() + "\n[tenants.broken]\ndefault_strength = 'x'\n")
    assert registry.authenticate(key).name == "acme"


def test_unknown_model_in_tenant_is_rejected(tmp_path):
    path = tmp_path / "tenants.toml"
    create_tenant(path, "acme", 1.0, 0.0, 2.0, models=["missing-model"])
    with pytest.raises(TenantsFileError, match="unknown models"):
        TenantRegistry(path, known_models=["tiny-wan"])


def test_default_presets_follow_range(tmp_path):
    path = tmp_path / "tenants.toml"
    tenant, _ = create_tenant(path, "strict-only", 2.0, 1.0, 2.0)
    assert tenant.allowed_presets == {"standard": 1.0, "strict": 2.0}
