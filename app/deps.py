"""Request dependencies: the authenticated tenant and the shared service objects."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
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


def _query_parameter_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_parameter_names(dependency)
    return names


def reject_unknown_query_parameters(request: Request) -> None:
    """Reject query parameters that the matched route does not declare, so that a misspelt one is not ignored."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_parameter_names(route.dependant)
    for name in request.query_params:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise APIError(422, "invalid_request",
                           f"unknown query parameter {name!r}. This endpoint accepts: {allowed}", name)
