"""Text -> token ids with an explicit truncation policy (never silent) and per-token offsets.

tokenizer.json arrives with truncation and padding disabled (contract §1). We never turn them on, because the
`Tokenizer` object is shared across threads and its truncation setting is global mutable state. Instead each text
is encoded without special tokens, cut by `Encoding.truncate` when allowed, and only then given its special tokens
by `post_process`, so the cut never lands on [SEP] and we always know the length before the cut.

Characters are capped before tokenizing so a 1 MB string cannot hold a tokenizer thread for long.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tokenizers import Encoding, Tokenizer

from service.errors import ArtifactError, InvalidRequestError

logger = logging.getLogger(__name__)

Direction = Literal["right", "left"]


@dataclass(frozen=True)
class Token:
    """One token as shown to clients; `start`/`end` are character offsets into the (capped) input text."""

    id: int
    text: str
    start: int | None
    end: int | None
    special: bool


@dataclass(frozen=True)
class Encoded:
    """A tokenized input, ready for the batcher.

    `token_count` is the model-visible length (specials included); `original_token_count` is what the text
    would have needed without truncation (counted on the character-capped text when that cap applied).
    """

    ids: np.ndarray  # (T,) int64
    truncated: bool
    token_count: int
    original_token_count: int
    char_count: int
    token_source: Callable[[], tuple[Token, ...]] = field(repr=False, compare=False, default=tuple)
    # Tokens of the prompt at the start (sentence-transformers' count: the prompt's tokens with specials, less
    # the closing one), for models that leave the prompt out of pooling; 0 without a prompt.
    prompt_length: int = 0
    type_ids: np.ndarray | None = None  # (T,) segment ids of a text pair; None for a single text

    @functools.cached_property
    def tokens(self) -> tuple[Token, ...]:
        """Built on first use only: most requests (/embed) never look at tokens, and 16k Python objects per
        full batch would cost more than the tokenizing itself."""
        return self.token_source()


@dataclass(frozen=True)
class TruncationPolicy:
    """What to do with an input longer than the model's window."""

    truncate: bool = True
    direction: Direction = "right"


