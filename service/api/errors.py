"""The ONE table from error type to HTTP reply, and the handlers that make every non-2xx look the same.

Every error reply is ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's shape), carries X-Request-ID
(added by the request middleware) and, for 429/503, Retry-After. FastAPI's and Starlette's own 404/405/422/500
replies are overridden here. Messages come from our ServiceErrors, which never contain raw input; validation
messages are rebuilt from pydantic's error *type* and location only, since pydantic puts the input in `input`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.errors import (
    ArtifactError,
    AttentionBudgetError,
    AuthenticationError,
    InferenceError,
    InvalidJSONError,
    InvalidRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    OverloadError,
    PayloadTooLargeError,
    QueueFullError,
    QueueTimeoutError,
    RequestError,
    RequestTimeoutError,
    RouteNotFoundError,
    ServiceError,
    UnavailableError,
    UnsupportedMediaTypeError,
)

logger = logging.getLogger(__name__)


INFERENCE_FAILED_MESSAGE = "inference failed; the error was logged on the server"
INTERNAL_ERROR_MESSAGE = "internal server error; the error was logged on the server"

# (error class, HTTP status, error "type"). First match in MRO order wins, so subclasses come first.
ERROR_TABLE: tuple[tuple[type[ServiceError], int, str], ...] = (
    (InvalidJSONError, 400, "invalid_request_error"),
    (AuthenticationError, 401, "authentication_error"),
    (ModelNotFoundError, 404, "invalid_request_error"),
    (RouteNotFoundError, 404, "invalid_request_error"),
    (MethodNotAllowedError, 405, "invalid_request_error"),
    (RequestTimeoutError, 408, "invalid_request_error"),
    (PayloadTooLargeError, 413, "invalid_request_error"),
    (UnsupportedMediaTypeError, 415, "invalid_request_error"),
    (AttentionBudgetError, 422, "invalid_request_error"),
    (InvalidRequestError, 422, "invalid_request_error"),
    (RequestError, 400, "invalid_request_error"),
    (QueueFullError, 429, "rate_limit_error"),
    (QueueTimeoutError, 503, "service_unavailable_error"),
    (UnavailableError, 503, "service_unavailable_error"),
    (OverloadError, 503, "service_unavailable_error"),
    (InferenceError, 500, "server_error"),
    (ArtifactError, 500, "server_error"),
    (ServiceError, 500, "server_error"),
)


def status_for(exc: ServiceError) -> tuple[int, str]:
    """HTTP status and error type for a ServiceError, from the table above."""
    for cls in type(exc).__mro__:
        for err_cls, status, err_type in ERROR_TABLE:
            if cls is err_cls:
                return status, err_type
    return 500, "server_error"


def error_body(message: str, err_type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(
    status: int, message: str, err_type: str, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        orjson.dumps(error_body(message, err_type, param, code)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def service_error_response(exc: ServiceError) -> Response:
    status, err_type = status_for(exc)
    message = exc.message
    if status >= 500 and not isinstance(exc, OverloadError):
        message = INFERENCE_FAILED_MESSAGE if isinstance(exc, InferenceError) else INTERNAL_ERROR_MESSAGE
    headers: dict[str, str] = {}
    if isinstance(exc, OverloadError) or status in (429, 503):
        headers["Retry-After"] = str(max(1, int(getattr(exc, "retry_after_s", 1))))
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RequestTimeoutError) or exc.code == "payload_too_large":
        headers["Connection"] = "close"  # the rest of the body was never read: do not reuse this connection
    return error_response(status, message, err_type, exc.param, exc.code, headers)


def param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """('input', 'list[str]', 3) -> 'input[3]'; ('attention', 'layers') -> 'attention.layers'.

    Union branch tags (e.g. 'list[str]', 'function-after[...]') are skipped: they name our types, not the
    client's fields.
    """
    out = ""
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out or None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal", "tuple"})


def validation_error_from(errors: list[dict[str, Any]]) -> InvalidRequestError:
    """Pick the most specific pydantic error (deepest location) and describe it without the input value."""
    if not errors:
        return InvalidRequestError("request is invalid")
    best = max(errors, key=lambda e: len([p for p in e.get("loc", ()) if isinstance(p, int)]))
    param = param_from_loc(tuple(best.get("loc", ())))
    kind = best.get("type", "invalid")
    msg = str(best.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        msg = "unknown field"
    elif kind == "missing":
        msg = "field required"
    where = f"{param}: " if param else ""
    return InvalidRequestError(f"{where}{msg}", param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Replace FastAPI/Starlette default error replies with the one shape."""

    async def on_service_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ServiceError):  # registered for ServiceError only
            raise exc
        status, _ = status_for(exc)
        if status >= 500 and not isinstance(exc, OverloadError):
            logger.error("request failed: %s (%s)", type(exc).__name__, exc.code)
        services = getattr(request.app.state, "services", None)
        metrics = getattr(services, "metrics", None)
        if metrics is not None and (status < 500 or isinstance(exc, OverloadError)):
            metrics.rejected.labels(exc.code).inc()
        return service_error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, (RequestValidationError, ValidationError)) else []
        return await on_service_error(request, validation_error_from(list(errors)))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):
            raise exc
        if exc.status_code == 404:
            err: ServiceError = RouteNotFoundError("no such route")
        elif exc.status_code == 405:
            err = MethodNotAllowedError("method not allowed on this route")
        else:
            status = exc.status_code
            err_type = "invalid_request_error" if status < 500 else "server_error"
            return error_response(status, "request failed", err_type, None, f"http_{status}")
        response = await on_service_error(request, err)
        if exc.headers and "allow" in {k.lower() for k in exc.headers}:
            response.headers["Allow"] = next(v for k, v in exc.headers.items() if k.lower() == "allow")
        return response

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
