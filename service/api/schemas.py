"""Request bodies. Strict (no coercion of 1 to "1", no null for a string) and closed (unknown fields → 422).

Responses are built as plain dicts in routes.py and rendered by orjson, because they carry numpy arrays that
pydantic would copy into Python floats first; their shapes are documented in docs/api.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.tokenizer import TruncationPolicy

Direction = Literal["Right", "Left", "right", "left"]
# Bounded so a 2**70 "id" is a 422 here, not an int64 overflow (500) when the ids become a numpy array; the
# vocabulary bound is checked later, against the served tokenizer.
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class OpenAIEmbeddingsRequest(_Strict):
    """POST /v1/embeddings. `truncate` is our extension (default true; the OpenAI SDK passes it via extra_body)."""

    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    truncate: bool = True


class TEIEmbedRequest(_Strict):
    """POST /embed (text-embeddings-inference)."""

    inputs: str | list[str]
    normalize: bool = True
    truncate: bool = True
    truncation_direction: Direction = "Right"
    dimensions: int | None = Field(default=None, ge=1)

    def policy(self) -> TruncationPolicy:
        return TruncationPolicy(self.truncate, self.truncation_direction.lower())  # type: ignore[arg-type]


class TEIEmbedAllRequest(_Strict):
    """POST /embed_all: per-token vectors (not normalised)."""

    inputs: str | list[str]
    truncate: bool = True
    truncation_direction: Direction = "Right"

    def policy(self) -> TruncationPolicy:
        return TruncationPolicy(self.truncate, self.truncation_direction.lower())  # type: ignore[arg-type]


class TEITokenizeRequest(_Strict):
    """POST /tokenize: no truncation, whitespace-only text gives an empty token list."""

    inputs: str | list[str]
    add_special_tokens: bool = True


class AttentionOptions(_Strict):
    layers: list[int] | Literal["all"] = "all"
    heads: list[int] | Literal["all"] = "all"
    aggregate: Literal["none", "mean"] = "none"
    format: Literal["float", "base64"] = "float"
    dtype: Literal["float32", "float16"] = "float32"


class EncodeRequest(_Strict):
    """POST /v1/encode: embedding plus tokens, optionally per-token vectors and attention maps."""

    input: str | list[str]
    model: str | None = None
    normalize: bool = True
    token_embeddings: bool = False
    truncate: bool = True
    truncation_direction: Direction = "right"
    dimensions: int | None = Field(default=None, ge=1)
    attention: AttentionOptions | None = None

    def policy(self) -> TruncationPolicy:
        return TruncationPolicy(self.truncate, self.truncation_direction.lower())  # type: ignore[arg-type]
