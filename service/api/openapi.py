"""What /openapi.json says about bodies and replies, so clients and fuzzers (schemathesis) can check both.

Bodies are parsed by hand (api/jsonio.py) and replies are built as dicts rendered by orjson, so FastAPI can infer
neither; this module writes them into the generated document: each POST route's request schema, every route's
success schema and content type, and the error statuses it can answer with, all in the one error shape.
The reply models below are documentation only: they are never instantiated on the request path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, RootModel

from service.api.errors import family_of
from service.api.schemas import (
    CohereEmbedRequest,
    CohereRerankRequest,
    EncodeRequest,
    ExplainRequest,
    OpenAIEmbeddingsRequest,
    SimilarityExplainRequest,
    TEIDecodeRequest,
    TEIEmbedAllRequest,
    TEIEmbedRequest,
    TEIEmbedSparseRequest,
    TEIPredictRequest,
    TEIRerankRequest,
    TEISimilarityRequest,
    TEITokenizeRequest,
)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every non-2xx reply (docs/api.md §Errors)."""

    error: ErrorDetail


class TEIErrorResponse(BaseModel):
    """Every non-2xx reply on text-embeddings-inference's routes (TEI's ErrorResponse)."""

    error: str
    error_type: Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]


class CohereErrorResponse(BaseModel):
    """Every non-2xx reply on Cohere's routes (/v2/rerank, /v2/embed) and Jina's /v1/rerank."""

    id: str
    message: str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: Usage


class TEIEmbedResponse(RootModel[list[list[float]]]):
    pass


class TEIEmbedAllResponse(RootModel[list[list[list[float]]]]):
    pass


class TEISimilarityResponse(RootModel[list[float]]):
    pass


class TEIDecodeResponse(RootModel[list[str]]):
    pass


class TEIRootResponse(RootModel[list[list[float]] | list[float]]):
    """POST / and /invocations: /embed's reply, or /similarity's for an object `inputs`."""


class TEIToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TEITokenizeResponse(RootModel[list[list[TEIToken]]]):
    pass


class EncodeToken(BaseModel):
    id: int
    text: str
    start: int | None
    end: int | None
    special: bool
    unknown: bool


class AttentionMaps(BaseModel):
    layers: list[int]
    heads: list[int] | Literal["mean"]
    shape: list[int]
    dtype: Literal["float32", "float16"]
    format: Literal["float", "base64"]
    data: str | list[Any]  # base64, or nested lists of `shape`


class EncodeItem(BaseModel):
    index: int
    tokens: list[EncodeToken]
    embedding: list[float]
    truncated: bool
    token_count: int
    token_embeddings: list[list[float]] | None = None
    attention: AttentionMaps | None = None


class EncodeResponse(BaseModel):
    object: Literal["list"]
    model: str
    usage: Usage
    data: list[EncodeItem]


class Status(BaseModel):
    status: str
    uptime_s: float | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    task: Literal["embed", "rerank", "classify", "sparse"]


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class TEIRerankResponse(RootModel[list[TEIRank]]):
    pass


class TEIPrediction(BaseModel):
    score: float
    label: str


class TEIPredictResponse(RootModel[list[TEIPrediction] | list[list[TEIPrediction]]]):
    """One list of labels by score for one input, a list of them for a batch."""


class TEISparseValue(BaseModel):
    index: int
    value: float


class TEIEmbedSparseResponse(RootModel[list[list[TEISparseValue]]]):
    pass


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class CohereRerankResponse(BaseModel):
    """Cohere's (and, with `model` and `usage`, Jina's) rerank reply."""

    id: str
    results: list[RerankResult]
    meta: dict[str, Any]
    model: str | None = None
    usage: dict[str, int] | None = None


class CohereEmbedResponse(BaseModel):
    id: str
    embeddings: dict[str, list[Any]]  # embedding type -> one vector (or base64 string) per text
    texts: list[str]
    meta: dict[str, Any]
    response_type: Literal["embeddings_by_type"]


class ExplainResponse(BaseModel):
    """/v1/explain: the walk-through's steps (docs/explain.md describes every field)."""

    object: Literal["explanation"]
    model: str
    family: str
    tokens: list[EncodeToken]
    vocabulary: dict[str, Any]
    selection: dict[str, int]
    dims: dict[str, int]
    attention_pattern: dict[str, Any]
    input_vector: dict[str, Any]
    head: dict[str, Any]
    layer: dict[str, Any]
    trajectory: list[dict[str, Any]]
    rollout: dict[str, Any]
    usage: dict[str, int]


