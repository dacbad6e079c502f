"""Cohere embedding_types: bit-for-bit equal to sentence-transformers' quantize_embeddings, clipping, refusals.

sentence-transformers is the reference here only (tests may import it; service/ never does).
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.compact import (
    EMBEDDING_TYPES,
    CalibrationRangesError,
    EmbeddingTypeError,
    NonFiniteEmbeddingError,
    calibration_ranges,
    check_ranges,
    convert,
    pack_bits,
    parse_types,
    quantize_scalar,
    to_base64,
)
from service.errors import InvalidRequestError

quantization = pytest.importorskip("sentence_transformers.util.quantization")  # 6.x home; .quantization is deprecated
quantize_embeddings = quantization.quantize_embeddings


def _normalized(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Unit vectors with a per-dimension offset and scale, like a real encoder's (not centred, not isotropic)."""
    raw = rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, size=d) + rng.normal(scale=0.5, size=d)
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    """(calibration set, queries inside its ranges) of normalized 384-d vectors."""
    rng = np.random.default_rng(1234)
    calib = _normalized(rng, 2000, 384)
    lo, hi = calib.min(axis=0), calib.max(axis=0)
    queries = np.clip(_normalized(rng, 64, 384), lo, hi)  # in range: the equality cannot hinge on clipping
    return calib, queries


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_scalar_matches_sentence_transformers_with_ranges(corpus, precision: str) -> None:
    calib, queries = corpus
    ranges = calibration_ranges(calib)
    expected = quantize_embeddings(queries, precision=precision, ranges=np.vstack(ranges))
    got = quantize_scalar(queries, ranges, signed=precision == "int8")
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert convert(queries, [precision], ranges)[precision] == expected.tolist()


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_scalar_matches_sentence_transformers_with_calibration_embeddings(corpus, precision: str) -> None:
    calib, queries = corpus
    expected = quantize_embeddings(queries, precision=precision, calibration_embeddings=calib)
    got = np.asarray(convert(queries, [precision], calibration_ranges(calib))[precision])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_scalar_matches_on_uniform_random_values(precision: str) -> None:
    """Unnormalized values over the whole range, including values exactly at min and max of the calibration."""
    rng = np.random.default_rng(7)
    calib = rng.uniform(-3, 3, size=(500, 96)).astype(np.float32)
    queries = np.concatenate([calib[:50], calib.min(axis=0)[None], calib.max(axis=0)[None]])
    expected = quantize_embeddings(queries, precision=precision, calibration_embeddings=calib)
    np.testing.assert_array_equal(
        quantize_scalar(queries, calibration_ranges(calib), signed=precision == "int8"), expected
    )


def test_constant_dimension_maps_like_sentence_transformers() -> None:
    """A dimension with max == min has step 1 in sentence-transformers (no division by zero)."""
    rng = np.random.default_rng(3)
    calib = rng.normal(size=(100, 16)).astype(np.float32)
    calib[:, 5] = 0.25
    ranges = calibration_ranges(calib)
    for precision in ("int8", "uint8"):
        expected = quantize_embeddings(calib[:10], precision=precision, ranges=np.vstack(ranges))
        np.testing.assert_array_equal(quantize_scalar(calib[:10], ranges, signed=precision == "int8"), expected)


def test_out_of_range_values_clip_instead_of_wrapping() -> None:
    ranges = (np.full(4, -0.5, dtype=np.float32), np.full(4, 0.5, dtype=np.float32))
    emb = np.array([[-10.0, -0.5000001, 0.5000001, 10.0], [-np.inf, np.inf, -0.5, 0.5]], dtype=np.float32)
    uint8 = quantize_scalar(emb, ranges, signed=False)
    int8 = quantize_scalar(emb, ranges, signed=True)
    assert uint8[0].tolist() == [0, 0, 255, 255]
    assert int8[0].tolist() == [-128, -128, 127, 127]
    assert uint8[1, :2].tolist() == [0, 255]
    assert int8[1, :2].tolist() == [-128, 127]
    assert uint8[1, 2] == 0
    assert int8[1, 2] == -128  # min is bucket 0
    # sentence-transformers 6.2.0 clips too; pin that, so a change there cannot silently split the two
    np.testing.assert_array_equal(uint8, quantize_embeddings(emb, precision="uint8", ranges=np.vstack(ranges)))


