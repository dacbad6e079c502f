"""The ONE table from error type to HTTP reply, and the handlers that make every non-2xx look the same.

Two route families, two shapes, one table. OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` is
the answer everywhere except on text-embeddings-inference's routes (`TEI_PATHS`), where TEI's clients expect
``{"error": "<message>", "error_type": "<TEI type>"}`` with TEI's status for that type (Empty 400, Validation and
Tokenizer 422, Overloaded 429, Backend 424, Unhealthy 503). The family is chosen by the request path, so
framework-level errors (bad JSON, content type, 405, 413) get their route's shape too. Either way the reply
carries X-Request-ID (added by the request middleware) and, for 429/503, Retry-After. FastAPI's and Starlette's
own 404/405/422/500 replies are overridden here. Messages come from our ServiceErrors, which never contain raw
input; validation messages are rebuilt from pydantic's error *type* and location only, since pydantic puts the
input in `input`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

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
    ExplainBudgetError,
    HeaderTooLargeError,
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
    RequestLineTooLongError,
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
    (RequestLineTooLongError, 414, "invalid_request_error"),
    (HeaderTooLargeError, 431, "invalid_request_error"),
    (UnsupportedMediaTypeError, 415, "invalid_request_error"),
    (AttentionBudgetError, 422, "invalid_request_error"),
    (ExplainBudgetError, 422, "invalid_request_error"),
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


Family = Literal["openai", "tei", "cohere"]

# text-embeddings-inference's routes: their errors are in TEI's shape. The task routes of other model kinds
# (/rerank, /predict, /embed_sparse) belong here as they arrive.
TEI_PATHS = frozenset({"/", "/invocations", "/embed", "/embed_all", "/tokenize", "/decode", "/similarity",
                       "/rerank", "/predict", "/embed_sparse"})

# TEI's ErrorType for a ServiceError (first match in MRO order), and the status TEI gives that type where it
# differs from ours. A request TEI has no word for (auth, content type, body size, route, method) is Validation
# with our status, since TEI's enum is closed; an empty input is Empty (400), as TEI answers it.
_TEI_TYPES: tuple[tuple[type[ServiceError], str], ...] = (
    (QueueFullError, "Overloaded"),
    (OverloadError, "Unhealthy"),
    (InferenceError, "Backend"),
    (RequestError, "Validation"),
    (ServiceError, "Backend"),
)
_TEI_CODE_TYPES = {"empty_input": "Empty", "invalid_text": "Tokenizer"}
TEI_STATUS = {"Empty": 400, "Overloaded": 429, "Backend": 424, "Unhealthy": 503}


# Cohere's routes (and Jina's /v1/rerank): errors are {"id", "message"}, which the cohere SDK reads as the
# ApiError body, with our status.
COHERE_PATHS = frozenset({"/v2/rerank", "/v1/rerank", "/v2/embed"})


def family_of(path: str) -> Family:
    """Which error shape a request to `path` is answered in."""
    if path in TEI_PATHS:
        return "tei"
    return "cohere" if path in COHERE_PATHS else "openai"


def status_for(exc: ServiceError) -> tuple[int, str]:
    """HTTP status and error type for a ServiceError, from the table above."""
    for cls in type(exc).__mro__:
        for err_cls, status, err_type in ERROR_TABLE:
            if cls is err_cls:
                return status, err_type
    return 500, "server_error"


def tei_type_for(exc: ServiceError) -> str:
    if exc.code in _TEI_CODE_TYPES:
        return _TEI_CODE_TYPES[exc.code]
    for cls in type(exc).__mro__:
        for err_cls, tei_type in _TEI_TYPES:
            if cls is err_cls:
                return tei_type
    return "Backend"


def tei_status_for(exc: ServiceError) -> tuple[int, str]:
    """TEI's status and ErrorType for a ServiceError. Validation keeps our (more precise) status; a failed
    forward pass is TEI's 424; our own 500 (a bug, not a model failure) stays 500."""
    status, _ = status_for(exc)
    tei_type = tei_type_for(exc)
    if tei_type == "Backend" and not isinstance(exc, InferenceError):
        return status, tei_type
    return TEI_STATUS.get(tei_type, status), tei_type


