"""Request dependencies: the authenticated tenant and the shared service objects."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import APIError
from app.tenants import TenantConfig

_bearer = HTTPBearer(auto_error=False, description="The tenant's API key.")


def current_tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> TenantConfig:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise APIError(401, "unauthorized", "missing API key: send 'Authorization: Bearer KEY'", headers=challenge)
    tenant = request.app.state.tenants.authenticate(credentials.credentials)
    if tenant is None:
        raise APIError(401, "unauthorized", "invalid API key", headers=challenge)
    return tenant


Tenant = Annotated[TenantConfig, Depends(current_tenant)]
