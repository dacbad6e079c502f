"""What /v1/explain and /v1/similarity/explain answer, built from the explain graph's (or main graph's) outputs.

Numpy only, and only the arithmetic docs/explain.md names: picking a layer, head and query row out of the
graph's outputs, norms and cosines, products of weights and norms, the attention rollout's matrix products, and
the token-pair terms of a pooled cosine. Every vector and score itself comes from the ONNX graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.tokenizer import Encoded, Token

ROLLOUT_RESIDUAL = 0.5  # Abnar & Zuidema's residual share: Â = 0.5·A + 0.5·I
_EPS = 1e-12
# Poolings whose sentence vector is a weighted sum of token vectors, so a cosine of two splits into pairs.
_SUM_POOLINGS = ("mean", "weightedmean", "mean_sqrt_len_tokens")


@dataclass(frozen=True)
class Selection:
    layer: int
    head: int
    token: int
    neighbours: int = 3


def unknown_flags(encoded: Encoded, unk_id: int | None) -> list[bool]:
    return [unk_id is not None and t.id == unk_id and not _is_structural(t) for t in encoded.tokens]


def _is_structural(token: Token) -> bool:
    """[CLS]/[SEP]-like tokens the tokenizer added (no characters of the input behind them)."""
    return token.special and token.start is None


def token_rows(encoded: Encoded, unk_id: int | None) -> list[dict[str, Any]]:
    unknown = unknown_flags(encoded, unk_id)
    return [{"id": t.id, "text": t.text, "start": t.start, "end": t.end, "special": t.special, "unknown": u}
            for t, u in zip(encoded.tokens, unknown, strict=True)]


def unknown_share(encoded: Encoded, unk_id: int | None) -> tuple[int, float]:
    """(unknown tokens, their share of the tokens that stand for input characters)."""
    unknown = sum(unknown_flags(encoded, unk_id))
    content = sum(1 for t in encoded.tokens if not _is_structural(t))
    return unknown, unknown / content if content else 0.0


def default_token(encoded: Encoded) -> int:
    """The first token that stands for input characters (not [CLS] or <s>), else 0."""
    return next((i for i, t in enumerate(encoded.tokens) if not _is_structural(t)), 0)


def position_note(pattern: dict[str, Any], config: dict[str, Any]) -> str:
    """How position enters this model, in one sentence (rotary and relative models add no position vector)."""
    kind = pattern.get("position", config.get("position_embedding", "learned"))
    if kind == "rotary":
        note = ("rotary: no position vector is added; the q and k of the token at position p are rotated by "
                "angle p·θ^(-2i/d_k) in each pair of dimensions, so q·k depends on the tokens' distance "
                "(the q and K shown are the rotated vectors)")
    elif kind == "sinusoidal":
        note = "a fixed sinusoidal table (sin/cos of the position), added to the token embedding"
    elif kind == "learned" and config.get("position_ids") == "padding_offset":
        note = ("a learned absolute position table, added to the token embedding; positions count from the "
                "padding id + 1 (RoBERTa)")
    elif kind == "learned":
        note = "a learned absolute position table, added to the token embedding"
    else:
        note = "no position vector: only the causal mask orders the tokens"
    if pattern.get("relative_bias"):
        note += "; and a learned relative-position bias added to every layer's scores (position_bias)"
    return note


def rollout(probs: np.ndarray, residual: float = ROLLOUT_RESIDUAL) -> np.ndarray:
    """Attention rollout with the residual accounted for (Abnar & Zuidema, ACL 2020): (L, H, T, T) -> (L, T, T),
    R_l = Â_l R_{l-1}, Â_l = rownorm(residual·I + (1 - residual)·mean_h A_l), R_0 = I."""
    layers, _, seq, _ = probs.shape
    eye = np.eye(seq, dtype=np.float64)
    current = eye
    out = np.empty((layers, seq, seq), dtype=np.float64)
    for layer in range(layers):
        mixed = (1.0 - residual) * probs[layer].astype(np.float64).mean(axis=0) + residual * eye
        mixed /= mixed.sum(axis=-1, keepdims=True)
        current = mixed @ current
        out[layer] = current
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), _EPS))


def trajectory(start: np.ndarray, layer_outputs: np.ndarray, token: int, neighbours: int) -> list[dict[str, Any]]:
    """Layer by layer: the token's cosine to its input vector and to the previous layer's, and the other tokens
    whose vectors at that layer are closest to it."""
    steps = []
    previous = start[token]
    for layer, hidden in enumerate(layer_outputs):  # hidden: (T, D)
        vector = hidden[token]
        norms = np.linalg.norm(hidden, axis=1) * max(float(np.linalg.norm(vector)), _EPS)
        cosines = hidden @ vector / np.maximum(norms, _EPS)
        order = [int(j) for j in np.argsort(-cosines, kind="stable") if j != token][:neighbours]
        steps.append({"layer": layer, "cosine_to_input": _cosine(vector, start[token]),
                      "cosine_to_previous": _cosine(vector, previous),
                      "nearest": [{"token": j, "cosine": float(cosines[j])} for j in order]})
        previous = vector
    return steps


def _order(values: np.ndarray) -> list[int]:
    return [int(j) for j in np.argsort(-values, kind="stable")]


class _Rows:
    """An output whose every selection (`[layer, head]`, `[i]`) is copied out of it."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value
        self.shape = value.shape

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.array(self.value[key], copy=True)


