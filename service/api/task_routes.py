"""The routes of the task heads beyond embeddings: rerank, classify and sparse in TEI's shapes, and rerank and
compact embeddings in Cohere's (and Jina's, on /v1/rerank).

Thin, as routes.py: parse -> engine -> response. What a score means is decided here, once per family:
TEI gives sigmoid(logit) for a one-label model and softmax over labels otherwise, unless `raw_scores`;
Cohere's and Jina's `relevance_score` is sigmoid(logit), the probability a cross-encoder was trained to give.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from service import compact
from service.api.deps import ContextDep, ModelsDep
from service.api.jsonio import JSONBody
from service.api.routes import as_inputs, inference, model_for, parse, timing_headers, until_disconnect
from service.api.schemas import (
    CohereEmbedRequest,
    CohereRerankRequest,
    TEIEmbedSparseRequest,
    TEIPredictRequest,
    TEIRerankRequest,
)
from service.engine import NO_PROMPT, EncodeOptions
from service.errors import InferenceError, InvalidRequestError
from service.tokenizer import TruncationPolicy

COHERE_API_VERSION = "2"


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max())
    out: np.ndarray = shifted / shifted.sum()
    return out


def _output(value: np.ndarray | None) -> np.ndarray:
    """A head's output on its row result; a score or sparse graph always fills it, so None is a runner bug."""
    if value is None:
        raise InferenceError()
    return value


def tei_scores(logits: np.ndarray, raw: bool) -> np.ndarray:
    """TEI's activation: none with raw_scores, sigmoid for one label, softmax over several."""
    if raw:
        return logits
    return sigmoid(logits) if logits.shape[-1] == 1 else softmax(logits)


def _check_query(query: str) -> None:
    if not query.strip():
        raise InvalidRequestError("query must contain non-whitespace text", param="query", code="empty_input")


# --- TEI ------------------------------------------------------------------------------------------------------


@inference.post("/rerank")
async def tei_rerank(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, TEIRerankRequest)
    engine = model_for(models, body.model, "rerank").engine
    _check_query(body.query)
    pairs = [(body.query, text) for text in body.texts]
    result = await until_disconnect(request, engine.score_pairs(pairs, body.policy(context.settings.auto_truncate)))
    scores = [float(tei_scores(_output(row.logits), body.raw_scores)[0]) for row in result.rows]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = []
    for i in order:
        rank: dict[str, Any] = {"index": i, "score": scores[i]}
        if body.return_text:
            rank["text"] = body.texts[i]
        ranks.append(rank)
    return JSONBody(ranks, headers=timing_headers(result))


def _predict_batch(inputs: str | list[str] | list[list[str]]) -> tuple[list[list[str]], bool]:
    """TEI's PredictInput: a text, a pair [a, b] (one input), or a batch of [a] / [a, b]; True when a batch."""
    if isinstance(inputs, str):
        return [[inputs]], False
    texts = [x for x in inputs if isinstance(x, str)]
    if inputs and len(texts) == len(inputs):
        if len(inputs) != 2:
            raise InvalidRequestError("inputs as a flat list must be one pair [text, text_pair]", param="inputs")
        return [texts], False
    batch = [list(x) for x in inputs]
    for i, item in enumerate(batch):
        if len(item) not in (1, 2) or not all(isinstance(t, str) for t in item):
            raise InvalidRequestError(f"inputs[{i}] must be [text] or [text, text_pair]", param=f"inputs[{i}]")
    return batch, True


@inference.post("/predict")
async def tei_predict(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, TEIPredictRequest)
    handle = model_for(models, body.model, "classify", "rerank")
    batch, is_batch = _predict_batch(body.inputs)
    policy = body.policy(context.settings.auto_truncate)
    if not batch:
        raise InvalidRequestError("inputs must not be empty", param="inputs", code="empty_input")
    if len({len(item) for item in batch}) > 1:
        raise InvalidRequestError("inputs must be all single texts or all pairs", param="inputs")
    if len(batch[0]) == 2:
        work = handle.engine.score_pairs([(a, b) for a, b in batch], policy, param="inputs")
    else:
        work = handle.engine.score_texts([item[0] for item in batch], policy)
    result = await until_disconnect(request, work)
    labels = handle.manifest.labels
    predictions = []
    for row in result.rows:
        scores = tei_scores(_output(row.logits), body.raw_scores)
        order = np.argsort(-scores, kind="stable")
        predictions.append([{"score": float(scores[j]), "label": labels[j]} for j in order])
    return JSONBody(predictions if is_batch else predictions[0], headers=timing_headers(result))


