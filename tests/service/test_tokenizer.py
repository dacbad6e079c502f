"""Tokenizer policy: truncation is flagged or refused (never silent), the char cap applies before tokenizing,
text without content is refused, lone surrogates are refused without echoing, offsets point into the text."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.models import minilm_dir
from service.errors import InvalidRequestError
from service.tokenizer import TextTokenizer, TruncationPolicy

MAX_LEN = 10
MAX_CHARS = 200


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(Path(minilm_dir()) / "tokenizer.json", max_length=MAX_LEN, max_chars=MAX_CHARS)


def test_short_text_is_not_truncated(tok: TextTokenizer) -> None:
    (enc,) = tok.encode_batch(["hello world"], TruncationPolicy())
    assert not enc.truncated
    assert enc.token_count == enc.original_token_count == len(enc.ids) == 4
    assert [t.special for t in enc.tokens] == [True, False, False, True]
    assert [(t.start, t.end) for t in enc.tokens[1:3]] == [(0, 5), (6, 11)]


@pytest.mark.parametrize("direction", ["right", "left"])
def test_long_text_is_truncated_and_flagged(tok: TextTokenizer, direction: str) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    (enc,) = tok.encode_batch([words], TruncationPolicy(truncate=True, direction=direction))  # type: ignore[arg-type]
    assert enc.truncated
    assert enc.token_count == MAX_LEN
    assert enc.original_token_count > MAX_LEN
    # The cut never removes the special tokens at the ends.
    assert enc.tokens[0].text == "[CLS]"
    assert enc.tokens[-1].text == "[SEP]"
    kept_first = enc.tokens[1].start
    assert (kept_first == 0) == (direction == "right")


def test_truncation_off_refuses_with_index_and_count(tok: TextTokenizer) -> None:
    long = " ".join(["word"] * 30)
    with pytest.raises(InvalidRequestError) as info:
        tok.encode_batch(["fine", long], TruncationPolicy(truncate=False))
    assert info.value.param == "input[1]"
    assert "32 tokens" in info.value.message
    assert f"max {MAX_LEN}" in info.value.message


def test_char_cap_applies_before_tokenizing(tok: TextTokenizer) -> None:
    huge = "a" * (MAX_CHARS * 50)
    (enc,) = tok.encode_batch([huge], TruncationPolicy())
    assert enc.truncated
    assert enc.char_count == MAX_CHARS
    with pytest.raises(InvalidRequestError, match=f"characters, max {MAX_CHARS}"):
        tok.encode_batch([huge], TruncationPolicy(truncate=False))


@pytest.mark.parametrize("text", ["", "   \n\t\u3000", "\u200b\u200b", "\u200f"])
def test_text_without_content_is_refused(tok: TextTokenizer, text: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        tok.encode_batch(["ok", text], TruncationPolicy())
    assert info.value.code == "empty_input"
    assert info.value.param == "input[1]"


@pytest.mark.parametrize("text", ["\ud800", "a\udc80b"])
def test_lone_surrogate_is_refused_without_echo(tok: TextTokenizer, text: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        tok.encode_batch([text], TruncationPolicy())
    assert info.value.code == "invalid_text"
    assert text not in info.value.message


@pytest.mark.parametrize("text", ["\x00", "\u202e abc", "[CLS] [SEP] [PAD] [MASK]", "👩‍👩‍👧 🙂", "日本語 한국어 عربى"])
def test_odd_but_valid_text_is_deterministic(tok: TextTokenizer, text: str) -> None:
    a = tok.encode_batch([text + " x"], TruncationPolicy())[0]
    b = tok.encode_batch([text + " x"], TruncationPolicy())[0]
    assert list(a.ids) == list(b.ids)
    assert a.ids.dtype.name == "int64"


def test_token_ids_are_checked_and_truncated(tok: TextTokenizer) -> None:
    (enc,) = tok.encode_ids([[101] + [7592] * 20 + [102]], TruncationPolicy())
    assert enc.truncated
    assert enc.token_count == MAX_LEN
    with pytest.raises(InvalidRequestError, match="outside"):
        tok.encode_ids([[101, 10**9]], TruncationPolicy())
    with pytest.raises(InvalidRequestError, match="tokens, max"):
        tok.encode_ids([[7592] * 20], TruncationPolicy(truncate=False))


def test_tokenize_mode_ignores_window_and_allows_empty(tok: TextTokenizer) -> None:
    long = " ".join(["word"] * 30)
    enc, empty = tok.encode_batch([long, "  "], TruncationPolicy(False), enforce_window=False, allow_empty=True)
    assert enc.token_count == 32
    assert not enc.truncated
    assert [t.text for t in empty.tokens] == ["[CLS]", "[SEP]"]


def test_prefix_is_prepended_before_limits_and_offsets(tok: TextTokenizer) -> None:
    (plain,) = tok.encode_batch(["hi"], TruncationPolicy())
    (prompted,) = tok.encode_batch(["hi"], TruncationPolicy(), prefix="query: ")
    assert prompted.token_count == plain.token_count + 2  # "query", ":"
    assert [t.text for t in prompted.tokens if not t.special] == ["query", ":", "hi"]
    assert prompted.tokens[-2].start == len("query: ")


@pytest.mark.parametrize("text", ["", "   ", "\u200b\u200b"])
def test_a_prompt_does_not_make_an_empty_text_content(tok: TextTokenizer, text: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        tok.encode_batch(["fine", text], TruncationPolicy(), prefix="query: ")
    assert err.value.param == "input[1]"
    assert err.value.code == "empty_input"


def test_positions_name_the_input_in_the_whole_request(tok: TextTokenizer) -> None:
    with pytest.raises(InvalidRequestError) as err:
        tok.encode_batch(["fine", "   "], TruncationPolicy(), positions=[3, 7])
    assert err.value.param == "input[7]"
    assert err.value.code == "empty_input"
    with pytest.raises(InvalidRequestError) as err:
        tok.encode_ids([[101, 102], [10**9]], TruncationPolicy(), positions=[0, 5])
    assert err.value.param == "input[5]"


def test_decode_round_trips_and_checks_ids(tok: TextTokenizer) -> None:
    (enc,) = tok.encode_batch(["hello world"], TruncationPolicy())
    ids = enc.ids.tolist()
    assert tok.decode_batch([ids], skip_special_tokens=True) == ["hello world"]
    assert tok.decode_batch([ids], skip_special_tokens=False) == ["[CLS] hello world [SEP]"]
    with pytest.raises(InvalidRequestError, match="outside"):
        tok.decode_batch([ids, [tok.vocab_size]], skip_special_tokens=True)
    with pytest.raises(InvalidRequestError) as err:
        tok.decode_batch([[]], skip_special_tokens=True)
    assert err.value.code == "empty_input"
