"""Thin routes: parse -> engine -> response dict. No limits, no model logic, no status codes decided here
(errors are raised as ServiceErrors and mapped in api/errors.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from service import __version__
from service import explain as explanation
from service.api.deps import AppContext, ContextDep, ModelsDep, require_api_key, require_probe_key
from service.api.errors import validation_error_from
from service.api.jsonio import JSONBody, read_json
from service.api.schemas import (
    EncodeRequest,
    OpenAIEmbeddingsRequest,
    SimilarityParameters,
    TEIDecodeRequest,
    TEIEmbedAllRequest,
    TEIEmbedRequest,
    TEISimilarityRequest,
    TEITokenizeRequest,
)
from service.engine import (
    TOKENIZE_WORKERS,
    AttentionSpec,
    EncodeOptions,
    EncodeResult,
    ExplainRun,
    Input,
    RowsResult,
)
from service.errors import UnavailableError, WrongTaskError
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.registry import ModelHandle, ModelRegistry
from service.tokenizer import Encoded

logger = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

inference = APIRouter(dependencies=[Depends(require_api_key)])
probes = APIRouter(dependencies=[Depends(require_probe_key)])

READY_PROBE_TIMEOUT_S = 2.0
# graph variant -> TEI's `model_dtype`
MODEL_DTYPES = {"fp32": "float32", "fp32-fused": "float32", "fp16": "float16", "int8": "int8"}


class ClientDisconnectedError(Exception):
    """The client went away while its request waited; nobody will read the reply."""


# --- plumbing -----------------------------------------------------------------------------------------------


async def read_body(request: Request, context: ContextDep) -> Any:
    """Read the JSON body within the limits (a full queue was already answered 429 by api/shed.py)."""
    settings = context.settings
    return await read_json(request, settings.max_body_bytes, settings.body_timeout_s)


def validate(payload: Any, model: type[M]) -> M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error_from(list(exc.errors())) from None


async def parse(request: Request, context: ContextDep, model: type[M]) -> M:
    """Read and validate the body."""
    return validate(await read_body(request, context), model)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (the batcher then drops its queued items).

    The body has been read, so the next ASGI message can only be `http.disconnect`.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnectedError
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


TASK_NAMES = {"embed": "an embedding model", "rerank": "a reranker", "classify": "a classifier",
              "sparse": "a sparse (SPLADE) model"}


def model_for(models: ModelRegistry, name: str | None, *tasks: str) -> ModelHandle:
    """The model a request names (the default when it names none), which must do one of `tasks`."""
    handle = models.get(name)
    if handle.task not in tasks:
        wanted = " or ".join(TASK_NAMES[t] for t in tasks)
        raise WrongTaskError(f"model '{handle.name}' is {TASK_NAMES[handle.task]}; this route needs {wanted}",
                             param="model")
    return handle


def timing_headers(result: EncodeResult | RowsResult | ExplainRun) -> dict[str, str]:
    t = result.timings
    headers = {
        "x-tokenization-time": f"{t.tokenize_ms:.3f}",
        "x-queue-time": f"{t.queue_ms:.3f}",
        "x-inference-time": f"{t.inference_ms:.3f}",
        "x-total-time": f"{t.total_ms:.3f}",
        "x-compute-tokens": str(result.prompt_tokens),
        "x-compute-characters": str(result.characters),
    }
    if truncated := result.truncated_indexes:
        headers["x-truncated-inputs"] = ",".join(map(str, truncated))
    return headers


def b64(array: np.ndarray, dtype: str = "<f4") -> str:
    """Little-endian bytes, base64 — what the OpenAI SDK decodes with np.frombuffer(..., 'float32')."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def as_inputs(value: str | list[Any]) -> list[Input]:
    """One text or one list of token ids is a single input; any other list is a batch of inputs."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]
    return list(value)


# --- inference routes ---------------------------------------------------------------------------------------


@inference.post("/v1/embeddings")
async def openai_embeddings(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, OpenAIEmbeddingsRequest)
    handle = model_for(models, body.model, "embed")
    engine = handle.engine
    options = EncodeOptions(
        policy=body.policy(context.settings.auto_truncate),
        normalize=handle.manifest.normalize,
        dimensions=body.dimensions,
        prompt_name=engine.prompt_name_for(body.prompt_name, body.input_type),
    )
    result = await until_disconnect(request, engine.encode(as_inputs(body.input), options))
    encode = b64 if body.encoding_format == "base64" else np.ascontiguousarray
    data = [
        {"object": "embedding", "index": i, "embedding": encode(item.embedding)} for i, item in enumerate(result.items)
    ]
    content = {
        "object": "list",
        "data": data,
        "model": handle.name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return JSONBody(content, headers=timing_headers(result))


@inference.post("/embed")
async def tei_embed(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    return await _embed(request, context, models, await parse(request, context, TEIEmbedRequest))


@inference.post("/")
@inference.post("/invocations")
async def tei_root(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    """TEI's default route (and SageMaker's): the served model's task. For an embedding model that is /embed;
    an object `inputs` ({"source_sentence", "sentences"}, huggingface_hub's `sentence_similarity` posted to the
    base URL) is /similarity, which TEI itself only does when started with TASK=sentence-similarity."""
    payload = await read_body(request, context)
    if isinstance(payload, dict) and isinstance(payload.get("inputs"), dict):
        return await _similarity(request, context, models, validate(payload, TEISimilarityRequest))
    return await _embed(request, context, models, validate(payload, TEIEmbedRequest))


async def _embed(request: Request, context: AppContext, models: ModelRegistry, body: TEIEmbedRequest) -> Response:
    engine = model_for(models, body.model, "embed").engine
    options = EncodeOptions(policy=body.policy(context.settings.auto_truncate), normalize=body.normalize,
                            dimensions=body.dimensions, prompt_name=body.prompt_name)
    result = await until_disconnect(request, engine.encode(as_inputs(body.inputs), options))
    return JSONBody([np.ascontiguousarray(it.embedding) for it in result.items], headers=timing_headers(result))


@inference.post("/embed_all")
async def tei_embed_all(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, TEIEmbedAllRequest)
    engine = model_for(models, body.model, "embed").engine
    options = EncodeOptions(policy=body.policy(context.settings.auto_truncate), normalize=False,
                            token_embeddings=True, prompt_name=body.prompt_name)
    result = await until_disconnect(request, engine.encode(as_inputs(body.inputs), options))
    return JSONBody([it.token_embeddings for it in result.items], headers=timing_headers(result))


@inference.post("/similarity")
async def tei_similarity(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    return await _similarity(request, context, models, await parse(request, context, TEISimilarityRequest))


async def _similarity(request: Request, context: AppContext, models: ModelRegistry,
                      body: TEISimilarityRequest) -> Response:
    engine = model_for(models, body.model, "embed").engine
    params = body.parameters or SimilarityParameters()
    options = EncodeOptions(policy=params.policy(context.settings.auto_truncate), prompt_name=params.prompt_name)
    work = engine.similarity(body.inputs.source_sentence, body.inputs.sentences, options)
    scores, result = await until_disconnect(request, work)
    return JSONBody(scores, headers=timing_headers(result))


@inference.post("/tokenize")
async def tei_tokenize(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, TEITokenizeRequest)
    engine = models.get(body.model).engine
    texts = as_list(body.inputs)
    encoded = await engine.tokenize(texts, add_special_tokens=body.add_special_tokens, prompt_name=body.prompt_name)
    prefix = engine.prompt(body.prompt_name)
    return JSONBody([_tei_tokens(prefix + text, enc) for text, enc in zip(texts, encoded, strict=True)])


@inference.post("/decode")
async def tei_decode(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, TEIDecodeRequest)
    engine = models.get(body.model).engine
    flat = [i for i in body.ids if isinstance(i, int)]  # one id list, or a batch of them (never mixed: pydantic)
    ids_lists = [flat] if len(flat) == len(body.ids) else [ids for ids in body.ids if isinstance(ids, list)]
    texts = await engine.decode(ids_lists, skip_special_tokens=body.skip_special_tokens)
    return JSONBody(texts)


def _tei_tokens(text: str, enc: Encoded) -> list[dict[str, Any]]:
    return [
        {
            "id": t.id,
            "text": t.text if t.special or t.start is None else text[t.start : t.end],
            "special": t.special,
            "start": t.start,
            "stop": t.end,
        }
        for t in enc.tokens
    ]


@inference.post("/v1/encode")
async def encode(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, EncodeRequest)
    handle = model_for(models, body.model, "embed")
    att = body.attention
    spec = None
    if att is not None:
        spec = AttentionSpec(
            layers=None if att.layers == "all" else tuple(att.layers),
            heads=None if att.heads == "all" else tuple(att.heads),
            aggregate=att.aggregate,
        )
    options = EncodeOptions(
        policy=body.policy(context.settings.auto_truncate),
        normalize=body.normalize,
        dimensions=body.dimensions,
        token_embeddings=body.token_embeddings,
        attention=spec,
    )
    result = await until_disconnect(request, handle.engine.encode(as_list(body.input), options))
    unk_id = handle.manifest.special_tokens.get("unk")  # tokens the vocabulary does not cover are flagged
    data = []
    for i, item in enumerate(result.items):
        row: dict[str, Any] = {
            "index": i,
            "tokens": explanation.token_rows(item.encoded, unk_id),
            "embedding": np.ascontiguousarray(item.embedding),
            "truncated": item.encoded.truncated,
            "token_count": item.encoded.token_count,
        }
        if body.token_embeddings:
            row["token_embeddings"] = item.token_embeddings
        if att is not None and item.attention is not None:
            np_dtype = "<f2" if att.dtype == "float16" else "<f4"
            values = np.ascontiguousarray(item.attention, dtype=np_dtype)
            row["attention"] = {
                "layers": list(item.layers),
                "heads": list(item.heads) if att.aggregate == "none" else "mean",
                "shape": list(values.shape),
                "dtype": att.dtype,
                "format": att.format,
                "data": b64(values, np_dtype) if att.format == "base64" else values,
            }
        data.append(row)
    content = {
        "object": "list",
        "model": handle.name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        "data": data,
    }
    return JSONBody(content, headers=timing_headers(result))


@inference.get("/v1/models")
async def list_models(context: ContextDep, models: ModelsDep) -> Response:
    created = int(context.lifecycle.started_at)
    return JSONBody({
        "object": "list",
        "data": [{"id": h.name, "object": "model", "created": created, "owned_by": "encoder-serve", "task": h.task}
                 for h in models],
    })


@inference.get("/info")
async def info(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    """TEI's Info for the default model, `?model=NAME` for another; `?model=a&model=b` (or `?model=all`) gives
    a list, one entry per model."""
    names = request.query_params.getlist("model")
    if names == ["all"]:
        return JSONBody([describe_model(h, context) for h in models])
    if len(names) > 1:
        return JSONBody([describe_model(models.get(n), context) for n in names])
    return JSONBody(describe_model(models.get(names[0] if names else None), context))


def _model_type(handle: ModelHandle) -> dict[str, Any]:
    """TEI's `model_type`: {"embedding": {"pooling"}}, {"reranker": {...}} or {"classifier": {...}}."""
    m = handle.manifest
    if handle.task in ("rerank", "classify"):
        key = "reranker" if handle.task == "rerank" else "classifier"
        id2label = {str(i): label for i, label in enumerate(m.labels)}
        return {key: {"id2label": id2label, "label2id": {label: i for i, label in enumerate(m.labels)}}}
    return {"embedding": {"pooling": "splade" if handle.task == "sparse" else m.pooling}}


