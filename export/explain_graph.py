"""The explain graph: `model.explain.ExplainEncoder` to ONNX, checked against the PyTorch walk-through.

One sequence (batch 1, no padding) with a dynamic length, plus `query_index` ([1] int64), the token whose
per-head outputs the graph keeps. The service reads every intermediate of /v1/explain from this graph, so the
export checks each of its outputs against PyTorch on inputs unlike the trace's (other lengths, other query
tokens) before the manifest lists it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from export import onnx_export
from export.manifest import io_spec
from model import Encoder
from model.explain import EXPLAIN_OUTPUTS, ExplainEncoder

log = logging.getLogger(__name__)

FILE = "model_explain.onnx"
# The bound for every output: 1e-4, relative to the output's scale where its values exceed 1 (a real model's
# feed-forward outputs reach tens, where float32 summation order alone moves the last digits by ~1e-5).
MAX_ABS = 1e-4
# The shapes of each output, for the manifest (T = sequence_length).
_SHAPES: dict[str, list[str]] = {
    **{name: ["sequence_length", "hidden_size"] for name in
       ("embed_token", "embed_position", "embed_segment", "embed_sum", "embed_output", "last_hidden_state")},
    **{name: ["num_layers", "num_heads", "sequence_length", "head_dim"] for name in
       ("queries", "keys", "values", "context")},
    **{name: ["num_layers", "num_heads", "sequence_length", "sequence_length"] for name in
       ("raw_scores", "scaled_scores", "probs")},
    "position_bias": ["num_heads", "sequence_length", "sequence_length"],
    "visibility": ["num_layers", "sequence_length", "sequence_length"],
    "value_output_norms": ["num_layers", "num_heads", "sequence_length"],
    "head_outputs": ["num_layers", "num_heads", "hidden_size"],
    **{name: ["num_layers", "sequence_length", "hidden_size"] for name in
       ("attention_input", "attention_output", "attention_residual", "attention_block_output", "ffn_output",
        "layer_output")},
}
_T_AXES: dict[str, tuple[int, ...]] = {name: tuple(i for i, a in enumerate(shape) if a == "sequence_length")
                                       for name, shape in _SHAPES.items()}
# Sentences for the check, none of the trace's length (11) and with different query tokens.
CHECK_TEXTS = ("I love ai", "Xiaoming likes her because Xiaohua helped him, not Xiaoli.",
               "Attention weights alone can rank tokens differently from what each token contributes.")


def input_names(encoder: Encoder) -> tuple[str, ...]:
    names = ["input_ids", "attention_mask", "query_index"]
    if encoder.config.uses_token_types:
        names.append("token_type_ids")
    return tuple(names)


class _ExplainGraph(nn.Module):
    def __init__(self, encoder: Encoder, names: tuple[str, ...]) -> None:
        super().__init__()
        self.explain = ExplainEncoder(encoder)
        self.names = names

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        feeds = dict(zip(self.names, inputs, strict=True))
        return tuple(self.explain(feeds["input_ids"], feeds["attention_mask"], feeds["query_index"],
                                  feeds.get("token_type_ids")))


def _dummy(encoder: Encoder, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    vocab_size = encoder.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 % vocab_size, vocab_size, (1, 11), generator=generator)
    values = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "query_index": torch.tensor([3]),
              "token_type_ids": torch.zeros_like(ids)}
    return tuple(values[name] for name in names)


def export(encoder: Encoder, path: Path, *, external_data_threshold: int = onnx_export.EXTERNAL_DATA_THRESHOLD
           ) -> None:
    names = input_names(encoder)
    axes: dict[str, dict[int, str]] = {name: {1: "sequence_length"} for name in names if name != "query_index"}
    for name, t_axes in _T_AXES.items():
        axes[name] = dict.fromkeys(t_axes, "sequence_length")
    onnx_export._trace(_ExplainGraph(encoder, names), _dummy(encoder, names), path, names, list(EXPLAIN_OUTPUTS),
                       axes, external_data_threshold)
    log.info("exported %s", path.name)


def check(encoder: Encoder, path: Path, tokenizer: Tokenizer) -> dict[str, Any]:
    """Every output of the ONNX graph against PyTorch on CHECK_TEXTS; raises ValueError above MAX_ABS
    (times the output's largest magnitude where that exceeds 1).

    Returns the manifest's parity entry (the largest difference per output) and the median latency.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = input_names(encoder)
    worst: dict[str, float] = dict.fromkeys(EXPLAIN_OUTPUTS, 0.0)
    scale: dict[str, float] = dict.fromkeys(EXPLAIN_OUTPUTS, 1.0)
    times = []
    explain = ExplainEncoder(encoder).eval()
    for k, text in enumerate(CHECK_TEXTS):
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        query = np.asarray([(k + 1) % ids.shape[1]], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "query_index": query,
                 "token_type_ids": np.zeros_like(ids)}
        t0 = time.perf_counter()
        got = session.run(list(EXPLAIN_OUTPUTS), {n: feeds[n] for n in names})
        times.append(time.perf_counter() - t0)
        with torch.no_grad():
            want = explain(torch.from_numpy(ids), torch.from_numpy(feeds["attention_mask"]), torch.from_numpy(query),
                           torch.from_numpy(feeds["token_type_ids"]) if "token_type_ids" in names else None)
        for name, a, b in zip(EXPLAIN_OUTPUTS, got, want, strict=True):
            if a.shape != tuple(b.shape):
                raise ValueError(f"{path.name}: output {name} has shape {a.shape}, PyTorch {tuple(b.shape)}")
            want_np = b.detach().numpy()
            worst[name] = max(worst[name], float(np.abs(a - want_np).max(initial=0.0)))
            scale[name] = max(scale[name], float(np.abs(want_np).max(initial=0.0)))
    bad = {n: d for n, d in worst.items() if d > MAX_ABS * scale[n]}
    if bad:
        raise ValueError(f"{path.name} differs from the PyTorch walk-through by more than {MAX_ABS} "
                         f"(times the output's largest magnitude where over 1): {bad}")
    log.info("%s matches PyTorch: largest difference %.2e (%s)", path.name, max(worst.values()),
             max(worst, key=lambda n: worst[n]))
    return {"max_abs_vs_torch": worst, "max_abs_value": scale, "texts": len(CHECK_TEXTS),
            "median_ms": 1000 * float(np.median(times))}


def manifest_entry(encoder: Encoder, path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The `graphs.explain` entry: its file, inputs, outputs and the parity it was exported with."""
    config = encoder.config
    sizes = {"hidden_size": config.hidden_size, "head_dim": config.head_dim, "num_layers": config.num_layers,
             "num_heads": config.num_heads}
    return {
        "file": path.name,
        "inputs": [io_spec(n, "int64", [1] if n == "query_index" else [1, "sequence_length"])
                   for n in input_names(encoder)],
        "outputs": [io_spec(name, "float32", [sizes.get(a, a) for a in _SHAPES[name]]) for name in EXPLAIN_OUTPUTS],
        "providers": ["CPUExecutionProvider", "CUDAExecutionProvider"],
        "default": False,
        "size_bytes": sum(p.stat().st_size for p in path.parent.glob(path.name + "*")),
        "parity": {"max_abs_vs_torch": report["max_abs_vs_torch"], "max_abs_value": report["max_abs_value"],
                   "texts": report["texts"], "tolerance": MAX_ABS},
        "latency_ms": {"batch": 1, "median": round(report["median_ms"], 3), "provider": "CPUExecutionProvider",
                       "texts": report["texts"]},
    }