def walkthrough(outs: dict[str, np.ndarray], selection: Selection, *, note: str, has_position: bool,
                has_segment: bool, norm_first: bool) -> dict[str, Any]:
    """Steps 1-6 of docs/explain.md for the selected token, layer and head, from the explain graph's outputs.

    Every array returned is a copy, never a view: a view of one row would keep the graph's whole output alive.
    """
    pick = {name: _Rows(value) for name, value in outs.items()}
    layer, head, i = selection.layer, selection.head, selection.token
    d_k = pick["queries"].shape[-1]
    visible = pick["visibility"][layer, i] > 0.5  # (T,)
    scaled = pick["scaled_scores"][layer, head, i]
    bias = pick["position_bias"][head, i]
    with_bias = scaled + bias
    weights = pick["probs"][layer, head, i]
    value_norms = pick["value_output_norms"][layer, head]  # (T,)
    contributions = weights * value_norms  # ‖alpha_j v_j W_O^h‖ = alpha_j ‖v_j W_O^h‖, alpha_j ≥ 0
    relative = bool(np.any(outs["position_bias"]))
    rolled = rollout(outs["probs"])
    return {
        "input_vector": {
            "token_embedding": pick["embed_token"][i],
            "position": pick["embed_position"][i] if has_position else None,
            "segment": pick["embed_segment"][i] if has_segment else None,
            "sum": pick["embed_sum"][i],
            "output": pick["embed_output"][i],
            "position_note": note,
        },
        "head": {
            "q": pick["queries"][layer, head, i],
            "K": pick["keys"][layer, head],
            "V": pick["values"][layer, head],
            "raw_scores": pick["raw_scores"][layer, head, i],
            "scale": math.sqrt(d_k),
            "scaled_scores": scaled,
            "position_bias": bias if relative else None,
            "visible": [bool(v) for v in visible],
            "masked_scores": [float(s) if v else None for s, v in zip(with_bias, visible, strict=True)],
            "weights": weights,
            "weighted_sum": pick["context"][layer, head, i],
            "value_norms": value_norms,
            "contributions": contributions,
            "weight_order": _order(weights),
            "contribution_order": _order(contributions),
            "output": pick["head_outputs"][layer, head],
        },
        "layer": {
            "norm_first": norm_first,
            "head_output_norms": np.linalg.norm(outs["head_outputs"][layer], axis=-1),
            "attention_input": pick["attention_input"][layer, i],
            "attention_output": pick["attention_output"][layer, i],
            "residual": pick["attention_residual"][layer, i],
            "attention_block_output": pick["attention_block_output"][layer, i],
            "ffn_output": pick["ffn_output"][layer, i],
            "output": pick["layer_output"][layer, i],
        },
        "trajectory": trajectory(outs["embed_output"], outs["layer_output"], i, selection.neighbours),
        "rollout": {"residual_weight": ROLLOUT_RESIDUAL, "rows": rolled[:, i], "matrix": rolled[-1]},
    }