def describe_model(handle: ModelHandle, context: AppContext) -> dict[str, Any]:
    m, s, runner, limits = handle.manifest, context.settings, handle.runner, handle.limits
    content: dict[str, Any] = {
        # text-embeddings-inference's Info (its typed clients parse these; docs/api.md §Compatibility)
        "model_id": handle.name,
        "model_sha": None,
        "model_dtype": MODEL_DTYPES.get(runner.variant, "float32"),
        "served_model_name": handle.name,
        "model_type": _model_type(handle),
        "max_concurrent_requests": limits.max_queue_size,  # the door lets in at most this many requests at once
        "max_input_length": m.max_seq_length,
        "max_batch_tokens": limits.max_batch_tokens,
        "max_batch_requests": limits.max_batch_size,
        "max_client_batch_size": s.max_inputs_per_request,
        "auto_truncate": s.auto_truncate,
        "tokenization_workers": TOKENIZE_WORKERS,
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }
    if m.prompts:
        content["prompts"] = m.prompts
        content["default_prompt_name"] = m.default_prompt_name
    content.update(
        {
            "model_name": m.model_name,
            "task": handle.task,
            "default": handle is context.models.default,
            "embedding_dim": m.embedding_dim,
            "pooling": m.pooling,
            "normalize_default": m.normalize,
            "num_layers": m.num_layers,
            "num_heads": m.num_heads,
            # Which family, how its tokens spell word starts, and which keys each layer's queries may see (causal,
            # local windows): what the explorer needs to read a map correctly.
            "family": m.raw.get("family", "bert"),
            "hidden_size": int(m.raw.get("hidden_size", m.embedding_dim)),
            "padding_side": m.padding_side,
            "token_style": m.raw.get("token_style", "wordpiece"),
            "attention_pattern": m.raw.get("attention_pattern", {"causal": False, "local_window": 0,
                                                                  "local_layers": []}),
            "provider": runner.provider,
            "provider_reason": runner.provider_reason,
            "graph_variant": runner.variant,
            "attention_available": "attention" in runner.graphs,
            "attention_graph": "loaded" if "attention" in runner.loaded_graphs else s.attention_graph,
            "explain_available": "explain" in runner.graphs,
            "explain_graph": "loaded" if "explain" in runner.loaded_graphs else s.explain_graph,
            "resident_bytes_estimate": handle.resident_bytes,
            "limits": {
                "max_batch_size": limits.max_batch_size,
                "max_batch_tokens": limits.max_batch_tokens,
                "max_wait_ms": s.max_wait_ms,
                "max_queue_size": limits.max_queue_size,
                "queue_timeout_s": s.queue_timeout_s,
                "max_body_bytes": s.max_body_bytes,
                "max_inputs_per_request": s.max_inputs_per_request,
                "max_chars_per_input": s.max_chars_per_input,
                "max_tokens_per_request": s.max_tokens_per_request,
                "attention_budget": s.attention_budget,
                "explain_max_tokens": handle.engine.explain_max_tokens,
            },
        }
    )
    if m.labels:
        content["labels"] = list(m.labels)
    return content