def error_body(message: str, err_type: str, param: str | None, code: str | None,
               family: Family = "openai") -> dict[str, Any]:
    """The reply body; in the TEI family `err_type` must be a TEI ErrorType and param/code are not sent."""
    if family == "tei":
        return {"error": message, "error_type": err_type}
    if family == "cohere":
        return {"id": code or err_type, "message": message}
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(
    status: int, message: str, err_type: str, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None, family: Family = "openai",
) -> Response:
    return Response(
        orjson.dumps(error_body(message, err_type, param, code, family)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def reply_parts(exc: ServiceError, family: Family = "openai") -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers of the reply to `exc` in `family`'s shape (shared by the app's handlers and the
    protocol-level door)."""
    status, err_type = status_for(exc)
    message = exc.message
    if status >= 500 and not isinstance(exc, OverloadError):
        message = INFERENCE_FAILED_MESSAGE if isinstance(exc, InferenceError) else INTERNAL_ERROR_MESSAGE
    if family == "tei":
        status, err_type = tei_status_for(exc)
    elif family == "cohere" and status == 422:
        status = 400  # Cohere answers an invalid value with 400, and its SDK raises BadRequestError for it
    headers: dict[str, str] = {}
    if isinstance(exc, OverloadError) or status in (429, 503):
        headers.update(retry_after_headers(float(getattr(exc, "retry_after_s", 1.0))))
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RequestTimeoutError) or exc.code == "payload_too_large":
        headers["Connection"] = "close"  # the rest of the body was never read: do not reuse this connection
    return status, error_body(message, err_type, exc.param, exc.code, family), headers


def retry_after_headers(seconds: float) -> dict[str, str]:
    """Retry-After in whole seconds (RFC 9110: at least 1 here) and Retry-After-Ms with the estimate unrounded.

    The official openai and cohere SDKs read `retry-after-ms` before `retry-after`. Whole seconds alone make every
    client refused in one instant come back in one instant a second later, a wave the queue cannot spread: the
    milliseconds keep the estimate's random spread, so refused clients return spread over time.
    """
    return {"Retry-After": str(max(1, math.ceil(seconds))), "Retry-After-Ms": str(max(1, round(seconds * 1000)))}


def service_error_response(exc: ServiceError, family: Family = "openai") -> Response:
    status, body, headers = reply_parts(exc, family)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


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


def _specificity(error: Mapping[str, Any]) -> tuple[int, tuple[int, ...], int]:
    """Deepest index first, then the highest index (the union branch that got furthest into a list), then the
    longest location."""
    loc = tuple(error.get("loc", ()))
    indexes = tuple(p for p in loc if isinstance(p, int))
    return len(indexes), indexes, len(loc)


def validation_error_from(errors: Sequence[Mapping[str, Any]]) -> InvalidRequestError:
    """Pick the most specific pydantic error (deepest location) and describe it without the input value."""
    if not errors:
        return InvalidRequestError("request is invalid")
    best = max(errors, key=_specificity)
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
        context = getattr(request.app.state, "context", None)
        metrics = getattr(context, "metrics", None)
        if metrics is not None and (status < 500 or isinstance(exc, OverloadError)):
            metrics.rejected.labels(exc.code).inc()
        return service_error_response(exc, family_of(request.scope["path"]))

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
            family = family_of(request.scope["path"])
            if family == "tei":
                err_type = "Validation" if status < 500 else "Backend"
            else:
                err_type = "invalid_request_error" if status < 500 else "server_error"
            return error_response(status, "request failed", err_type, None, f"http_{status}", family=family)
        response = await on_service_error(request, err)
        if exc.headers and "allow" in {k.lower() for k in exc.headers}:
            response.headers["Allow"] = next(v for k, v in exc.headers.items() if k.lower() == "allow")
        return response

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