class SimilarityExplanationResponse(BaseModel):
    """/v1/similarity/explain: the cosine and its token-pair split (null where the pooling does not split)."""

    object: Literal["similarity_explanation"]
    model: str
    tokens: list[list[EncodeToken]]
    pooling: str
    cosine: float
    decomposable: bool
    note: str | None
    contributions: list[list[float]] | None
    sum: float | None
    row_sums: list[float] | None
    column_sums: list[float] | None
    token_cosines: list[list[float]]
    usage: dict[str, int]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Info(RootModel[dict[str, Any]]):
    pass


# path -> (method, request model(s) or None, success model or None for text/plain, error statuses). Errors are
# in TEI's shape on TEI's routes (api/errors.TEI_PATHS), OpenAI's elsewhere.
_INFERENCE_ERRORS = (400, 401, 404, 408, 413, 415, 422, 429, 500, 503)
_TEI_ERRORS = (400, 401, 404, 408, 413, 415, 422, 424, 429, 500, 503)
_TEI_TOKENIZER_ERRORS = (400, 401, 404, 408, 413, 415, 422, 500, 503)
_COHERE_ERRORS = (400, 401, 404, 408, 413, 415, 429, 500, 503)  # Cohere answers invalid values with 400
Requests = type[BaseModel] | tuple[type[BaseModel], ...] | None
ROUTES: dict[str, tuple[str, Requests, type[BaseModel] | None, tuple[int, ...]]] = {
    "/v1/embeddings": ("post", OpenAIEmbeddingsRequest, OpenAIEmbeddingsResponse, _INFERENCE_ERRORS),
    "/": ("post", (TEIEmbedRequest, TEISimilarityRequest), TEIRootResponse, _TEI_ERRORS),
    "/invocations": ("post", (TEIEmbedRequest, TEISimilarityRequest), TEIRootResponse, _TEI_ERRORS),
    "/embed": ("post", TEIEmbedRequest, TEIEmbedResponse, _TEI_ERRORS),
    "/embed_all": ("post", TEIEmbedAllRequest, TEIEmbedAllResponse, _TEI_ERRORS),
    "/similarity": ("post", TEISimilarityRequest, TEISimilarityResponse, _TEI_ERRORS),
    "/tokenize": ("post", TEITokenizeRequest, TEITokenizeResponse, _TEI_TOKENIZER_ERRORS),
    "/decode": ("post", TEIDecodeRequest, TEIDecodeResponse, _TEI_TOKENIZER_ERRORS),
    "/v1/encode": ("post", EncodeRequest, EncodeResponse, _INFERENCE_ERRORS),
    "/v1/explain": ("post", ExplainRequest, ExplainResponse, _INFERENCE_ERRORS),
    "/v1/similarity/explain": ("post", SimilarityExplainRequest, SimilarityExplanationResponse, _INFERENCE_ERRORS),
    "/rerank": ("post", TEIRerankRequest, TEIRerankResponse, _TEI_ERRORS),
    "/predict": ("post", TEIPredictRequest, TEIPredictResponse, _TEI_ERRORS),
    "/embed_sparse": ("post", TEIEmbedSparseRequest, TEIEmbedSparseResponse, _TEI_ERRORS),
    "/v2/rerank": ("post", CohereRerankRequest, CohereRerankResponse, _COHERE_ERRORS),
    "/v1/rerank": ("post", CohereRerankRequest, CohereRerankResponse, _COHERE_ERRORS),
    "/v2/embed": ("post", CohereEmbedRequest, CohereEmbedResponse, _COHERE_ERRORS),
    "/v1/models": ("get", None, ModelList, (401, 500)),
    "/info": ("get", None, Info, (401, 404, 500, 503)),
    "/health": ("get", None, Status, (401, 500, 503)),
    "/ready": ("get", None, Status, (401, 500, 503)),
    "/metrics": ("get", None, None, (401, 500)),
}

_REASONS = {
    400: "Unparseable body", 401: "Missing or wrong API key", 404: "Unknown route or model",
    408: "Body not received in time", 413: "Body, inputs or tokens over a limit",
    415: "Not JSON, or compressed", 422: "Invalid request", 424: "Inference failed (TEI's Backend error)",
    429: "Queue full (Retry-After)",
    500: "Inference failed (generic message)", 503: "Not ready, draining, stalled or queue deadline (Retry-After)",
}


