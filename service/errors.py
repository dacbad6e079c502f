"""Errors the service raises, with no HTTP in them.

Routes and the batcher raise these; `service/api/errors.py` is the one table that turns them into HTTP replies.
Every error carries a message that is safe to show a client: it never contains the raw input.

    ServiceError
    ├── RequestError                 the caller sent something we will not compute (4xx)
    │   ├── InvalidJSONError         the body is not parseable JSON: syntax, UTF-8, nesting depth (400)
    │   ├── AuthenticationError      API key missing or wrong (401, WWW-Authenticate: Bearer)
    │   ├── RouteNotFoundError       no such route (404)
    │   ├── ModelNotFoundError       unknown `model` name (404)
    │   ├── MethodNotAllowedError    the route exists, the method does not (405, Allow)
    │   ├── RequestTimeoutError      the body did not arrive within the body deadline (408)
    │   ├── RequestLineTooLongError  request line over EMBED_MAX_REQUEST_LINE_BYTES (414, connection closed)
    │   ├── HeaderTooLargeError      header block over EMBED_MAX_HEADER_BYTES (431, connection closed)
    │   ├── PayloadTooLargeError     body or inputs over a limit (413)
    │   ├── UnsupportedMediaTypeError  not JSON, or a Content-Encoding (415)
    │   ├── InvalidRequestError      well-formed but invalid (422): empty text, bad option, over-long input
    │   └── AttentionBudgetError     attention output over the configured budget (422)
    ├── OverloadError                we cannot take this now; the caller may retry (429/503, Retry-After)
    │   ├── QueueFullError           admission queue full (429)
    │   ├── QueueTimeoutError        waited past the queue deadline; never computed (503)
    │   ├── UnavailableError         not ready, draining, or the batcher is wedged (503)
    │   └── TooManyConnectionsError  EMBED_MAX_CONNECTIONS already open; answered and closed (503)
    ├── InferenceError               the model run failed for this input (500, fixed generic message)
    ├── ArtifactError                the artifact directory is missing, corrupt or inconsistent (start-up only)
    └── ProviderError                the execution provider or graph cannot run here (start-up only)
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose.

    `code` is a stable snake_case identifier clients can branch on; `param` points at the offending part of
    the request (e.g. ``input[3]``) or is None.
    """

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class RequestError(ServiceError):
    code = "invalid_request"


class InvalidJSONError(RequestError):
    """The body is not parseable JSON (bad syntax, bad UTF-8, nesting too deep)."""

    code = "invalid_json"


class AuthenticationError(RequestError):
    code = "invalid_api_key"


class RouteNotFoundError(RequestError):
    code = "not_found"


class MethodNotAllowedError(RequestError):
    code = "method_not_allowed"


class RequestTimeoutError(RequestError):
    """The client sent its body too slowly (slow-body / slowloris guard); the connection is closed after it."""

    code = "request_timeout"


class RequestLineTooLongError(RequestError):
    """The request line passed its byte limit while arriving; answered by the HTTP protocol, which then closes."""

    code = "uri_too_long"


class HeaderTooLargeError(RequestError):
    """The header block passed its byte limit while arriving (never buffered whole); the connection is closed."""

    code = "request_header_fields_too_large"


class UnsupportedMediaTypeError(RequestError):
    code = "unsupported_media_type"


class InvalidRequestError(RequestError):
    code = "validation_error"


class ModelNotFoundError(RequestError):
    code = "model_not_found"


class WrongTaskError(RequestError):
    """The named model does not do what the route asks (an embedding route on a reranker, ...): 400."""

    code = "unsupported_task"


class PayloadTooLargeError(RequestError):
    code = "payload_too_large"


class AttentionBudgetError(RequestError):
    code = "attention_budget_exceeded"


class ExplainBudgetError(RequestError):
    """An input longer than /v1/explain's own token limit (EMBED_EXPLAIN_MAX_TOKENS)."""

    code = "explain_budget_exceeded"


class OverloadError(ServiceError):
    """The request is fine but cannot be served now; `retry_after_s` (seconds, not rounded) becomes the
    Retry-After header (whole seconds, at least 1) and Retry-After-Ms (milliseconds)."""

    code = "overloaded"

    def __init__(
        self, message: str, *, retry_after_s: float = 1.0, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after_s = retry_after_s


class QueueFullError(OverloadError):
    code = "queue_full"


class QueueTimeoutError(OverloadError):
    code = "queue_timeout"


class UnavailableError(OverloadError):
    code = "unavailable"


class TooManyConnectionsError(OverloadError):
    """A new connection found the open-connection cap reached: its first request is answered, then it is closed."""

    code = "too_many_connections"


class InferenceError(ServiceError):
    """The forward pass failed. The client sees only a fixed message; the cause goes to the log."""

    code = "inference_error"

    def __init__(self, message: str = "inference failed", *, param: str | None = None) -> None:
        super().__init__(message, param=param)


class ArtifactError(ServiceError):
    """Raised at start-up only: the process must exit with one clear line naming the file."""

    code = "artifact_error"


class ProviderError(ServiceError):
    """Start-up only: the requested execution provider or graph cannot run here (e.g. REQUIRE_GPU on CPU)."""

    code = "provider_error"