@pytest.mark.parametrize("dim", [384, 13, 1, 8, 9])
@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_matches_sentence_transformers(precision: str, dim: int) -> None:
    rng = np.random.default_rng(dim)
    emb = _normalized(rng, 40, dim)
    emb[0, : min(dim, 4)] = 0.0  # exactly zero is not positive: bit 0
    expected = quantize_embeddings(emb, precision=precision)
    got = pack_bits(emb, signed=precision == "binary")
    assert got.dtype == expected.dtype
    assert got.shape == (40, (dim + 7) // 8)
    np.testing.assert_array_equal(got, expected)
    assert convert(emb, [precision])[precision] == expected.tolist()


def test_binary_bits_are_big_endian_and_padding_is_zero() -> None:
    emb = np.array([[1, -1, -1, -1, -1, -1, -1, -1, 1, 1, -1]], dtype=np.float32)  # D = 11: 5 padding bits
    assert pack_bits(emb, signed=False).tolist() == [[0b1000_0000, 0b1100_0000]]
    assert pack_bits(emb, signed=True).tolist() == [[0, 64]]  # byte - 128
    bits = np.unpackbits(pack_bits(emb, signed=False), axis=-1, count=11)
    assert bits.tolist() == [(emb[0] > 0).astype(int).tolist()]


def test_base64_is_float32_little_endian() -> None:
    emb = np.array([[1.0, -2.5, 0.1], [0.0, 3.0, -0.0]], dtype=np.float32)
    encoded = to_base64(emb)
    assert len(encoded) == 2
    for row, text in zip(emb, encoded, strict=True):
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(text), dtype="<f4"), row)
    assert encoded[0] == base64.b64encode(np.array([1.0, -2.5, 0.1], dtype="<f4").tobytes()).decode()


def test_convert_returns_json_ready_lists_in_request_order() -> None:
    rng = np.random.default_rng(0)
    emb = _normalized(rng, 3, 16)
    out = convert(emb, ["ubinary", "float", "int8", "float", "base64"], calibration_ranges(_normalized(rng, 50, 16)))
    assert list(out) == ["ubinary", "float", "int8", "base64"]  # duplicates collapse, order kept
    assert all(len(v) == 3 for v in out.values())
    assert out["float"] == emb.tolist()
    assert isinstance(out["float"][0][0], float)
    assert all(type(x) is int for x in out["int8"][0] + out["ubinary"][0])
    assert isinstance(out["base64"][0], str)


def test_every_type_is_served_with_ranges() -> None:
    emb = _normalized(np.random.default_rng(5), 2, 32)
    assert set(convert(emb, EMBEDDING_TYPES, calibration_ranges(emb))) == set(EMBEDDING_TYPES)


def test_empty_batch_gives_empty_lists() -> None:
    emb = np.zeros((0, 16), dtype=np.float32)
    ranges = (np.zeros(16, np.float32), np.ones(16, np.float32))
    assert convert(emb, EMBEDDING_TYPES, ranges) == {t: [] for t in EMBEDDING_TYPES}


@pytest.mark.parametrize("types", [["float16"], ["float", "INT8"], [""], []])
def test_unknown_or_no_type_is_a_request_error(types: list[str]) -> None:
    with pytest.raises(EmbeddingTypeError) as info:
        convert(np.zeros((1, 8), np.float32), types)
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, InvalidRequestError)
    assert err.param == "embedding_types"
    assert err.code == "invalid_embedding_type"
    assert "expected one of" in err.message or "at least one" in err.message


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_scalar_types_without_ranges_are_refused_before_any_work(kind: str) -> None:
    with pytest.raises(EmbeddingTypeError, match=f"{kind} embeddings are not available"):
        parse_types(["float", kind], has_ranges=False)
    with pytest.raises(EmbeddingTypeError, match="no calibration ranges"):
        convert(np.zeros((1, 8), np.float32), [kind], None)


def test_types_that_need_no_ranges_are_served_without_them() -> None:
    assert parse_types(["float", "binary", "ubinary", "base64"], has_ranges=False) == (
        "float",
        "binary",
        "ubinary",
        "base64",
    )
    assert parse_types("float", has_ranges=False) == ("float",)  # a bare string is one type, not six letters


@pytest.mark.parametrize(
    ("ranges", "match"),
    [
        ((np.zeros(7), np.ones(7)), r"shape \(2, 8\)"),
        (np.zeros((3, 8)), r"shape \(2, 8\)"),
        ((np.ones(8), np.zeros(8)), "max < min"),
        ((np.zeros(8), np.full(8, np.nan)), "finite"),
    ],
)
def test_bad_calibration_ranges_are_refused(ranges, match: str) -> None:
    with pytest.raises(CalibrationRangesError, match=match):
        check_ranges(ranges, 8)
    with pytest.raises(CalibrationRangesError):
        convert(np.zeros((1, 8), np.float32), ["int8"], ranges)


def test_check_ranges_accepts_pair_or_sentence_transformers_array() -> None:
    lo, hi = np.zeros(8), np.ones(8)
    np.testing.assert_array_equal(check_ranges((lo, hi), 8), check_ranges(np.vstack([lo, hi]), 8))
    assert check_ranges((lo, hi), 8).dtype == np.float32


def test_calibration_needs_at_least_two_vectors() -> None:
    with pytest.raises(CalibrationRangesError):
        calibration_ranges(np.zeros((1, 8), np.float32))


def test_nan_is_an_inference_error_for_scalar_types() -> None:
    emb = np.zeros((2, 8), np.float32)
    emb[1, 3] = np.nan
    ranges = (np.full(8, -1.0), np.ones(8))
    with pytest.raises(NonFiniteEmbeddingError):
        convert(emb, ["int8"], ranges)


def test_embeddings_must_be_a_matrix() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        convert(np.zeros(8, np.float32), ["float"])


def test_service_compact_imports_no_torch() -> None:
    code = "import sys, service.compact; bad = {'torch', 'sentence_transformers'} & set(sys.modules); print(bad)"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert result.stdout.strip() == "set()"