# --- probes and metrics (no auth: orchestrators and scrapers call them) ---------------------------------------


def _health_of(handle: ModelHandle) -> dict[str, Any]:
    state = handle.batcher.health()
    return {"status": "ok" if state.ok else "unhealthy", "reason": state.reason, "queue_depth": state.queue_depth}


@probes.get("/health")
async def health(models: ModelsDep) -> Response:
    """Liveness: the process answers and at least one model's batcher is neither dead nor wedged (a full queue
    is still healthy). Each model's own state is in the body; 503 only when every model is unhealthy, because
    restarting the process would also take down the models that still serve (docs/reliability.md)."""
    per_model = {h.name: _health_of(h) for h in models}
    if all(v["status"] != "ok" for v in per_model.values()):
        reasons = "; ".join(f"{name}: {v['reason']}" for name, v in per_model.items())
        raise UnavailableError(f"unhealthy: {reasons}", retry_after_s=5)
    degraded = any(v["status"] != "ok" for v in per_model.values())
    return JSONBody({"status": "degraded" if degraded else "ok", "models": per_model})


async def _readiness_of(handle: ModelHandle, context: AppContext) -> str | None:
    """None when this model can take work now, else why not."""
    state = handle.batcher.health()
    if not state.ok or not state.accepting:
        return state.reason or "not accepting work"
    # TEI's pattern: after repeated failures, re-probe with a tiny forward pass before saying ready again.
    failing = handle.batcher.consecutive_failed_batches
    if failing >= context.settings.failure_threshold and not await handle.engine.probe(READY_PROBE_TIMEOUT_S):
        return f"the last {failing} batches failed"
    return None


@probes.get("/ready")
async def ready(context: ContextDep, models: ModelsDep) -> Response:
    """Readiness: loaded, warmed, accepting and not draining. With several models, ready while any model is
    (the body says which are not); 503 when none is, or when draining."""
    lifecycle = context.lifecycle
    if lifecycle.draining:
        raise UnavailableError("the server is shutting down", retry_after_s=5)
    if not lifecycle.ready:
        raise UnavailableError("the models are not loaded yet", retry_after_s=2)
    reasons = {h.name: await _readiness_of(h, context) for h in models}
    if all(r is not None for r in reasons.values()):
        detail = "; ".join(f"{name}: {r}" for name, r in reasons.items())
        raise UnavailableError(f"not ready: {detail}", retry_after_s=5)
    return JSONBody({
        "status": "ready",
        "uptime_s": round(time.time() - lifecycle.started_at, 3),
        "models": {name: ("ready" if r is None else f"not ready: {r}") for name, r in reasons.items()},
    })


@probes.get("/metrics")
async def metrics(context: ContextDep) -> Response:
    return Response(context.metrics.render(), media_type=METRICS_CONTENT_TYPE)
