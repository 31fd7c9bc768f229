"""Tenants: authentication by API key hash and the steering policy applied to each request."""

from __future__ import annotations

import hmac

from app.config import ServerConfig, TenantConfig, hash_api_key


class TenantRegistry:
    """Looks tenants up by API key, comparing hashes in constant time."""

    def __init__(self, config: ServerConfig) -> None:
        self._tenants = list(config.tenants.values())

    def authenticate(self, api_key: str) -> TenantConfig | None:
        digest = hash_api_key(api_key)
        found = None
        # Compare against every tenant, so the time taken does not reveal which one matched.
        for tenant in self._tenants:
            if hmac.compare_digest(digest, tenant.api_key_sha256):
                found = tenant
        return found
