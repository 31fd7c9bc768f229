"""Tenants: who may call the API, with which keys, and under which steering policy and limits.

Tenants live in their own TOML file (`REINS_TENANTS_FILE`), written by `reins tenants` and read by the API, which
reloads it when it changes, so a revoked key stops working within a second without a restart. Keys are stored only
as sha256 digests and compared in constant time.

    [tenants.acme]
    default_strength = 1.0
    min_strength = 0.5
    max_strength = 2.0
    models = ["wan-1.3b"]          # optional; every model when absent
    rate_limit_per_minute = 60     # optional
    max_concurrent_jobs = 4        # optional
    webhook_url = "https://example.com/hooks/reins"   # optional
    webhook_secret = "whsec_..."   # set by 'reins tenants create --webhook-url'

    [tenants.acme.presets]         # optional; default: off/light/standard/strict that fall inside the range
    light = 0.5

    [[tenants.acme.api_keys]]
    id = "key_3f9a..."
    sha256 = "..."
    created_at = "2026-12-04T10:00:00+00:00"
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

logger = logging.getLogger(__name__)

# Presets a tenant gets when its entry names none; each is kept only if it lies inside the tenant's range.
DEFAULT_PRESETS = {"off": 0.0, "light": 0.5, "standard": 1.0, "strict": 2.0}
KEY_PREFIX = "rk_"


class TenantsFileError(ValueError):
    """The tenants file is missing, unreadable or invalid."""


def hash_api_key(key: str) -> str:
    """Return the sha256 hex digest under which an API key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """Return a new key id and API key; the key embeds 32 random bytes."""
    key_id = "key_" + secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{secrets.token_urlsafe(32)}"


def new_webhook_secret() -> str:
    """Return a webhook signing secret in the Standard Webhooks form: "whsec_" and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: str = ""


class TenantConfig(BaseModel):
    """One tenant: its keys, its steering policy and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    api_keys: list[ApiKey] = Field(default_factory=list)
    default_strength: float
    min_strength: float
    max_strength: float
    presets: dict[str, float] | None = None
    models: list[str] | None = None
    rate_limit_per_minute: int | None = Field(None, ge=1)
    max_concurrent_jobs: int | None = Field(None, ge=1)
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    webhook_secret: str | None = Field(None, pattern=r"^whsec_[A-Za-z0-9+/=]+$")

    @model_validator(mode="after")
    def _check_policy(self) -> "TenantConfig":
        if not self.min_strength <= self.default_strength <= self.max_strength:
            raise ValueError(
                f"need min_strength <= default_strength <= max_strength, got "
                f"{self.min_strength}, {self.default_strength}, {self.max_strength}"
            )
        for name, value in (self.presets or {}).items():
            if not self.min_strength <= value <= self.max_strength:
                raise ValueError(f"preset {name!r} = {value} is outside [{self.min_strength}, {self.max_strength}]")
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("webhook_url needs webhook_secret")
        return self

    @property
    def allowed_presets(self) -> dict[str, float]:
        if self.presets is not None:
            return dict(self.presets)
        return {name: value for name, value in DEFAULT_PRESETS.items()
                if self.min_strength <= value <= self.max_strength}


def load_tenants(path: str | Path) -> dict[str, TenantConfig]:
    """Read and validate the tenants file; a missing file is an error that names the variable to set."""
    path = Path(path)
    if not path.is_file():
        raise TenantsFileError(f"tenants file not found: {path} (set REINS_TENANTS_FILE; create tenants with "
                               "'reins tenants create')")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise TenantsFileError(f"{path}: invalid TOML: {error}") from None
    unknown = set(raw) - {"tenants"}
    if unknown:
        raise TenantsFileError(f"{path}: unknown top-level keys {sorted(unknown)}; expected [tenants.NAME]")
    tenants = {}
    for name, entry in raw.get("tenants", {}).items():
        try:
            tenants[name] = TenantConfig(**dict(entry, name=name))
        except ValidationError as error:
            raise TenantsFileError(f"{path}: tenant {name!r}: {_describe(error)}") from None
        except TypeError as error:
            raise TenantsFileError(f"{path}: tenant {name!r}: {error}") from None
    return tenants


def save_tenants(path: str | Path, tenants: dict[str, TenantConfig]) -> None:
    """Write the tenants file atomically (temporary file, then rename), readable by its owner only."""
    path = Path(path)
    document = {"tenants": {
        name: tenant.model_dump(exclude={"name"}, exclude_none=True) for name, tenant in sorted(tenants.items())
    }}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(
        "# Managed by 'reins tenants'. Hand edits are kept only as data: comments are lost on the next write.\n"
        + tomli_w.dumps(document)
    )
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def _read_for_update(path: Path) -> dict[str, TenantConfig]:
    return load_tenants(path) if path.exists() else {}


