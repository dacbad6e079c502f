"""bench/corpus.py: the same seed gives the same text; lengths and scripts are really mixed."""

from __future__ import annotations

import pytest

from bench.corpus import sentences


def test_same_seed_same_text_other_seed_other_text() -> None:
    assert sentences(200, seed=3) == sentences(200, seed=3)
    assert sentences(200, seed=3) != sentences(200, seed=4)


def test_mixed_profile_spans_short_and_long_and_non_latin_text() -> None:
    texts = sentences(1000, seed=0)
    words = sorted(len(t.split()) for t in texts)
    assert words[0] <= 10, "both queries and long passages"
    assert words[-1] >= 80, "both queries and long passages"
    assert sum(w <= 10 for w in words) > 300, "mostly short, as in retrieval traffic"
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in texts), "CJK"
    assert any(any(ord(ch) > 0xFFFF for ch in t) for t in texts), "4-byte emoji"


@pytest.mark.parametrize(("profile", "low", "high"), [("short", 3, 10), ("medium", 15, 40), ("long", 80, 180)])
def test_profiles_keep_their_lengths(profile: str, low: int, high: int) -> None:
    for text in sentences(100, seed=1, profile=profile):  # type: ignore[arg-type]
        # CJK phrases with a space inside count as two whitespace-separated words.
        assert low <= len(text.split()) <= 2 * high


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="profile"):
        sentences(1, profile="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        sentences(-1)
