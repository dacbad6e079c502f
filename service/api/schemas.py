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


def truncation_policy(truncate: bool | None, direction: Direction, auto_truncate: bool) -> TruncationPolicy:
    """A request's `truncate` wins; null or absent falls back to the server's EMBED_AUTO_TRUNCATE."""
    return TruncationPolicy(auto_truncate if truncate is None else truncate,
                            "left" if direction.lower() == "left" else "right")


class OpenAIEmbeddingsRequest(_Strict):
    """POST /v1/embeddings. `truncate` is our extension (default true; the OpenAI SDK passes it via extra_body)."""

    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    truncate: bool | None = None  # null or absent: EMBED_AUTO_TRUNCATE
    # Extensions: a sentence-transformers prompt by name (TEI's prompt_name), or the role of the texts, which
    # picks the model's `query` / `document` (or `passage`) prompt where it defines one.
    prompt_name: str | None = None
    input_type: Literal["query", "document"] | None = None

    def policy(self, auto_truncate: bool) -> TruncationPolicy:
        return truncation_policy(self.truncate, "right", auto_truncate)


# TEI's `Input`: one text, one list of token ids, or a batch of either (mixed is allowed, as in TEI).
TEIInput = str | list[TokenId] | list[str | list[TokenId]]
# TEI's `truncate` is nullable: null or absent means the server's EMBED_AUTO_TRUNCATE (on by default, as TEI 1.9).
Truncate = bool | None


class _TEITruncating(_Strict):
    model: str | None = None  # our extension: which served model (default: the first)
    truncate: Truncate = None
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None

    def policy(self, auto_truncate: bool) -> TruncationPolicy:
        return truncation_policy(self.truncate, self.truncation_direction, auto_truncate)


class TEIEmbedRequest(_TEITruncating):
    """POST /embed (text-embeddings-inference), and POST / and /invocations with a non-object `inputs`."""

    inputs: TEIInput
    normalize: bool = True
    dimensions: int | None = Field(default=None, ge=1)


class TEIEmbedAllRequest(_TEITruncating):
    """POST /embed_all: per-token vectors (not normalised)."""

    inputs: TEIInput


class TEITokenizeRequest(_Strict):
    """POST /tokenize: no truncation, whitespace-only text gives an empty token list."""

    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None
    model: str | None = None


class TEIDecodeRequest(_Strict):
    """POST /decode: token ids back to text; always answers a list of strings, one per id list (as TEI)."""

    ids: list[TokenId] | list[list[TokenId]]
    skip_special_tokens: bool = True
    model: str | None = None


class SimilarityInput(_Strict):
    source_sentence: str
    sentences: list[str]


class SimilarityParameters(_TEITruncating):
    """TEI's `parameters` of a similarity request: truncation and prompt, as on /embed."""


class TEISimilarityRequest(_Strict):
    """POST /similarity, and POST / with an object `inputs` (huggingface_hub's `sentence_similarity`)."""

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None
    model: str | None = None


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
    truncate: bool | None = None
    truncation_direction: Direction = "right"
    dimensions: int | None = Field(default=None, ge=1)
    attention: AttentionOptions | None = None

    def policy(self, auto_truncate: bool) -> TruncationPolicy:
        return truncation_policy(self.truncate, self.truncation_direction, auto_truncate)


class ExplainRequest(_Strict):
    """POST /v1/explain: the self-attention walk-through of one input (docs/explain.md). Range checks against
    the model (layer, head, token) happen in the engine, which knows its sizes."""

    input: str
    model: str | None = None
    layer: int = 0
    head: int = 0
    token: int | None = None  # None: the first token that stands for input characters
    neighbours: int = Field(default=3, ge=0, le=16)


class SimilarityExplainRequest(_Strict):
    """POST /v1/similarity/explain: the cosine of two inputs split into token-pair contributions."""

    input: list[str] = Field(min_length=2, max_length=2)
    model: str | None = None


# --- task heads: rerank, classify, sparse (TEI) and Cohere / Jina ---------------------------------------------


class TEIRerankRequest(_Strict):
    """POST /rerank (text-embeddings-inference): score each of `texts` against `query`."""

    query: str
    texts: list[str]
    truncate: Truncate = None
    truncation_direction: Direction = "Right"
    raw_scores: bool = False
    return_text: bool = False
    model: str | None = None  # our extension: which served reranker (default: the first model)

    def policy(self, auto_truncate: bool) -> TruncationPolicy:
        return truncation_policy(self.truncate, self.truncation_direction, auto_truncate)


# TEI's PredictInput: one text, one pair [a, b], or a batch of either ([[a], [a, b], ...]).
PredictInput = str | list[str] | list[list[str]]


class TEIPredictRequest(_Strict):
    """POST /predict: class scores of a classifier (or a reranker's one score) per text or text pair."""

    inputs: PredictInput
    truncate: Truncate = None
    truncation_direction: Direction = "Right"
    raw_scores: bool = False
    model: str | None = None

    def policy(self, auto_truncate: bool) -> TruncationPolicy:
        return truncation_policy(self.truncate, self.truncation_direction, auto_truncate)


class TEIEmbedSparseRequest(_TEITruncating):
    """POST /embed_sparse: a SPLADE model's non-zero vocabulary weights per input."""

    inputs: TEIInput


class DocumentText(_Strict):
    text: str


class CohereRerankRequest(_Strict):
    """POST /v2/rerank (Cohere) and /v1/rerank (Cohere v1 and Jina): `documents` as strings or {"text"}."""

    model: str | None = None
    query: str
    documents: list[str | DocumentText]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool | None = None  # default: false on /v2 (Cohere), true on /v1 (Jina)

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


CohereEmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
CohereInputType = Literal["search_document", "search_query", "classification", "clustering"]


class CohereEmbedRequest(_Strict):
    """POST /v2/embed (Cohere): float and compact vectors of `texts`."""

    model: str | None = None
    texts: list[str]
    input_type: CohereInputType | None = None
    embedding_types: list[CohereEmbeddingType] | None = None  # default ["float"]
    output_dimension: int | None = Field(default=None, ge=1)
    truncate: Literal["NONE", "START", "END"] = "END"

    def policy(self) -> TruncationPolicy:
        if self.truncate == "NONE":
            return TruncationPolicy(truncate=False)
        return TruncationPolicy(truncate=True, direction="left" if self.truncate == "START" else "right")