@inference.post("/embed_sparse")
async def tei_embed_sparse(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, TEIEmbedSparseRequest)
    engine = model_for(models, body.model, "sparse").engine
    work = engine.sparse(as_inputs(body.inputs), body.policy(context.settings.auto_truncate), body.prompt_name)
    result = await until_disconnect(request, work)
    out = []
    for row in result.rows:
        values, indices = _output(row.sparse_values), _output(row.sparse_indices)
        keep = values > 0
        kept_indices, kept_values = indices[keep], values[keep]
        order = np.argsort(kept_indices)  # TEI lists a sparse vector by vocabulary id
        out.append([{"index": int(i), "value": float(v)}
                    for i, v in zip(kept_indices[order], kept_values[order], strict=True)])
    return JSONBody(out, headers=timing_headers(result))


# --- Cohere / Jina --------------------------------------------------------------------------------------------


async def _cohere_rerank(request: Request, context: ContextDep, models: ModelsDep, *, jina: bool) -> Response:
    body = await parse(request, context, CohereRerankRequest)
    handle = model_for(models, body.model, "rerank")
    _check_query(body.query)
    texts = body.texts()
    policy = TruncationPolicy(truncate=True)
    result = await until_disconnect(request, handle.engine.score_pairs([(body.query, t) for t in texts], policy,
                                                                        param="documents"))
    scores = [float(sigmoid(_output(row.logits))[0]) for row in result.rows]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.top_n or len(scores)]
    return_documents = body.return_documents if body.return_documents is not None else jina
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if return_documents:
            item["document"] = {"text": texts[i]}
        results.append(item)
    content: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": {"api_version": {"version": COHERE_API_VERSION if not jina else "1"},
                 "billed_units": {"search_units": 1}},
    }
    if jina:
        content.update(model=handle.name, usage={"total_tokens": result.prompt_tokens})
    return JSONBody(content, headers=timing_headers(result))


@inference.post("/v2/rerank")
async def cohere_rerank(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    return await _cohere_rerank(request, context, models, jina=False)


@inference.post("/v1/rerank")
async def jina_rerank(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    """Cohere's v1 and Jina's rerank: the same body; the reply also carries `model` and `usage` (Jina's)."""
    return await _cohere_rerank(request, context, models, jina=True)


_PROMPT_ROLES = {"search_query": ("query",), "search_document": ("document", "passage"),
                 "classification": ("classification",), "clustering": ("clustering",)}


@inference.post("/v2/embed")
async def cohere_embed(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, CohereEmbedRequest)
    handle = model_for(models, body.model, "embed")
    ranges = handle.manifest.quantization_ranges
    types = compact.parse_types(body.embedding_types or ["float"], has_ranges=ranges is not None)
    prompt = None
    if body.input_type is not None:
        roles = _PROMPT_ROLES[body.input_type]
        prompt = next((n for n in roles if n in handle.manifest.prompts), NO_PROMPT)
    options = EncodeOptions(policy=body.policy(), normalize=handle.manifest.normalize,
                            dimensions=body.output_dimension, prompt_name=prompt)
    result = await until_disconnect(request, handle.engine.encode(body.texts, options))
    vectors = np.stack([item.embedding for item in result.items])  # (N, D)
    content = {
        "id": str(uuid.uuid4()),
        "embeddings": compact.convert(vectors, types, ranges),
        "texts": body.texts,
        "meta": {"api_version": {"version": COHERE_API_VERSION},
                 "billed_units": {"input_tokens": result.prompt_tokens}},
        "response_type": "embeddings_by_type",
    }
    return JSONBody(content, headers=timing_headers(result))
