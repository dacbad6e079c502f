"""service/explain.py's arithmetic: the token-pair split of a cosine, rollout, trajectory, coverage, notes."""

from __future__ import annotations

import numpy as np
import pytest

from service import explain
from service.tokenizer import Encoded, Token

RNG = np.random.default_rng(7)


def _pooled(hidden: np.ndarray, mode: str) -> np.ndarray:
    weights = explain.pooling_weights(mode, len(hidden))
    assert weights is not None
    return (weights[:, None] * hidden).sum(axis=0)


@pytest.mark.parametrize("mode", ["mean", "weightedmean", "mean_sqrt_len_tokens"])
def test_sum_poolings_split_exactly(mode: str) -> None:
    a, b = RNG.normal(size=(7, 16)), RNG.normal(size=(4, 16))
    pa, pb = _pooled(a, mode), _pooled(b, mode)
    out = explain.similarity_decomposition((a, b), (pa, pb), mode, dense=False)
    cosine = pa @ pb / (np.linalg.norm(pa) * np.linalg.norm(pb))
    assert out["decomposable"] is True
    assert out["contributions"].shape == (7, 4)
    assert out["sum"] == pytest.approx(cosine, abs=1e-12)
    assert out["cosine"] == pytest.approx(cosine, abs=1e-12)
    np.testing.assert_allclose(out["row_sums"], out["contributions"].sum(axis=1))


def test_weighted_mean_weights_grow_with_position() -> None:
    weights = explain.pooling_weights("weightedmean", 4)
    assert weights is not None
    np.testing.assert_allclose(weights, [0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize(("mode", "dense", "phrase"), [("cls", False, "first ([CLS])"),
                                                       ("lasttoken", False, "last token"),
                                                       ("max", False, "maximum"), ("mean", True, "Dense")])
def test_other_chains_say_why_they_do_not_split(mode: str, dense: bool, phrase: str) -> None:
    a, b = RNG.normal(size=(3, 8)), RNG.normal(size=(5, 8))
    out = explain.similarity_decomposition((a, b), (a[0], b[0]), mode, dense=dense)
    assert out["decomposable"] is False
    assert out["contributions"] is None
    assert phrase in out["note"]
    assert out["token_cosines"].shape == (3, 5)
    assert out["cosine"] == pytest.approx(a[0] @ b[0] / (np.linalg.norm(a[0]) * np.linalg.norm(b[0])))


def test_rollout_of_identity_attention_is_identity_and_rows_stay_distributions() -> None:
    eye = np.broadcast_to(np.eye(5), (3, 2, 5, 5))
    np.testing.assert_allclose(explain.rollout(eye)[-1], np.eye(5))
    probs = RNG.random(size=(4, 3, 6, 6))
    probs /= probs.sum(axis=-1, keepdims=True)
    rolled = explain.rollout(probs)
    np.testing.assert_allclose(rolled.sum(axis=-1), 1.0)
    first = 0.5 * probs[0].mean(axis=0) + 0.5 * np.eye(6)
    np.testing.assert_allclose(rolled[0], first / first.sum(axis=-1, keepdims=True))


def test_trajectory_lists_other_tokens_by_cosine() -> None:
    start = np.eye(3)
    layers = np.array([[[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]]])
    (step,) = explain.trajectory(start, layers, token=0, neighbours=2)
    assert step["cosine_to_input"] == pytest.approx(1.0)
    assert [n["token"] for n in step["nearest"]] == [1, 2]


def _encoded(tokens: list[Token]) -> Encoded:
    ids = np.array([t.id for t in tokens], dtype=np.int64)
    return Encoded(ids=ids, truncated=False, token_count=len(tokens), original_token_count=len(tokens),
                   char_count=9, token_source=lambda: tuple(tokens))


def test_unknown_share_counts_content_tokens_only() -> None:
    tokens = [Token(101, "[CLS]", None, None, True), Token(100, "[UNK]", 0, 1, False),
              Token(7, "a", 2, 3, False), Token(102, "[SEP]", None, None, True)]
    encoded = _encoded(tokens)
    assert explain.unknown_share(encoded, 100) == (1, 0.5)
    assert explain.unknown_share(encoded, None) == (0, 0.0)
    assert explain.default_token(encoded) == 1


def test_position_notes_name_how_position_enters() -> None:
    assert "rotary" in explain.position_note({"position": "rotary"}, {})
    assert "relative-position bias" in explain.position_note({"position": "learned", "relative_bias": True}, {})
    assert "RoBERTa" in explain.position_note({"position": "learned"}, {"position_ids": "padding_offset"})
