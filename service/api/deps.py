"""What routes reach through `Annotated` dependencies: the app's context and the model a request names.

Every dependency is `async def` although none awaits: FastAPI runs a plain `def` dependency in its thread pool,
which costs each request a thread hop per dependency (seen under py-spy as `run_in_threadpool` on the event
loop's hot path); these are a few attribute reads and must run on the loop.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from service.api.shed import Door
from service.errors import AuthenticationError
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings


@dataclass
class Lifecycle:
    """The only mutable state of an app: whether it is ready and whether it is draining."""

    ready: bool = False
    draining: bool = False
    started_at: float = field(default=0.0)
    drain_began: float | None = None  # time.monotonic() when the shutdown signal arrived


@dataclass(frozen=True)
class AppContext:
    """Everything one app owns, built before it serves: settings, metrics, the served models, the door."""

    settings: Settings
    metrics: Metrics
    models: ModelRegistry
    lifecycle: Lifecycle
    door: Door  # the load-shedding door (service/api/shed.py), shared by protocol and app


async def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context  # set in create_app, before the app serves
    return context


async def get_models(request: Request) -> ModelRegistry:
    return (await get_context(request)).models


async def require_api_key(request: Request) -> None:
    """Bearer check when EMBED_API_KEY is set. compare_digest keeps the timing independent of the key prefix."""
    key = request.app.state.context.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise AuthenticationError("missing or invalid API key")


async def require_probe_key(request: Request) -> None:
    """Probes and /metrics are public unless EMBED_PUBLIC_PROBES=false (kubelets and scrapers rarely carry keys)."""
    if not request.app.state.context.settings.public_probes:
        await require_api_key(request)


ContextDep = Annotated[AppContext, Depends(get_context)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
