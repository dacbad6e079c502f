"""The machine's arithmetic limit for this encoder: FLOPs per token and the CPU's measured fp32 matmul rate.

A served tokens/s figure means little alone; divided by what the arithmetic allows it says how much is left to win.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def encoder_flops_per_token(*, hidden_size: int, intermediate_size: int, num_layers: int, mean_tokens: float) -> float:
    """Forward FLOPs per real token of a BERT encoder, counting multiply-adds as 2 FLOPs.

    Per layer, with d = hidden_size, f = intermediate_size, T = sequence length (tokens attended to):

        projections  Q, K, V, O : 4 matrices d×d      -> 2 · 4d²  = 8d²
        feed-forward in and out : d×f and f×d         -> 2 · 2df  = 4df
        attention scores  QKᵀ   : T keys × d          -> 2 · T·d
        attention context A·V   : T values × d        -> 2 · T·d

        F(T) = L · (8d² + 4df + 4Td)

    i.e. 2 × (matmul parameters per token) plus the T-dependent attention terms, evaluated at the corpus's mean
    real length (padding is waste, not work, so it is not counted). Embedding lookups, LayerNorm, GELU, softmax and
    pooling are O(d) per token and left out (under 1% here). For all-MiniLM-L6-v2 (d=384, f=1536, L=6):
    21.2 MFLOP + 9,216·T FLOP per token.
    """
    d, f, n_layers = hidden_size, intermediate_size, num_layers
    return float(n_layers * (8 * d * d + 4 * d * f + 4 * mean_tokens * d))


def attention_length(tokens: Sequence[int]) -> float:
    """The sequence length the attention term must be evaluated at: E[T²]/E[T], not the mean T.

    A token in a sequence of T tokens attends to T keys, so the corpus's attention FLOPs per real token are
    Σ Tᵢ·Tᵢ / Σ Tᵢ = E[T²]/E[T], which exceeds the mean whenever lengths vary (a few long documents carry most of
    the attention work). Evaluated at the mean, the limit would be too high and the efficiency too low.
    """
    total = sum(tokens)
    return float(sum(t * t for t in tokens) / total) if total else 0.0


def model_flops_per_token(config: Mapping[str, Any], tokens: Sequence[int]) -> dict[str, float]:
    """Forward FLOPs per real token for any family in a manifest's `config`, on a corpus of `tokens` lengths.

    Per layer: the Q and O projections are d × (h·d_k), K and V d × (h_kv·d_k) (grouped-query attention has fewer
    K/V heads); the feed-forward is two d×f matrices, or three for gated ones (GeGLU, SwiGLU); attention costs
    2·2·h·d_k per key attended to. Keys attended to: E[T²]/E[T] for bidirectional attention, (E[T²]/E[T] + 1)/2 for
    causal attention (a query sees only the keys before it), and at most the window on local-attention layers
    (ModernBERT). Multiply-adds count 2 FLOPs; embeddings, norms, activations and pooling are left out (O(d)).
    """
    d = int(config["hidden_size"])
    f = int(config["intermediate_size"])
    layers = int(config["num_layers"])
    heads = int(config["num_heads"])
    head_dim = int(config.get("attention_head_dim") or d // heads)
    kv_heads = int(config.get("num_kv_heads") or heads)
    gated = config.get("feed_forward", "mlp") in ("geglu", "swiglu")
    keys = attention_length(tokens)
    if config.get("causal"):
        keys = (keys + 1) / 2
    window = int(config.get("local_window") or 0)
    every = int(config.get("global_every") or 1)
    projection = 2 * (2 * d * heads * head_dim + 2 * d * kv_heads * head_dim)
    feed_forward = 2 * (3 if gated else 2) * d * f
    attention = 0.0
    for index in range(layers):
        attended = keys if window == 0 or index % every == 0 else min(keys, window + 1)
        attention += 4 * heads * head_dim * attended
    matmul = layers * (projection + feed_forward)
    return {"flops_per_token": float(matmul + attention), "matmul_flops_per_token": float(matmul),
            "attention_flops_per_token": attention, "attention_length": attention_length(tokens),
            "mean_tokens": float(sum(tokens) / len(tokens)) if tokens else 0.0}


def _best_seconds(call: Any, repeats: int, max_seconds: float) -> float:
    call()  # the first call pays thread-pool start-up and weight packing
    best = float("inf")
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    return best


def _matmul_calls(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """The same fp32 product through each BLAS at hand. Libraries differ by CPU: numpy's OpenBLAS picks its
    Haswell (AVX2) kernels on CPUs it does not know, e.g. AMD Zen 5, where onnxruntime's MLAS runs AVX-512 at
    ~1.8× the rate; so the machine's limit is the fastest of them, not numpy's alone."""
    calls: dict[str, Any] = {"numpy": lambda: a @ b}
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        n = a.shape[0]
        spec = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("A", "B", "C")]
        graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul", spec[:2], spec[2:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        calls["onnxruntime"] = lambda: session.run(None, {"A": a, "B": b})
    except ImportError:
        pass
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        calls["torch"] = lambda: ta @ tb
    except ImportError:
        pass
    return calls


def matmul_flops_per_s(*, n: int = 2048, repeats: int = 20, max_seconds: float = 20.0) -> dict[str, Any]:
    """Best-of-`repeats` fp32 n×n @ n×n rate on all cores, through numpy, onnxruntime and torch (whichever are
    installed); `flops_per_s` is the fastest library's: the machine's practical peak."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    by_library = {name: 2.0 * n**3 / _best_seconds(call, repeats, max_seconds / 3)
                  for name, call in _matmul_calls(a, b).items()}
    fastest = max(by_library, key=by_library.__getitem__)
    return {"n": n, "dtype": "float32", "library": fastest, "flops_per_s": by_library[fastest],
            "by_library": by_library}