def create_tenant(path: str | Path, name: str, default_strength: float, min_strength: float, max_strength: float,
                  **policy) -> tuple[TenantConfig, str]:
    """Add a tenant with one new API key to the tenants file; return the tenant and the key (shown only once)."""
    path = Path(path)
    tenants = _read_for_update(path)
    if name in tenants:
        raise TenantsFileError(f"tenant {name!r} already exists in {path}")
    if policy.get("webhook_url") and not policy.get("webhook_secret"):
        policy["webhook_secret"] = new_webhook_secret()
    key_id, key = new_api_key()
    try:
        tenant = TenantConfig(
            name=name, default_strength=default_strength, min_strength=min_strength, max_strength=max_strength,
            api_keys=[ApiKey(id=key_id, sha256=hash_api_key(key), created_at=utc_now())],
            **{field: value for field, value in policy.items() if value is not None},
        )
    except ValidationError as error:
        raise TenantsFileError(f"tenant {name!r}: {_describe(error)}") from None
    tenants[name] = tenant
    save_tenants(path, tenants)
    return tenant, key


def add_api_key(path: str | Path, name: str) -> tuple[str, str]:
    """Give a tenant one more API key; return its id and the key (shown only once)."""
    tenants = load_tenants(path)
    tenant = _require(tenants, name, path)
    key_id, key = new_api_key()
    keys = [*tenant.api_keys, ApiKey(id=key_id, sha256=hash_api_key(key), created_at=utc_now())]
    tenants[name] = tenant.model_copy(update={"api_keys": keys})
    save_tenants(path, tenants)
    return key_id, key


def revoke_api_key(path: str | Path, name: str, key_id: str) -> None:
    """Remove one API key of a tenant; requests with it get 401 once the API has reloaded the file."""
    tenants = load_tenants(path)
    tenant = _require(tenants, name, path)
    remaining = [key for key in tenant.api_keys if key.id != key_id]
    if len(remaining) == len(tenant.api_keys):
        raise TenantsFileError(f"tenant {name!r} has no key {key_id!r}; its keys: "
                               f"{[key.id for key in tenant.api_keys]}")
    tenants[name] = tenant.model_copy(update={"api_keys": remaining})
    save_tenants(path, tenants)


def delete_tenant(path: str | Path, name: str) -> None:
    """Remove a tenant and all its keys. Its job records stay until they expire."""
    tenants = load_tenants(path)
    _require(tenants, name, path)
    del tenants[name]
    save_tenants(path, tenants)


def _require(tenants: dict[str, TenantConfig], name: str, path: str | Path) -> TenantConfig:
    if name not in tenants:
        raise TenantsFileError(f"no tenant {name!r} in {path}; tenants: {sorted(tenants)}")
    return tenants[name]


def _describe(error: ValidationError) -> str:
    """Return pydantic's errors as one line: "field: message; ..."."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


class TenantRegistry:
    """Authenticates API keys against the tenants file, reloading it when its modification time changes."""

    def __init__(self, path: str | Path, known_models: list[str]) -> None:
        self.path = Path(path)
        self.known_models = set(known_models)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tenants: dict[str, TenantConfig] = {}
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if force:
                raise TenantsFileError(f"tenants file not found: {self.path} (set REINS_TENANTS_FILE)") from None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp and not force:
            return
        with self._lock:
            try:
                tenants = load_tenants(self.path)
                for tenant in tenants.values():
                    unknown = set(tenant.models or ()) - self.known_models
                    if unknown:
                        raise TenantsFileError(f"{self.path}: tenant {tenant.name!r} allows unknown models "
                                               f"{sorted(unknown)}")
            except TenantsFileError:
                if force:
                    raise
                # A half-edited file must not lock everyone out, so the last valid version stays in force.
                logger.exception("tenants file %s is invalid; keeping the previous version", self.path)
                self._stamp = stamp
                return
            self._tenants, self._stamp = tenants, stamp
            logger.info("loaded %d tenants from %s", len(tenants), self.path)

    def authenticate(self, api_key: str) -> TenantConfig | None:
        self._reload()
        digest = hash_api_key(api_key)
        found = None
        # Compare against every key, so the time taken does not reveal which one matched.
        for tenant in self._tenants.values():
            for key in tenant.api_keys:
                if hmac.compare_digest(digest, key.sha256):
                    found = tenant
        return found

    def get(self, name: str) -> TenantConfig | None:
        self._reload()
        return self._tenants.get(name)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
