"""The error table and body parsing: each error type has one status; parsing never raises anything but 400."""

from __future__ import annotations

import json

import pytest

from service.api.errors import (
    AuthenticationError,
    InvalidJSONError,
    UnsupportedMediaTypeError,
    family_of,
    param_from_loc,
    service_error_response,
    status_for,
    validation_error_from,
)
from service.api.jsonio import parse_json
from service.errors import (
    ArtifactError,
    AttentionBudgetError,
    InferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    QueueTimeoutError,
    ServiceError,
    UnavailableError,
)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (InvalidJSONError("x"), 400),
        (AuthenticationError("x"), 401),
        (ModelNotFoundError("x"), 404),
        (PayloadTooLargeError("x"), 413),
        (UnsupportedMediaTypeError("x"), 415),
        (InvalidRequestError("x"), 422),
        (AttentionBudgetError("x"), 422),
        (QueueFullError("x"), 429),
        (QueueTimeoutError("x"), 503),
        (UnavailableError("x"), 503),
        (InferenceError(), 500),
        (ArtifactError("x"), 500),
        (ServiceError("x"), 500),
    ],
)
def test_error_table(exc: ServiceError, status: int) -> None:
    assert status_for(exc)[0] == status


@pytest.mark.parametrize(
    ("exc", "status", "tei_type"),
    [
        (InvalidJSONError("x"), 400, "Validation"),
        (AuthenticationError("x"), 401, "Validation"),
        (PayloadTooLargeError("x"), 413, "Validation"),
        (UnsupportedMediaTypeError("x"), 415, "Validation"),
        (InvalidRequestError("x"), 422, "Validation"),
        (InvalidRequestError("x", code="empty_input"), 400, "Empty"),
        (InvalidRequestError("x", code="invalid_text"), 422, "Tokenizer"),
        (AttentionBudgetError("x"), 422, "Validation"),
        (QueueFullError("x"), 429, "Overloaded"),
        (QueueTimeoutError("x"), 503, "Unhealthy"),
        (UnavailableError("x"), 503, "Unhealthy"),
        (InferenceError(), 424, "Backend"),
        (ServiceError("x"), 500, "Backend"),
    ],
)
def test_tei_family_gets_tei_types_and_statuses(exc: ServiceError, status: int, tei_type: str) -> None:
    response = service_error_response(exc, "tei")
    assert response.status_code == status
    assert json.loads(response.body) == {"error": json.loads(response.body)["error"], "error_type": tei_type}
    if status in (429, 503):
        assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize(("path", "family"), [("/embed", "tei"), ("/", "tei"), ("/invocations", "tei"),
                                              ("/decode", "tei"), ("/v1/embeddings", "openai"),
                                              ("/v1/encode", "openai"), ("/health", "openai"), ("/nope", "openai")])
def test_family_is_chosen_by_path(path: str, family: str) -> None:
    assert family_of(path) == family


def test_validation_error_names_the_union_branch_that_got_furthest() -> None:
    """["a", None] against str | list[int] | list[str | list[int]]: the bad element is [1], not [0]."""
    errors = [{"loc": ("inputs", "str"), "type": "string_type", "msg": "m"},
              {"loc": ("inputs", "list[int]", 0), "type": "int_type", "msg": "m"},
              {"loc": ("inputs", "list[int]", 1), "type": "int_type", "msg": "m"},
              {"loc": ("inputs", "list[union]", 1, "str"), "type": "string_type", "msg": "m"},
              {"loc": ("inputs", "list[union]", 1, "list[int]"), "type": "list_type", "msg": "m"}]
    assert validation_error_from(errors).param == "inputs[1]"


def test_overload_replies_carry_retry_after() -> None:
    response = service_error_response(QueueFullError("full", retry_after_s=7))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers["retry-after-ms"] == "7000"
    assert service_error_response(UnavailableError("draining")).headers["retry-after"] == "1"
    # An estimate under a second: whole seconds for RFC clients, the milliseconds for SDKs that read them.
    spread = service_error_response(QueueFullError("full", retry_after_s=0.3724))
    assert (spread.headers["retry-after"], spread.headers["retry-after-ms"]) == ("1", "372")
    assert service_error_response(QueueFullError("full", retry_after_s=1.2)).headers["retry-after"] == "2"


def test_internal_errors_never_leak_their_message() -> None:
    response = service_error_response(InferenceError("CUDA error at /src/secret/path.cu:42"))
    assert response.status_code == 500
    assert b"secret" not in response.body
    assert b"inference failed" in response.body


def test_auth_error_asks_for_bearer() -> None:
    response = service_error_response(AuthenticationError("no key"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (("body", "input", "list[str]", 3), "input[3]"),
        (("attention", "layers", "list[int]", 0), "attention.layers[0]"),
        (("inputs", "str"), "inputs"),
        ((), None),
    ],
)
def test_param_from_loc(loc: tuple[object, ...], param: str | None) -> None:
    assert param_from_loc(loc) == param


def test_validation_error_never_echoes_the_input() -> None:
    err = validation_error_from(
        [{"type": "string_type", "loc": ("inputs", "list[str]", 1), "msg": "Input should be a valid string",
          "input": "SECRET-INPUT"}]
    )
    assert err.param == "inputs[1]"
    assert "SECRET" not in err.message


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"inputs": [', b'{"inputs":["\xff"]}', b"[" * 200_000, b'{"a": 1} trailing', b"\xef\xbb"],
)
def test_bad_bodies_are_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidJSONError):
        parse_json(body)


def test_lone_surrogate_escape_parses_so_it_can_be_a_422() -> None:
    assert parse_json(b'{"inputs": "a\\ud800b"}') == {"inputs": "a\ud800b"}


def test_duplicate_keys_keep_the_last() -> None:
    assert parse_json(b'{"inputs": "a", "inputs": "b"}') == {"inputs": "b"}
