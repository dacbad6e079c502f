"""What routes reach through `Annotated` dependencies: the per-app services built in the lifespan.

Every dependency is `async def` although none awaits: FastAPI runs a plain `def` dependency in its thread pool,
which costs each request a thread hop per dependency (seen under py-spy as `run_in_threadpool` on the event
loop's hot path); these are a few attribute reads and must run on the loop.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends
from starlette.requests import Request

from service.artifacts import Manifest
from service.batching import Batcher
from service.engine import Engine
from service.errors import AuthenticationError, UnavailableError
from service.metrics import Metrics
from service.runner import OnnxRunner
from service.settings import Settings

if TYPE_CHECKING:
    from service.api.shed import Door


@dataclass
class Services:
    """Everything one app owns. `engine` is None until the lifespan has loaded and warmed the model."""

    settings: Settings
    metrics: Metrics
    manifest: Manifest | None = None
    runner: OnnxRunner | None = None
    batcher: Batcher | None = None
    engine: Engine | None = None
    ready: bool = False
    draining: bool = False
    started_at: float = field(default=0.0)
    door: Door | None = None  # the load-shedding door (service/api/shed.py), shared by protocol and app

    @property
    def served_model_name(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        return self.manifest.model_name if self.manifest else "unknown"


async def get_services(request: Request) -> Services:
    return request.app.state.services


async def get_engine(request: Request) -> Engine:
    services: Services = request.app.state.services
    if services.engine is None or not services.ready:
        raise UnavailableError("the model is not loaded yet", retry_after_s=2)
    # Draining only flips /ready: requests that still reach us (the LB has not noticed yet, or a drain delay is
    # running) are served; once the lifespan stops the batcher, admission itself answers 503.
    return services.engine


async def require_api_key(request: Request) -> None:
    """Bearer check when EMBED_API_KEY is set. compare_digest keeps the timing independent of the key prefix."""
    key = request.app.state.services.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise AuthenticationError("missing or invalid API key")


async def require_probe_key(request: Request) -> None:
    """Probes and /metrics are public unless EMBED_PUBLIC_PROBES=false (kubelets and scrapers rarely carry keys)."""
    if not request.app.state.services.settings.public_probes:
        await require_api_key(request)


ServicesDep = Annotated[Services, Depends(get_services)]
EngineDep = Annotated[Engine, Depends(get_engine)]
