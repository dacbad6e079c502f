"""JSON in and out: a bounded body reader, a parser that never 500s, and an orjson response.

We read and parse bodies ourselves instead of letting FastAPI do it, because its defaults answer a nesting bomb
or invalid UTF-8 with 500/422, accept any content type, and read the whole body before any size check.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.errors import InvalidJSONError, PayloadTooLargeError, RequestTimeoutError, UnsupportedMediaTypeError

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class JSONBody(Response):
    """orjson-rendered JSON; numpy arrays serialise natively (no `.tolist()` round trip)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_contiguous, option=_ORJSON_OPTIONS)


def _contiguous(value: Any) -> Any:
    """orjson serialises only C-contiguous arrays natively; a strided view (a column of a matrix) is copied."""
    if isinstance(value, np.ndarray) and not value.flags.c_contiguous:
        return np.ascontiguousarray(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request, max_bytes: int, timeout_s: float) -> Any:
    """Check headers, read at most `max_bytes` within `timeout_s`, parse. Raises 415 / 413 / 408 / 400.

    The Content-Length check answers before a byte of the body is read; the running count covers chunked
    bodies that announce no length. The deadline covers the whole body, so a client trickling 1 KB/s cannot
    hold a connection and a request slot (uvicorn has no body timeout of its own).
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError(
            "Content-Encoding is not supported; send an uncompressed JSON body",
            code="unsupported_content_encoding",
        )
    if not _is_json_media_type(request.headers.get("content-type", "")):
        raise UnsupportedMediaTypeError("Content-Type must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"request body is larger than the limit of {max_bytes} bytes")
    try:
        async with asyncio.timeout(timeout_s):
            body = await _read_bounded(request, max_bytes)
    except TimeoutError:
        raise RequestTimeoutError(f"request body not received within {timeout_s:g} s") from None
    return parse_json(body)


async def _read_bounded(request: Request, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"request body is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON; orjson refuses them, so the fallback must too."""
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """orjson first (fast, depth-capped, strict UTF-8). It also rejects JSON-escaped lone surrogates
    (``"\\ud800"``), which are valid JSON text; only a body holding such an escape goes to the stdlib parser, so
    the request can get the precise 422 `invalid_text` instead of a 400. Any other body orjson refuses is a 400
    at once (a 2 MB invalid body is not parsed twice), and the fallback refuses what orjson does: NaN and
    Infinity, and a nesting bomb (RecursionError).
    """
    if not body.strip():
        raise InvalidJSONError("request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        if b"\\ud" not in body.lower():
            raise InvalidJSONError("request body is not valid UTF-8 JSON") from None
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidJSONError("request body is not valid UTF-8 JSON") from None