# --- the similarity of two inputs, token pair by token pair -----------------------------------------------


def pooling_weights(mode: str, count: int) -> np.ndarray | None:
    """The weights w_i with pooled = Σ_i w_i h_i, for the poolings that are such a sum; None for the others."""
    if mode == "mean":
        return np.full(count, 1.0 / count)
    if mode == "mean_sqrt_len_tokens":
        return np.full(count, 1.0 / math.sqrt(count))
    if mode == "weightedmean":
        positions = np.arange(1, count + 1, dtype=np.float64)
        weights: np.ndarray = positions / positions.sum()
        return weights
    return None


def not_decomposable_note(mode: str, dense: bool) -> str | None:
    """Why a cosine does not split into token pairs for this pooling chain, or None when it does."""
    if dense:
        return ("the pooled vector goes through Dense layers (a non-linear map) before the cosine, so the cosine "
                "is not a sum over token pairs; token_cosines shows how similar the contextual tokens are")
    if mode in _SUM_POOLINGS:
        return None
    if mode in ("cls", "lasttoken"):
        which = "first ([CLS])" if mode == "cls" else "last"
        return (f"{mode} pooling: each sentence vector is its {which} token's contextual vector, so the cosine is "
                "that one pair's; the other tokens shape it only through attention, which is not a sum over "
                "pairs; token_cosines shows every pair's cosine instead")
    return (f"{mode} pooling takes a per-dimension maximum over tokens, not a sum, so the cosine has no exact "
            "token-pair split; token_cosines shows every pair's cosine instead")


def similarity_decomposition(hidden: tuple[np.ndarray, np.ndarray], pooled: tuple[np.ndarray, np.ndarray],
                             mode: str, dense: bool) -> dict[str, Any]:
    """cos(p_a, p_b) with p = Σ_i w_i h_i split into c_ij = w_i u_j (h_i·g_j) / (‖p_a‖ ‖p_b‖); Σ c_ij = cos.

    `pooled` are the graph's own sentence vectors (not normalised): their norms and cosine are the served ones.
    """
    a, b = (h.astype(np.float64) for h in hidden)
    pa, pb = (p.astype(np.float64) for p in pooled)
    norm_a, norm_b = max(float(np.linalg.norm(pa)), _EPS), max(float(np.linalg.norm(pb)), _EPS)
    cosine = float(pa @ pb / (norm_a * norm_b))
    unit_a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), _EPS)
    unit_b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), _EPS)
    out: dict[str, Any] = {"pooling": mode, "cosine": cosine, "token_cosines": unit_a @ unit_b.T}
    note = not_decomposable_note(mode, dense)
    wa, wb = pooling_weights(mode, len(a)), pooling_weights(mode, len(b))
    if note is not None or wa is None or wb is None:
        return {**out, "decomposable": False, "note": note, "contributions": None, "sum": None,
                "row_sums": None, "column_sums": None}
    contributions = (wa[:, None] * wb[None, :]) * (a @ b.T) / (norm_a * norm_b)
    return {**out, "decomposable": True,
            "note": (f"{mode} pooling: each sentence vector is a weighted sum of its token vectors, so the cosine "
                     "is exactly the sum of the token-pair terms w_i·u_j·(h_i·g_j)/(‖p_a‖‖p_b‖)"),
            "contributions": contributions, "sum": float(contributions.sum()),
            "row_sums": contributions.sum(axis=1), "column_sums": contributions.sum(axis=0)}
