"""POST /v1/explain and /v1/similarity/explain on a real server holding three families at once.

BERT (the tiny seeded model: learned positions, segments, post-norm), MPNet (relative-position bias) and Qwen3
(a causal decoder with rotary positions, grouped-query attention, q/k norms, pre-norm, last-token pooling) are
served by one process, so every check runs per family and the vocabulary coverage sees several models.

The references are our PyTorch encoder itself: `Encoder.forward` (its embeddings, query projections, output
projections, layer outputs and attention maps, captured by forward hooks) and the walk-through module the explain
graph was exported from (`model.explain.ExplainEncoder`), run on the token ids the server reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from model import load_checkpoint
from model.checkpoint import LoadedCheckpoint
from model.explain import ExplainEncoder
from tests.families.builders import build_checkpoint
from tests.server_process import ServerProcess

TOLERANCE = 1e-4  # the bound for every returned quantity
EXACT = 1e-5  # the softmax row against /v1/encode's, and the similarity split's sum against the served cosine
MAX_TOKENS = 40
FAMILIES = ("tiny-bert", "mpnet", "qwen3")
TEXT = "the cat sat on the mat because it was tired"
OTHER = "a small kitten was sleeping on the warm rug"


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain-families")
    return {"tiny-bert": tiny_checkpoint_dir, **{f: build_checkpoint(f, root / f) for f in ("mpnet", "qwen3")}}


@pytest.fixture(scope="module")
def server(checkpoints: dict[str, Path], tiny_artifact_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from export.pipeline import ExportOptions, run_export

    root = tmp_path_factory.mktemp("explain-artifacts")
    artifacts = {"tiny-bert": tiny_artifact_dir}
    for name in ("mpnet", "qwen3"):
        artifacts[name] = run_export(ExportOptions(model_dir=checkpoints[name], out_dir=root / name, model_name=name,
                                                   variants=False))
    models = ",".join(f"{n}={artifacts[n]}" for n in FAMILIES)
    proc = ServerProcess(artifacts["tiny-bert"], root / "server.log", EMBED_MODELS=models,
                         EMBED_EXPLAIN_MAX_TOKENS=str(MAX_TOKENS), EMBED_ATTENTION_BUDGET="10000000",
                         EMBED_INTRA_OP_THREADS="1").wait_ready()
    try:
        yield proc
    finally:
        proc.stop_and_check()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60.0) as c:
        yield c


@pytest.fixture(scope="module")
def loaded(checkpoints: dict[str, Path]) -> dict[str, LoadedCheckpoint]:
    return {name: load_checkpoint(path) for name, path in checkpoints.items()}


def _explain(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/explain", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _close(got: Any, want: torch.Tensor | np.ndarray, what: str, tol: float = TOLERANCE) -> None:
    want_np = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got_np = np.asarray(got, dtype=np.float64)
    assert got_np.shape == want_np.shape, (what, got_np.shape, want_np.shape)
    assert np.abs(got_np - want_np).max(initial=0.0) <= tol, (what, np.abs(got_np - want_np).max())


def _hooked_forward(checkpoint: LoadedCheckpoint, ids: torch.Tensor) -> dict[str, Any]:
    """`Encoder.forward` on one row with forward hooks on its modules: what the served encoder computes."""
    encoder = checkpoint.encoder.eval()
    seen: dict[str, Any] = {"query": [], "attention_output": [], "layer_output": []}
    handles = [encoder.embeddings.register_forward_hook(lambda m, i, o: seen.__setitem__("embeddings", o[0]))]
    for layer in encoder.layers:
        handles.append(layer.attention.query.register_forward_hook(lambda m, i, o: seen["query"].append(o[0])))
        handles.append(layer.attention.output.register_forward_hook(
            lambda m, i, o: seen["attention_output"].append(o[0])))
        handles.append(layer.register_forward_hook(lambda m, i, o: seen["layer_output"].append(o[0][0])))
    try:
        with torch.no_grad():
            out = encoder(ids, torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    seen["attentions"] = out.attentions[:, 0]  # (L, H, T, T)
    seen["last_hidden_state"] = out.last_hidden_state[0]
    return seen


@pytest.mark.parametrize("model", FAMILIES)
def test_every_step_equals_the_pytorch_encoder(client: httpx.Client, loaded: dict[str, LoadedCheckpoint],
                                               model: str) -> None:
    checkpoint = loaded[model]
    config = checkpoint.config
    layer, head, token = config.num_layers - 1, 1, 3
    body = _explain(client, model=model, input=TEXT, layer=layer, head=head, token=token)
    assert body["selection"] == {"layer": layer, "head": head, "token": token}
    ids = torch.tensor([[t["id"] for t in body["tokens"]]])
    seq = ids.shape[1]
    assert body["dims"] == {"tokens": seq, "layers": config.num_layers, "heads": config.num_heads,
                            "d_model": config.hidden_size, "d_k": config.head_dim}

    # The served encoder's own values, from hooks on Encoder.forward.
    hooked = _hooked_forward(checkpoint, ids)
    _close(body["input_vector"]["output"], hooked["embeddings"][token], "embedding output")
    _close(body["head"]["weights"], hooked["attentions"][layer, head, token], "softmax weights")
    _close(body["layer"]["attention_output"], hooked["attention_output"][layer][token], "attention output")
    _close(body["layer"]["output"], hooked["layer_output"][layer][token], "layer output")
    if config.position_embedding != "rotary" and not config.qk_norm:  # else q is rotated/normed after the Linear
        d_k = config.head_dim
        _close(body["head"]["q"], hooked["query"][layer][token, head * d_k:(head + 1) * d_k], "query")
    for step in body["trajectory"]:  # cosine of the token's vector after each layer to its input vector
        vector = hooked["layer_output"][step["layer"]][token]
        start = hooked["embeddings"][token]
        assert abs(step["cosine_to_input"] - float(torch.cosine_similarity(vector, start, dim=0))) <= TOLERANCE

    # Every intermediate, from the walk-through module the graph was exported from.
    with torch.no_grad():
        ref = ExplainEncoder(checkpoint.encoder.eval())(ids, torch.ones_like(ids), torch.tensor([token]))
    _close(ref.last_hidden_state, hooked["last_hidden_state"], "walk-through vs Encoder.forward", 1e-6)
    iv = body["input_vector"]
    _close(iv["token_embedding"], ref.embed_token[token], "token embedding")
    _close(iv["sum"], ref.embed_sum[token], "embedding sum")
    if iv["position"] is not None:
        _close(iv["position"], ref.embed_position[token], "position")
    else:
        assert config.position_embedding == "rotary"
        assert "rotary" in iv["position_note"]
    h = body["head"]
    _close(h["q"], ref.queries[layer, head, token], "q")
    _close(h["K"], ref.keys[layer, head], "K")
    _close(h["V"], ref.values[layer, head], "V")
    _close(h["raw_scores"], ref.raw_scores[layer, head, token], "raw scores")
    _close(h["scaled_scores"], ref.scaled_scores[layer, head, token], "scaled scores")
    _close(h["scaled_scores"], np.asarray(h["raw_scores"]) / math.sqrt(config.head_dim), "÷√d_k")
    assert h["scale"] == pytest.approx(math.sqrt(config.head_dim))
    _close(h["weighted_sum"], ref.context[layer, head, token], "weighted sum")
    _close(h["value_norms"], ref.value_output_norms[layer, head], "‖v W_O‖")
    _close(h["contributions"], ref.probs[layer, head, token] * ref.value_output_norms[layer, head], "‖α v W_O‖")
    _close(h["output"], ref.head_outputs[layer, head], "head output")
    visible = ref.visibility[layer, token] > 0.5
    assert h["visible"] == visible.tolist()
    assert [s is None for s in h["masked_scores"]] == (~visible).tolist()
    if config.causal:  # a decoder's query sees itself and the tokens before it, no more
        assert h["visible"] == [j <= token for j in range(seq)]
        assert all(w == 0.0 for w in h["weights"][token + 1:])
    if config.relative_attention_buckets:
        _close(h["position_bias"], ref.position_bias[head, token], "relative bias")
    else:
        assert h["position_bias"] is None
    lay = body["layer"]
    for key, ref_value in (("attention_input", ref.attention_input), ("residual", ref.attention_residual),
                           ("attention_block_output", ref.attention_block_output),
                           ("ffn_output", ref.ffn_output)):
        _close(lay[key], ref_value[layer, token], key)
    assert lay["norm_first"] == config.norm_first
    # The heads' outputs plus W_O's bias are the layer's attention output: the output projection, split by head.
    bias = checkpoint.encoder.layers[layer].attention.output.bias
    total = ref.head_outputs[layer].sum(0) + (bias if bias is not None else 0.0)
    _close(lay["attention_output"], total, "Σ head outputs + b_O")


@pytest.mark.parametrize("model", FAMILIES)
def test_weights_equal_the_encode_attention_row(client: httpx.Client, model: str) -> None:
    layer, head, token = 1, 2, 4
    body = _explain(client, model=model, input=OTHER, layer=layer, head=head, token=token)
    encoded = client.post("/v1/encode", json={"model": model, "input": OTHER,
                                              "attention": {"layers": [layer], "heads": [head]}})
    assert encoded.status_code == 200, encoded.text
    item = encoded.json()["data"][0]
    assert [t["id"] for t in item["tokens"]] == [t["id"] for t in body["tokens"]]
    row = np.asarray(item["attention"]["data"])[0, 0, token]
    _close(body["head"]["weights"], row, "explain weights vs /v1/encode", EXACT)
    weights = np.asarray(body["head"]["weights"])
    assert body["head"]["weight_order"] == sorted(range(len(weights)), key=lambda j: (-weights[j], j))


def test_rollout_is_the_residual_product_of_the_served_maps(client: httpx.Client) -> None:
    body = _explain(client, model="tiny-bert", input=TEXT, token=2)
    encoded = client.post("/v1/encode", json={"model": "tiny-bert", "input": TEXT, "attention": {}}).json()
    maps = np.asarray(encoded["data"][0]["attention"]["data"], dtype=np.float64)  # (L, H, T, T)
    seq = maps.shape[-1]
    rolled = np.eye(seq)
    for layer, attention in enumerate(maps):
        mixed = 0.5 * attention.mean(axis=0) + 0.5 * np.eye(seq)
        rolled = (mixed / mixed.sum(axis=-1, keepdims=True)) @ rolled
        _close(body["rollout"]["rows"][layer], rolled[2], f"rollout row after layer {layer}")
    _close(body["rollout"]["matrix"], rolled, "rollout matrix")
    assert np.allclose(np.asarray(body["rollout"]["matrix"]).sum(axis=1), 1.0, atol=1e-6)


def _served_cosine(client: httpx.Client, model: str, ids: list[list[int]]) -> float:
    response = client.post("/v1/embeddings", json={"model": model, "input": ids})
    assert response.status_code == 200, response.text
    a, b = (np.asarray(d["embedding"], dtype=np.float64) for d in response.json()["data"])
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("model", ["tiny-bert", "mpnet"])
def test_similarity_split_sums_to_the_served_cosine(client: httpx.Client, model: str) -> None:
    response = client.post("/v1/similarity/explain", json={"model": model, "input": [TEXT, OTHER]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decomposable"] is True
    assert body["pooling"] == "mean"
    matrix = np.asarray(body["contributions"], dtype=np.float64)
    sizes = [len(t) for t in body["tokens"]]
    assert matrix.shape == tuple(sizes)
    served = _served_cosine(client, model, [[t["id"] for t in tokens] for tokens in body["tokens"]])
    assert abs(matrix.sum() - served) <= EXACT, (matrix.sum(), served)
    assert abs(body["cosine"] - served) <= EXACT
    assert abs(body["sum"] - matrix.sum()) <= 1e-9
    _close(body["row_sums"], matrix.sum(axis=1), "row sums", 1e-9)
    assert np.asarray(body["token_cosines"]).shape == tuple(sizes)


def test_last_token_pooling_says_it_does_not_split(client: httpx.Client) -> None:
    response = client.post("/v1/similarity/explain", json={"model": "qwen3", "input": [TEXT, OTHER]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pooling"] == "lasttoken"
    assert body["decomposable"] is False
    assert body["contributions"] is None
    assert "last token" in body["note"]
    served = _served_cosine(client, "qwen3", [[t["id"] for t in tokens] for tokens in body["tokens"]])
    assert abs(body["cosine"] - served) <= EXACT


def test_vocabulary_coverage_names_the_unknown_tokens_and_the_other_models(client: httpx.Client) -> None:
    text = "小明喜欢她 because she likes him"
    body = _explain(client, model="tiny-bert", input=text)
    vocab = body["vocabulary"]
    flagged = [t for t in body["tokens"] if t["unknown"]]
    assert vocab["unknown_count"] == len(flagged) > 0
    content = [t for t in body["tokens"] if not (t["special"] and t["start"] is None)]
    assert vocab["unknown_share"] == pytest.approx(len(flagged) / len(content))
    assert vocab["unknown_token"] == flagged[0]["text"]
    shares = {m["model"]: m["unknown_share"] for m in vocab["models"]}
    assert set(shares) == set(FAMILIES)
    assert shares["tiny-bert"] == vocab["unknown_share"]
    assert shares["qwen3"] == 0.0  # a byte-level vocabulary covers every character


def _error(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return dict(error)


def test_bad_selections_and_sizes_are_422_in_one_shape(client: httpx.Client) -> None:
    for field, value in (("layer", 2), ("layer", -1), ("head", 4), ("token", 99)):
        error = _error(client, "/v1/explain", {"model": "tiny-bert", "input": TEXT, field: value})
        assert (error["param"], error["code"]) == (field, "validation_error"), error
    long_text = " ".join(["word"] * 60)
    error = _error(client, "/v1/explain", {"model": "tiny-bert", "input": long_text})
    assert error["code"] == "explain_budget_exceeded"
    assert str(MAX_TOKENS) in error["message"]
    assert "word word" not in error["message"]  # the input is never echoed
    error = _error(client, "/v1/similarity/explain", {"model": "tiny-bert", "input": [TEXT, long_text]})
    assert error["code"] == "explain_budget_exceeded"
    assert error["param"] == "input[1]"
    _error(client, "/v1/similarity/explain", {"input": [TEXT]})
    _error(client, "/v1/similarity/explain", {"input": [TEXT, OTHER, TEXT]})
    _error(client, "/v1/explain", {"input": TEXT, "layers": [0]})  # unknown field
    _error(client, "/v1/explain", {"input": ""})


def test_explain_graph_loads_on_first_use(checkpoints: dict[str, Path], tiny_artifact_dir: Path,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    log = tmp_path_factory.mktemp("explain-lazy") / "server.log"
    proc = ServerProcess(tiny_artifact_dir, log, EMBED_INTRA_OP_THREADS="1").wait_ready()
    try:
        with httpx.Client(base_url=proc.base_url, timeout=30.0) as c:
            assert c.get("/info").json()["explain_graph"] == "lazy"
            _explain(c, input=TEXT)
            assert c.get("/info").json()["explain_graph"] == "loaded"
    finally:
        proc.stop_and_check()
    off = ServerProcess(tiny_artifact_dir, log.with_name("off.log"), EMBED_EXPLAIN_GRAPH="off",
                        EMBED_INTRA_OP_THREADS="1").wait_ready()
    try:
        with httpx.Client(base_url=off.base_url, timeout=30.0) as c:
            error = _error(c, "/v1/explain", {"input": TEXT})
            assert error["code"] == "explain_unavailable"
            assert c.get("/info").json()["explain_available"] is False
    finally:
        off.stop_and_check()
