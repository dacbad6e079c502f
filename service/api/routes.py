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
from service.api.deps import EngineDep, ServicesDep, require_api_key, require_probe_key
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
from service.engine import TOKENIZE_WORKERS, AttentionSpec, EncodeOptions, EncodeResult, Input
from service.errors import ModelNotFoundError, UnavailableError
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
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


async def read_body(request: Request, services: ServicesDep) -> Any:
    """Read the JSON body within the limits (a full queue was already answered 429 by api/shed.py)."""
    settings = services.settings
    return await read_json(request, settings.max_body_bytes, settings.body_timeout_s)


def validate(payload: Any, model: type[M]) -> M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error_from(list(exc.errors())) from None


async def parse(request: Request, services: ServicesDep, model: type[M]) -> M:
    """Read and validate the body."""
    return validate(await read_body(request, services), model)


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


def check_model(services: ServicesDep, model: str | None) -> None:
    if model is not None and model != services.served_model_name:
        raise ModelNotFoundError(
            f"model not found; this server serves '{services.served_model_name}'", param="model"
        )


def timing_headers(result: EncodeResult) -> dict[str, str]:
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


def as_list(value: str | list[T]) -> list[str] | list[T]:
    return [value] if isinstance(value, str) else value


def as_inputs(value: str | list[Any]) -> list[Input]:
    """One text or one list of token ids is a single input; any other list is a batch of inputs."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]
    return list(value)


# --- inference routes ---------------------------------------------------------------------------------------


@inference.post("/v1/embeddings")
async def openai_embeddings(request: Request, services: ServicesDep, engine: EngineDep) -> Response:
    body = await parse(request, services, OpenAIEmbeddingsRequest)
    check_model(services, body.model)
    options = EncodeOptions(
        policy=body.policy(services.settings.auto_truncate),
        normalize=engine.manifest.normalize,
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
        "model": services.served_model_name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return JSONBody(content, headers=timing_headers(result))


@inference.post("/embed")
async def tei_embed(request: Request, services: ServicesDep, engine: EngineDep) -> Response:
    return await _embed(request, services, engine, await parse(request, services, TEIEmbedRequest))


@inference.post("/")
@inference.post("/invocations")
async def tei_root(request: Request, services: ServicesDep, engine: EngineDep) -> Response:
    """TEI's default route (and SageMaker's): the served model's task. For an embedding model that is /embed;
    an object `inputs` ({"source_sentence", "sentences"}, huggingface_hub's `sentence_similarity` posted to the
    base URL) is /similarity, which TEI itself only does when started with TASK=sentence-similarity."""
    payload = await read_body(request, services)
    if isinstance(payload, dict) and isinstance(payload.get("inputs"), dict):
        return await _similarity(request, services, engine, validate(payload, TEISimilarityRequest))
    return await _embed(request, services, engine, validate(payload, TEIEmbedRequest))


async def _embed(request: Request, services: ServicesDep, engine: EngineDep, body: TEIEmbedRequest) -> Response:
    options = EncodeOptions(policy=body.policy(services.settings.auto_truncate), normalize=body.normalize,
                            dimensions=body.dimensions, prompt_name=body.prompt_name)
    result = await until_disconnect(request, engine.encode(as_inputs(body.inputs), options))
    return JSONBody([np.ascontiguousarray(it.embedding) for it in result.items], headers=timing_headers(result))


@inference.post("/embed_all")
async def tei_embed_all(request: Request, services: ServicesDep, engine: EngineDep) -> Response:
    body = await parse(request, services, TEIEmbedAllRequest)
    options = EncodeOptions(policy=body.policy(services.settings.auto_truncate), normalize=False,
                            token_embeddings=True, prompt_name=body.prompt_name)
    result = await until_disconnect(request, engine.encode(as_inputs(body.inputs), options))
    return JSONBody([it.token_embeddings for it in result.items], headers=timing_headers(result))


@inference.post("/similarity")
async def tei_similarity(request: Request, services: ServicesDep, engine: EngineDep) -> Response:
    return await _similarity(request, services, engine, await parse(request, services, TEISimilarityRequest))


async def _similarity(request: Request, services: ServicesDep, engine: EngineDep,
                      body: TEISimilarityRequest) -> Response:
    params = body.parameters or SimilarityParameters()
    options = EncodeOptions(policy=params.policy(services.settings.auto_truncate), prompt_name=params.prompt_name)
    work = engine.similarity(body.inputs.source_sentence, body.inputs.sentences, options)
    scores, result = await until_disconnect(request, work)
    return JSONBody(scores, headers=timing_headers(result))


@inference.post("/tokenize")
async def tei_tokenize(request: Request, services: ServicesDep, engine: EngineDep) -> Response:
    body = await parse(request, services, TEITokenizeRequest)
    texts = as_list(body.inputs)
    encoded = await engine.tokenize(texts, add_special_tokens=body.add_special_tokens, prompt_name=body.prompt_name)
    prefix = engine.prompt(body.prompt_name)
    return JSONBody([_tei_tokens(prefix + text, enc) for text, enc in zip(texts, encoded, strict=True)])


@inference.post("/decode")
async def tei_decode(request: Request, services: ServicesDep, engine: EngineDep) -> Response:
    body = await parse(request, services, TEIDecodeRequest)
    ids = body.ids
    ids_lists: list[list[int]] = [ids] if not ids or isinstance(ids[0], int) else ids  # type: ignore[list-item]
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
async def encode(request: Request, services: ServicesDep, engine: EngineDep) -> Response:
    body = await parse(request, services, EncodeRequest)
    check_model(services, body.model)
    att = body.attention
    spec = None
    if att is not None:
        spec = AttentionSpec(
            layers=None if att.layers == "all" else tuple(att.layers),
            heads=None if att.heads == "all" else tuple(att.heads),
            aggregate=att.aggregate,
        )
    options = EncodeOptions(
        policy=body.policy(services.settings.auto_truncate),
        normalize=body.normalize,
        dimensions=body.dimensions,
        token_embeddings=body.token_embeddings,
        attention=spec,
    )
    result = await until_disconnect(request, engine.encode(as_list(body.input), options))
    data = []
    for i, item in enumerate(result.items):
        row: dict[str, Any] = {
            "index": i,
            "tokens": [
                {"id": t.id, "text": t.text, "start": t.start, "end": t.end, "special": t.special}
                for t in item.encoded.tokens
            ],
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
        "model": services.served_model_name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        "data": data,
    }
    return JSONBody(content, headers=timing_headers(result))


@inference.get("/v1/models")
async def models(services: ServicesDep) -> Response:
    return JSONBody(
        {
            "object": "list",
            "data": [
                {"id": services.served_model_name, "object": "model", "created": int(services.started_at),
                 "owned_by": "encoder-serve"}
            ],
        }
    )


@inference.get("/info")
async def info(services: ServicesDep) -> Response:
    m, s, runner = services.manifest, services.settings, services.runner
    if m is None or runner is None:
        raise UnavailableError("the model is not loaded yet", retry_after_s=2)
    content: dict[str, Any] = {
        # text-embeddings-inference's Info (its typed clients parse these; docs/api.md §Compatibility)
        "model_id": services.served_model_name,
        "model_sha": None,
        "model_dtype": MODEL_DTYPES.get(runner.variant, "float32"),
        "served_model_name": services.served_model_name,
        "model_type": {"embedding": {"pooling": m.pooling}},
        "max_concurrent_requests": s.max_queue_size,  # the door lets in at most this many requests at once
        "max_input_length": m.max_seq_length,
        "max_batch_tokens": s.max_batch_tokens,
        "max_batch_requests": s.max_batch_size,
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
            "limits": {
                "max_batch_size": s.max_batch_size,
                "max_batch_tokens": s.max_batch_tokens,
                "max_wait_ms": s.max_wait_ms,
                "max_queue_size": s.max_queue_size,
                "queue_timeout_s": s.queue_timeout_s,
                "max_body_bytes": s.max_body_bytes,
                "max_inputs_per_request": s.max_inputs_per_request,
                "max_chars_per_input": s.max_chars_per_input,
                "max_tokens_per_request": s.max_tokens_per_request,
                "attention_budget": s.attention_budget,
            },
        }
    )
    return JSONBody(content)


# --- probes and metrics (no auth: orchestrators and scrapers call them) ---------------------------------------


@probes.get("/health")
async def health(services: ServicesDep) -> Response:
    """Liveness: the process answers and the batcher is not dead or wedged. A full queue is still healthy."""
    if services.batcher is not None:
        state = services.batcher.health()
        if not state.ok:
            raise UnavailableError(f"unhealthy: {state.reason}", retry_after_s=5)
    return JSONBody({"status": "ok"})


@probes.get("/ready")
async def ready(services: ServicesDep) -> Response:
    """Readiness: loaded, warmed, accepting and not draining."""
    if services.draining:
        raise UnavailableError("the server is shutting down", retry_after_s=5)
    if not services.ready or services.batcher is None:
        raise UnavailableError("the model is not loaded yet", retry_after_s=2)
    state = services.batcher.health()
    if not state.ok or not state.accepting:
        raise UnavailableError(f"not ready: {state.reason or 'not accepting work'}", retry_after_s=5)
    # TEI's pattern: after repeated failures, re-probe with a tiny forward pass before saying ready again.
    failing = services.batcher.consecutive_failed_batches
    if failing >= services.settings.failure_threshold and (
        services.engine is None or not await services.engine.probe(READY_PROBE_TIMEOUT_S)
    ):
        raise UnavailableError(f"not ready: the last {failing} batches failed", retry_after_s=5)
    return JSONBody({"status": "ready", "uptime_s": round(time.time() - services.started_at, 3)})


@probes.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=METRICS_CONTENT_TYPE)
