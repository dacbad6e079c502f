"""POST /v1/explain and /v1/similarity/explain: the walk-through and the cosine split (docs/explain.md).

Thin, as routes.py: parse -> engine -> service/explain.py's arithmetic -> response dict.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service import explain as explanation
from service.api.deps import ContextDep, ModelsDep
from service.api.jsonio import JSONBody
from service.api.routes import inference, model_for, parse, timing_headers, until_disconnect
from service.api.schemas import ExplainRequest, SimilarityExplainRequest
from service.registry import ModelHandle, ModelRegistry
from service.tokenizer import Encoded


def _unk_id(handle: ModelHandle) -> int | None:
    return handle.manifest.special_tokens.get("unk")


async def _coverage(models: ModelRegistry, text: str, handle: ModelHandle, encoded: Encoded) -> dict[str, Any]:
    """How much of the input the model's vocabulary covers, and how much every other served embedding model's
    would (so the page can say which model to pick for, say, Chinese text)."""
    unk = _unk_id(handle)
    count, share = explanation.unknown_share(encoded, unk)
    others = []
    for other in models:
        if other.task != "embed":
            continue
        if other is handle:
            others.append({"model": other.name, "unknown_share": share})
            continue
        (theirs,) = await other.engine.tokenize([text])
        others.append({"model": other.name, "unknown_share": explanation.unknown_share(theirs, _unk_id(other))[1]})
    token = handle.tokenizer.id_to_token(unk) if unk is not None else None
    return {"unknown_count": count, "unknown_share": share, "unknown_token": token, "models": others}


@inference.post("/v1/explain")
async def explain(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, ExplainRequest)
    handle = model_for(models, body.model, "embed")
    run = await until_disconnect(request, handle.engine.explain(body.input, body.layer, body.head, body.token))
    m = handle.manifest
    config = m.raw.get("config", {})
    pattern = dict(m.raw.get("attention_pattern", {}))
    pattern["layer_is_local"] = body.layer in pattern.get("local_layers", [])
    outs = run.outputs
    selection = explanation.Selection(body.layer, body.head, run.token, body.neighbours)
    steps = explanation.walkthrough(
        outs, selection, note=explanation.position_note(pattern, config),
        has_position=pattern.get("position", "learned") in ("learned", "sinusoidal"),
        has_segment=int(config.get("type_vocab_size", 0) or 0) > 0, norm_first=bool(config.get("norm_first")))
    seq, hidden = outs["embed_token"].shape
    d_k = int(outs["queries"].shape[-1])
    # The graph's outputs are tens of MB (L·H·T² several times over); `steps` holds copies of the rows it needs,
    # so dropping them now returns that memory at once, whatever still refers to this request afterwards.
    outs.clear()
    content = {
        "object": "explanation",
        "model": handle.name,
        "family": m.raw.get("family", "bert"),
        "tokens": explanation.token_rows(run.encoded, _unk_id(handle)),
        "vocabulary": await _coverage(models, body.input, handle, run.encoded),
        "selection": {"layer": body.layer, "head": body.head, "token": run.token},
        "dims": {"tokens": seq, "layers": m.num_layers, "heads": m.num_heads, "d_model": hidden,
                 "d_k": d_k},
        "attention_pattern": pattern,
        **steps,
        "usage": {"prompt_tokens": run.prompt_tokens, "total_tokens": run.prompt_tokens},
    }
    return JSONBody(content, headers=timing_headers(run))


@inference.post("/v1/similarity/explain")
async def similarity_explain(request: Request, context: ContextDep, models: ModelsDep) -> Response:
    body = await parse(request, context, SimilarityExplainRequest)
    handle = model_for(models, body.model, "embed")
    encoded, result = await until_disconnect(request, handle.engine.similarity_explain(body.input))
    hidden = []
    for item in result.items:
        if item.token_embeddings is None:  # token_embeddings=True always returns them; never reached
            raise RuntimeError("the main graph returned no token vectors")
        hidden.append(item.token_embeddings)
    chain = handle.manifest.raw.get("pooling_chain", [])
    dense = any(step.get("type") == "Dense" for step in chain if isinstance(step, dict))
    split = explanation.similarity_decomposition(
        (hidden[0], hidden[1]), (result.items[0].embedding, result.items[1].embedding), handle.manifest.pooling,
        dense)
    unk = _unk_id(handle)
    content = {
        "object": "similarity_explanation",
        "model": handle.name,
        "tokens": [explanation.token_rows(e, unk) for e in encoded],
        **split,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return JSONBody(content, headers=timing_headers(result))