class TextTokenizer:
    """Thread-safe wrapper over `tokenizers.Tokenizer` that applies the service's limits."""

    def __init__(self, path: Path, *, max_length: int, max_chars: int, vocab_size: int | None = None) -> None:
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception on a bad file
            raise ArtifactError(f"tokenizer unreadable: {path}: {exc}") from None
        # A tokenizer.json that truncates or pads on its own would hide truncation from us.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_length = max_length
        self.max_chars = max_chars
        self.vocab_size = vocab_size or self._tok.get_vocab_size(with_added_tokens=True)
        self._n_special = self._tok.num_special_tokens_to_add(False)
        if max_length <= self._n_special:
            raise ArtifactError(f"max_seq_length {max_length} leaves no room for text in {path}")

    @property
    def content_budget(self) -> int:
        """Tokens left for text once the special tokens ([CLS], [SEP]) are placed."""
        return self.max_length - self._n_special

    def encode_batch(
        self,
        texts: Sequence[str],
        policy: TruncationPolicy,
        *,
        add_special_tokens: bool = True,
        enforce_window: bool = True,
        allow_empty: bool = False,
        prefix: str = "",
        positions: Sequence[int] | None = None,
    ) -> list[Encoded]:
        """Tokenize `texts`; raises InvalidRequestError (param ``input[i]``) for unusable or over-long ones.

        `enforce_window=False` (for /tokenize) skips the model-window check; the character cap always applies.
        `prefix` (a sentence-transformers prompt) is prepended to every text before anything else, so limits,
        truncation and offsets see the text the model sees. `positions` are the texts' indexes in the request,
        for error messages, when they are only some of its inputs.
        Blocking (the Rust tokenizer parallelises internally); call `aencode_batch` from async code.
        """
        capped: list[str] = []
        char_cut: list[bool] = []
        for j, text in enumerate(texts):
            i = positions[j] if positions is not None else j
            _check_encodable(text, i)
            text = prefix + text
            if len(text) > self.max_chars:
                if not policy.truncate:
                    raise InvalidRequestError(
                        f"input[{i}] has {len(text)} characters, max {self.max_chars} (truncation is off)",
                        param=f"input[{i}]",
                        code="input_too_long",
                    )
                text = text[: self.max_chars]
                char_cut.append(True)
            else:
                char_cut.append(False)
            capped.append(text)

        raw = self._tok.encode_batch(capped, add_special_tokens=False)
        # A prompt's own tokens are not content: "query: " + "   " is as empty as "   " (decided once per call).
        prefix_tokens = len(self._tok.encode(prefix, add_special_tokens=False).ids) if prefix else 0
        prompt_length = len(self._tok.encode(prefix, add_special_tokens=True).ids) - 1 if prefix else 0
        out: list[Encoded] = []
        budget = self.content_budget
        for j, (text, enc) in enumerate(zip(capped, raw, strict=True)):
            i = positions[j] if positions is not None else j
            n_content = len(enc.ids)
            # With byte-level BPE the prompt's last token can merge with the text's first, so a short text may
            # add no token to the prompt's count: only then tokenize the text alone to tell (rare, cheap).
            if (n_content <= prefix_tokens and not allow_empty
                    and not self._tok.encode(text[len(prefix):], add_special_tokens=False).ids):
                raise InvalidRequestError(
                    f"input[{i}] must contain non-whitespace text (it has no tokens after normalisation)",
                    param=f"input[{i}]",
                    code="empty_input",
                )
            original = n_content + (self._n_special if add_special_tokens else 0)
            truncated = char_cut[j]
            if enforce_window and n_content > budget:
                if not policy.truncate:
                    raise InvalidRequestError(
                        f"input[{i}] has {original} tokens, max {self.max_length} (truncation is off)",
                        param=f"input[{i}]",
                        code="input_too_long",
                    )
                enc.truncate(budget, direction=policy.direction)
                truncated = True
            if add_special_tokens:
                enc = self._tok.post_process(enc, add_special_tokens=True)
            out.append(self._to_encoded(text, enc, truncated, original, prompt_length if add_special_tokens else 0))
        return out

    def encode_ids(self, ids_list: Sequence[Sequence[int]], policy: TruncationPolicy,
                   positions: Sequence[int] | None = None) -> list[Encoded]:
        """Accept pre-tokenized input verbatim (specials are the client's business), with the same limits."""
        out: list[Encoded] = []
        for j, ids in enumerate(ids_list):
            i = positions[j] if positions is not None else j
            arr = self._checked_ids(ids, i)
            original = len(arr)
            truncated = False
            if original > self.max_length:
                if not policy.truncate:
                    raise InvalidRequestError(
                        f"input[{i}] has {original} tokens, max {self.max_length} (truncation is off)",
                        param=f"input[{i}]",
                        code="input_too_long",
                    )
                arr = arr[: self.max_length] if policy.direction == "right" else arr[-self.max_length :]
                truncated = True

            def source(arr: np.ndarray = arr) -> tuple[Token, ...]:
                return tuple(Token(int(t), self._tok.id_to_token(int(t)) or "", None, None, False) for t in arr)

            out.append(Encoded(np.ascontiguousarray(arr), truncated, len(arr), original, 0, source))
        return out

    def _checked_ids(self, ids: Sequence[int], index: int) -> np.ndarray:
        if len(ids) == 0:
            raise InvalidRequestError(f"input[{index}] must not be empty", param=f"input[{index}]",
                                      code="empty_input")
        arr = np.asarray(ids, dtype=np.int64)
        if int(arr.min()) < 0 or int(arr.max()) >= self.vocab_size:
            raise InvalidRequestError(
                f"input[{index}] has token ids outside [0, {self.vocab_size})", param=f"input[{index}]"
            )
        return arr

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary's spelling of one id (e.g. the unknown token's "[UNK]"), None when out of range."""
        return self._tok.id_to_token(token_id)

    def decode_batch(self, ids_list: Sequence[Sequence[int]], *, skip_special_tokens: bool) -> list[str]:
        """Token ids back to text (TEI's /decode), with the same id checks as token-id inputs."""
        checked = [self._checked_ids(ids, i).tolist() for i, ids in enumerate(ids_list)]
        return self._tok.decode_batch(checked, skip_special_tokens=skip_special_tokens)

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], policy: TruncationPolicy, *,
                     param: str = "texts") -> list[Encoded]:
        """Tokenize (first, second) text pairs as one sequence each, with the model's pair template ([CLS] a
        [SEP] b [SEP] and segment ids 0/1, or <s> a </s></s> b </s>), for cross-encoders.

        Too long a pair is cut the way transformers' `truncation="longest_first"` does (what CrossEncoder and
        TEI use): tokens come off the longer side until it fits, so a long document never pushes the query out.
        Truncation off makes it a 422 instead. Both sides need a token of text. `param` names the request field
        of the second texts in errors.
        """
        firsts = [self._capped(a, policy, 0, param) for a, _ in pairs]
        seconds = [self._capped(b, policy, j, param) for j, (_, b) in enumerate(pairs)]
        raw = self._tok.encode_batch([t for t, _ in firsts] + [t for t, _ in seconds], add_special_tokens=False)
        n = len(pairs)
        budget = self.max_length - self._tok.num_special_tokens_to_add(True)
        out: list[Encoded] = []
        for j in range(n):
            first, second = raw[j], raw[n + j]
            if not first.ids:
                raise InvalidRequestError("query must contain non-whitespace text", param="query", code="empty_input")
            if not second.ids:
                raise InvalidRequestError(f"{param}[{j}] must contain non-whitespace text", param=f"{param}[{j}]",
                                          code="empty_input")
            a, b = len(first.ids), len(second.ids)
            original = a + b + self._tok.num_special_tokens_to_add(True)
            truncated = firsts[j][1] or seconds[j][1]
            if a + b > budget:
                if not policy.truncate:
                    raise InvalidRequestError(
                        f"{param}[{j}] with the query has {original} tokens, max {self.max_length} (truncation is off)",
                        param=f"{param}[{j}]", code="input_too_long")
                keep_a, keep_b = _longest_first(a, b, budget)
                if keep_a < 1:
                    raise InvalidRequestError(f"the query leaves no room for {param}[{j}] in {self.max_length} "
                                              "tokens", param="query", code="input_too_long")
                first.truncate(keep_a, direction=policy.direction)
                second.truncate(keep_b, direction=policy.direction)
                truncated = True
            enc = self._tok.post_process(first, second, add_special_tokens=True)
            text = firsts[j][0] + "\n" + seconds[j][0]
            encoded = self._to_encoded(text, enc, truncated, original)
            out.append(replace(encoded, type_ids=np.asarray(enc.type_ids, dtype=np.int64)))
        return out

    def _capped(self, text: str, policy: TruncationPolicy, index: int, param: str) -> tuple[str, bool]:
        """The character cap of one text: cut (and flagged) when truncating, else a 422."""
        _check_encodable(text, index)
        if len(text) <= self.max_chars:
            return text, False
        if not policy.truncate:
            raise InvalidRequestError(f"{param}[{index}] has {len(text)} characters, max {self.max_chars} "
                                      "(truncation is off)", param=f"{param}[{index}]", code="input_too_long")
        return text[: self.max_chars], True

    async def aencode_pairs(self, pairs: Sequence[tuple[str, str]], policy: TruncationPolicy,
                            executor: Executor | None = None, **options: Any) -> list[Encoded]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self.encode_pairs, pairs, policy, **options))

    async def aencode_batch(
        self,
        texts: Sequence[str],
        policy: TruncationPolicy,
        executor: Executor | None = None,
        **options: Any,
    ) -> list[Encoded]:
        """Tokenize off the event loop, so a long text never stalls other requests or /health."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self.encode_batch, texts, policy, **options))

    @staticmethod
    def _to_encoded(text: str, enc: Encoding, truncated: bool, original: int, prompt_length: int = 0) -> Encoded:
        ids = np.asarray(enc.ids, dtype=np.int64)

        def source() -> tuple[Token, ...]:
            return tuple(
                Token(id=int(tid), text=tok, start=None if sp else start, end=None if sp else end, special=bool(sp))
                for tid, tok, (start, end), sp in zip(
                    enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask, strict=True
                )
            )

        return Encoded(ids, truncated, len(ids), original, len(text), source, prompt_length)


def _longest_first(a: int, b: int, budget: int) -> tuple[int, int]:
    """transformers' longest_first: remove one token at a time from the longer side (the second on a tie)."""
    excess = a + b - budget
    if excess <= 0:
        return a, b
    diff = abs(a - b)
    cut = min(excess, diff)
    if a > b:
        a -= cut
    else:
        b -= cut
    excess -= cut
    # Now equal lengths (or done): alternate, the second side first, as the one-at-a-time loop does.
    b -= (excess + 1) // 2
    a -= excess // 2
    return a, b


def _check_encodable(text: str, index: int) -> None:
    """Lone surrogates cannot cross into Rust; report them without echoing the text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(
            f"input[{index}] is not valid Unicode text (lone surrogate)", param=f"input[{index}]", code="invalid_text"
        ) from None