def _ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


@dataclass(frozen=True)
class ServedLimits:
    """What the loaded model and settings allow, written into the request schemas (so generated clients and
    fuzzers know that `dimensions` stops at the model's width, how many inputs a request may hold, ...)."""

    embedding_dim: int
    num_layers: int
    num_heads: int
    max_inputs: int
    vocab_size: int
    models: tuple[str, ...] = ()  # the served model names, the values `model` may take
    max_documents: int = 1000


def _limit_text(schema: dict[str, Any], limits: ServedLimits, *, allow_empty_text: bool) -> None:
    """One input: a text needs a character (except for /tokenize, which takes ""), token ids stay inside the
    vocabulary (any length: they are truncated like text)."""
    if schema.get("type") == "string" and not allow_empty_text:
        schema["minLength"] = 1
    elif schema.get("type") == "array" and schema.get("items", {}).get("type") == "integer":
        schema["minItems"] = 1
        schema["items"]["maximum"] = limits.vocab_size - 1


def _limit_inputs(prop: dict[str, Any], limits: ServedLimits, *, allow_empty_text: bool) -> None:
    """A single input, or a list of 1..max_inputs inputs (texts, id lists, or a mix of both)."""
    for branch in prop.get("anyOf", []):
        items = branch.get("items", {})
        if branch.get("type") == "string" or items.get("type") == "integer":
            _limit_text(branch, limits, allow_empty_text=allow_empty_text)
        elif branch.get("type") == "array":
            branch.update(minItems=1, maxItems=limits.max_inputs)
            for item in items.get("anyOf", [items]):
                _limit_text(item, limits, allow_empty_text=allow_empty_text)


def _apply_limits(components: dict[str, Any], limits: ServedLimits) -> None:
    for name, component in components.items():
        props = component.get("properties", {})
        for field in ("input", "inputs", "ids"):
            if field in props and name.endswith("Request") and "anyOf" in props[field]:
                _limit_inputs(props[field], limits, allow_empty_text=name == "TEITokenizeRequest")
        if name == "SimilarityInput":
            props["source_sentence"]["minLength"] = 1
            props["sentences"].update(minItems=1, maxItems=limits.max_inputs - 1)
            props["sentences"]["items"]["minLength"] = 1
        for key in ("dimensions", "output_dimension"):
            for branch in props.get(key, {}).get("anyOf", []):
                if branch.get("type") == "integer":
                    branch["maximum"] = limits.embedding_dim
        if limits.models and name.endswith("Request") and "model" in props:
            for branch in props["model"].get("anyOf", []):
                if branch.get("type") == "string":
                    branch["enum"] = list(limits.models)
        if name in ("TEIRerankRequest", "CohereRerankRequest"):
            field = "texts" if name == "TEIRerankRequest" else "documents"
            props[field].update(minItems=1, maxItems=limits.max_documents)
        if name == "CohereEmbedRequest":
            props["texts"].update(minItems=1, maxItems=limits.max_inputs)
        if name == "AttentionOptions":
            for field, count in (("layers", limits.num_layers), ("heads", limits.num_heads)):
                for branch in props[field].get("anyOf", []):
                    if branch.get("type") == "array":
                        branch.update(minItems=1, items={"type": "integer", "minimum": 0, "maximum": count - 1})


def describe(schema: dict[str, Any], limits: ServedLimits | None = None) -> dict[str, Any]:
    """Fill the generated OpenAPI document in place with bodies, replies and error statuses; return it."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    errors = {"openai": _ref(ErrorResponse, components), "tei": _ref(TEIErrorResponse, components),
              "cohere": _ref(CohereErrorResponse, components)}
    for path, (method, request, reply, statuses) in ROUTES.items():
        operation = schema.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue
        if request is not None:
            models = request if isinstance(request, tuple) else (request,)
            refs = [_ref(model, components) for model in models]
            body_schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
        ok = {"text/plain": {"schema": {"type": "string"}}} if reply is None else {
            "application/json": {"schema": _ref(reply, components)}
        }
        responses: dict[str, Any] = {"200": {"description": "OK", "content": ok}}
        error_content = {"application/json": {"schema": errors[family_of(path)]}}
        for status in statuses:
            responses[str(status)] = {"description": _REASONS[status], "content": error_content}
        operation["responses"] = responses
    if limits is not None:
        _apply_limits(components, limits)
    return schema
