"""Cohere's `embedding_types`: float32 sentence embeddings to the compact forms Cohere's embed v2 returns.

Why here and numpy only: the conversion runs on the serving side after pooling, so it must not pull in torch or
sentence-transformers. It reproduces `sentence_transformers.quantization.quantize_embeddings` (6.2.0) bit for bit,
so vectors a client quantized offline with sentence-transformers and vectors from this server share one index:

    int8 / uint8   per-dimension buckets from calibration ranges recorded at export (never from the request's own
                   batch, which would make a text's vector depend on its neighbours):
                   steps = (max - min) / 255 (0 -> 1), q = clip(floor((x - min) / steps), 0, 255);
                   uint8 = q, int8 = q - 128. Values outside [min, max] clip to the end buckets, never wrap.
    binary/ubinary one bit per dimension, 1 where x > 0, packed big-endian (np.packbits); ubinary is the byte,
                   binary is byte - 128 as int8. A dimension that is not a multiple of 8 is padded with 0 bits at
                   the end (as sentence-transformers does): the padding is equal in every vector, so Hamming
                   distances are unchanged, and np.unpackbits(..., count=D) recovers the bits.
    base64         per vector, base64 of its float32 little-endian bytes (Cohere: "the float embedding bytes
                   appended together and base64 encoded"; little-endian as every x86/ARM server sends them).
    float          the float32 values as they are.

Errors: a request asking for something we cannot do is an `EmbeddingTypeError` (an `InvalidRequestError`, so
the one error table answers it like any bad option); calibration ranges of the wrong shape are a
`CalibrationRangesError`, meant for start-up via `check_ranges`; NaN in a vector is an inference failure.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from service.errors import InferenceError, InvalidRequestError

EMBEDDING_TYPES: Final[tuple[str, ...]] = ("float", "int8", "uint8", "binary", "ubinary", "base64")
_NEEDS_RANGES: Final[frozenset[str]] = frozenset({"int8", "uint8"})
_BUCKETS: Final[int] = 255

Ranges = tuple[np.ndarray, np.ndarray]


class EmbeddingTypeError(InvalidRequestError, ValueError):
    """The request's `embedding_types` cannot be served (unknown name, or int8/uint8 without calibration)."""

    code = "invalid_embedding_type"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="embedding_types")


class CalibrationRangesError(ValueError):
    """Calibration ranges that do not fit the model: an artifact problem, to be caught at start-up."""


class NonFiniteEmbeddingError(InferenceError, ValueError):
    """A NaN reached quantization, where casting it to an integer is undefined; the client gets 500."""


def calibration_ranges(calibration_embeddings: np.ndarray) -> Ranges:
    """Per-dimension (min, max) of a calibration set: what export records so int8/uint8 need no batch statistics."""
    emb = np.asarray(calibration_embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise CalibrationRangesError(f"calibration needs a (N >= 2, D) array, got shape {emb.shape}")
    return emb.min(axis=0), emb.max(axis=0)


def check_ranges(ranges: Ranges | np.ndarray, dim: int) -> np.ndarray:
    """Validate (min, max) for a model of width `dim` and return them as one float32 (2, D) array.

    Accepts the (min, max) pair or sentence-transformers' (2, D) `ranges` array. Call it when loading the artifact
    so a bad file fails at start-up, not on the first int8 request.
    """
    arr = np.asarray(ranges, dtype=np.float32)  # (2, D); float32 as sentence-transformers casts them
    if arr.shape != (2, dim):
        raise CalibrationRangesError(f"calibration ranges must have shape (2, {dim}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise CalibrationRangesError("calibration ranges must be finite")
    if (arr[1] < arr[0]).any():
        raise CalibrationRangesError("calibration ranges have max < min in some dimension")
    return arr


def parse_types(types: Sequence[str], *, has_ranges: bool) -> tuple[str, ...]:
    """Validate the requested types before any work; duplicates collapse, request order is kept.

    Separate from `convert` so a route can reject a bad `embedding_types` before it queues the texts.
    """
    if isinstance(types, str):
        types = [types]
    if not types:
        raise EmbeddingTypeError("embedding_types must name at least one type")
    unknown = [t for t in types if t not in EMBEDDING_TYPES]
    if unknown:
        raise EmbeddingTypeError(
            f"unknown embedding type {unknown[0]!r}; expected one of: {', '.join(EMBEDDING_TYPES)}"
        )
    wanted = tuple(dict.fromkeys(types))
    if not has_ranges and _NEEDS_RANGES.intersection(wanted):
        names = " and ".join(t for t in wanted if t in _NEEDS_RANGES)
        raise EmbeddingTypeError(f"{names} embeddings are not available for this model: it has no calibration ranges")
    return wanted


def quantize_scalar(embeddings: np.ndarray, ranges: Ranges | np.ndarray, *, signed: bool) -> np.ndarray:
    """int8 (signed) or uint8 per-dimension buckets, clipped into range; equals sentence-transformers for float32."""
    emb = _as_matrix(embeddings)
    arr = check_ranges(ranges, emb.shape[1])
    if np.isnan(emb).any():
        raise NonFiniteEmbeddingError()
    starts = arr[0]
    steps = (arr[1] - starts) / _BUCKETS
    steps = np.where(steps == 0, 1, steps)  # a constant dimension maps to bucket 0, not to a division by zero
    q_vals: np.ndarray = np.clip(np.floor((emb - starts) / steps), 0, _BUCKETS)  # (N, D) in [0, 255]: never wraps
    if signed:
        return (q_vals - 128).astype(np.int8)
    return q_vals.astype(np.uint8)


def pack_bits(embeddings: np.ndarray, *, signed: bool) -> np.ndarray:
    """One bit per dimension (x > 0), eight to a byte: (N, ceil(D / 8)) int8 (signed) or uint8."""
    emb = _as_matrix(embeddings)
    packed = np.packbits(emb > 0, axis=-1)  # (N, ceil(D/8)) uint8, zero bits pad the last byte
    if signed:
        return (packed.astype(np.int16) - 128).astype(np.int8)
    return packed


def to_base64(embeddings: np.ndarray) -> list[str]:
    """Each vector's float32 little-endian bytes, base64 encoded (standard alphabet, with padding)."""
    emb = _as_matrix(embeddings).astype("<f4", copy=False)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in emb]


def convert(
    embeddings: np.ndarray, types: Sequence[str], ranges: Ranges | np.ndarray | None = None
) -> dict[str, list[Any]]:
    """The `embeddings` object of a Cohere v2 embed reply: one JSON-ready list per requested type, in request order.

    `embeddings` is (N, D) float32 (already truncated to `output_dimension` and normalized as the route wants);
    `ranges` is the model's calibration (min, max), needed only for int8/uint8.
    """
    wanted = parse_types(types, has_ranges=ranges is not None)
    emb = _as_matrix(embeddings)
    out: dict[str, list[Any]] = {}
    for kind in wanted:
        if kind == "float":
            out[kind] = emb.tolist()
        elif kind in _NEEDS_RANGES and ranges is not None:  # parse_types refused int8/uint8 without ranges
            out[kind] = quantize_scalar(emb, ranges, signed=kind == "int8").tolist()
        elif kind in ("binary", "ubinary"):
            out[kind] = pack_bits(emb, signed=kind == "binary").tolist()
        else:  # base64
            out[kind] = to_base64(emb)
    return out


def _as_matrix(embeddings: np.ndarray) -> np.ndarray:
    """(N, D) float32: the server's pooled output. Float64 input is narrowed first, so results follow float32."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a (N, D) matrix, got shape {emb.shape}")
    return emb
