"""X-Request-ID: the client's own when it is sane (so its logs and ours line up), else a fresh random one."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id(scope: Mapping[str, Any]) -> str:
    """From an ASGI scope (starlette's or uvicorn's typed one)."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex
