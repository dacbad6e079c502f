"""The encoder's forward pass for one sequence with every intermediate kept: the explain graph's source.

`Encoder.forward` computes only what serving needs. This module re-runs the same steps with the encoder's own
modules (the same Linear, norm, rotary and bias objects, and the same `attention` arithmetic spelt out), keeping
each value a walk-through of self-attention shows: the input vector's parts, every head's q, K, V, the raw and
scaled scores, the mask, the softmax weights, the weighted sum, each head's output after its slice of W_O, the
residual, the norms and the feed-forward. `tests/model/test_explain.py` checks that its final states and
weights equal `Encoder.forward`'s, so the walk-through is the served computation, not a re-implementation.

Batch 1 and no padding: an explanation is of one input. The per-head outputs are kept only for the query token
(`query_index`): for every token they would be L × H × T × D values.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from model.encoder import Encoder
from model.layers import EncoderLayer, padding_mask_bias, padding_offset_positions, visibility_mask_bias

# The explain graph's outputs, in order (the export names them; the service reads them by name).
EXPLAIN_OUTPUTS = (
    "embed_token", "embed_position", "embed_segment", "embed_sum", "embed_output",  # (T, D) each
    "queries", "keys", "values",  # (L, H, T, d_k): q after q-norm and rotary; K/V repeated per query head (GQA)
    "raw_scores", "scaled_scores", "probs",  # (L, H, T, T): q·k, then ÷√d_k, then softmax (bias and mask added)
    "position_bias",  # (H, T, T): the relative-position bias added to every layer's scores (zeros without one)
    "visibility",  # (L, T, T): 1 where query i may see key j, 0 where the mask hides it
    "context",  # (L, H, T, d_k): Σ_j alpha_ij v_j
    "value_output_norms",  # (L, H, T): ‖v_j W_O^h‖
    "head_outputs",  # (L, H, D): the query token's context through its head's slice of W_O (no bias)
    "attention_input", "attention_output", "attention_residual", "attention_block_output",  # (L, T, D)
    "ffn_output", "layer_output",  # (L, T, D)
    "last_hidden_state",  # (T, D): after the final norm of pre-norm stacks
)


class ExplainOutputs(NamedTuple):
    embed_token: Tensor
    embed_position: Tensor
    embed_segment: Tensor
    embed_sum: Tensor
    embed_output: Tensor
    queries: Tensor
    keys: Tensor
    values: Tensor
    raw_scores: Tensor
    scaled_scores: Tensor
    probs: Tensor
    position_bias: Tensor
    visibility: Tensor
    context: Tensor
    value_output_norms: Tensor
    head_outputs: Tensor
    attention_input: Tensor
    attention_output: Tensor
    attention_residual: Tensor
    attention_block_output: Tensor
    ffn_output: Tensor
    layer_output: Tensor
    last_hidden_state: Tensor


class _LayerTrace(NamedTuple):
    queries: Tensor  # (H, T, d_k)
    keys: Tensor
    values: Tensor
    raw_scores: Tensor  # (H, T, T)
    scaled_scores: Tensor
    probs: Tensor
    context: Tensor  # (H, T, d_k)
    value_output_norms: Tensor  # (H, T)
    head_outputs: Tensor  # (H, D)
    attention_input: Tensor  # (T, D)
    attention_output: Tensor
    attention_residual: Tensor
    attention_block_output: Tensor
    ffn_output: Tensor
    layer_output: Tensor


class ExplainEncoder(nn.Module):
    """forward(input_ids (1, T), attention_mask (1, T), query_index (1,), token_type_ids (1, T) | None)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def _embeddings(self, input_ids: Tensor, token_type_ids: Tensor | None) -> tuple[Tensor, ...]:
        """The input vector's parts, as `Embeddings.forward` adds them: token + position + segment, then a norm."""
        emb = self.encoder.embeddings
        word = emb.word(input_ids)[0]  # (T, D)
        zero = torch.zeros_like(word)
        position = zero
        if emb.position is not None:
            if emb.position_ids == "padding_offset":
                position = emb.position(padding_offset_positions(input_ids, emb.pad_token_id))[0]
            else:
                position = emb.position(torch.arange(input_ids.size(1), device=input_ids.device))
        elif emb.sinusoid is not None:
            position = emb.sinusoid[: input_ids.size(1)]
        segment = zero
        if emb.token_type is not None:
            if token_type_ids is None or not self.encoder.config.uses_token_types:
                segment = emb.token_type.weight[0].expand_as(word)
            else:
                segment = emb.token_type(token_type_ids)[0]
        total = word + position + segment
        output = emb.norm(total[None])[0] if emb.norm is not None else total
        return word, position, segment, total, output

    def _layer(self, layer: EncoderLayer, x: Tensor, mask_bias: Tensor, rotary: tuple[Tensor, Tensor] | None,
               score_bias: Tensor | None, query_index: Tensor) -> _LayerTrace:
        """One layer's steps; x (1, T, D), mask_bias (1, 1, T, T) or (1, 1, 1, T)."""
        att = layer.attention
        attention_input = layer.attention_norm(x) if layer.norm_first else x
        q, k, v = att.project(attention_input, rotary)  # (1, H, T, d_k) each
        raw = torch.matmul(q, k.transpose(-1, -2))  # (1, H, T, T)
        scaled = raw / math.sqrt(att.d_k)
        scores = scaled + score_bias if score_bias is not None else scaled
        probs = torch.softmax(scores + mask_bias, dim=-1)
        context = torch.matmul(probs, v)  # (1, H, T, d_k)
        seq = x.size(1)
        concat = context.transpose(1, 2).reshape(1, seq, att.n_heads * att.d_k)
        attention_output = att.output(concat)  # (1, T, D), with the output bias
        # W_O is (D, H·d_k): its columns h·d_k .. (h+1)·d_k are head h's slice.
        w_o = att.output.weight.view(-1, att.n_heads, att.d_k)  # (D, H, d_k)
        value_outputs = torch.einsum("htk,dhk->htd", v[0], w_o)  # (H, T, D): v_j W_O^h
        value_output_norms = value_outputs.norm(dim=-1)  # (H, T)
        query_context = context[0].index_select(1, query_index)[:, 0]  # (H, d_k)
        head_outputs = torch.einsum("hk,dhk->hd", query_context, w_o)  # (H, D)
        residual = x + attention_output
        if layer.norm_first:
            block_output = residual
            ffn_output = layer.feed_forward(layer.output_norm(block_output))
            layer_output = block_output + ffn_output
        else:
            block_output = layer.attention_norm(residual)
            ffn_output = layer.feed_forward(block_output)
            layer_output = layer.output_norm(block_output + ffn_output)
        return _LayerTrace(q[0], k[0], v[0], raw[0], scaled[0], probs[0], context[0], value_output_norms,
                           head_outputs, attention_input[0], attention_output[0], residual[0], block_output[0],
                           ffn_output[0], layer_output[0])

    def forward(self, input_ids: Tensor, attention_mask: Tensor, query_index: Tensor,
                token_type_ids: Tensor | None = None) -> ExplainOutputs:
        encoder = self.encoder
        config = encoder.config
        word, position, segment, total, x0 = self._embeddings(input_ids, token_type_ids)
        seq = input_ids.size(1)
        dtype = x0.dtype
        # The same masks and position terms as Encoder.forward, built the same way.
        if config.causal:
            global_mask = visibility_mask_bias(attention_mask, dtype, causal=True, window=0)
        else:
            global_mask = padding_mask_bias(attention_mask, dtype)
        local_mask = (visibility_mask_bias(attention_mask, dtype, causal=config.causal, window=config.local_window)
                      if config.local_window else None)
        score_bias = encoder.relative_bias(seq) if encoder.relative_bias is not None else None  # (1, H, T, T)
        rotary_global = encoder.rotary_global(seq, x0.device) if encoder.rotary_global is not None else None
        rotary_local = encoder.rotary_local(seq, x0.device) if encoder.rotary_local is not None else rotary_global
        x = x0[None]
        traces: list[_LayerTrace] = []
        visibility = []
        for index, module in enumerate(encoder.layers):
            layer = cast(EncoderLayer, module)
            is_global = config.is_global_layer(index)
            # A local layer exists only with a window, which builds local_mask.
            mask = global_mask if is_global or local_mask is None else local_mask
            trace = self._layer(layer, x, mask, rotary_global if is_global else rotary_local, score_bias,
                                query_index)
            traces.append(trace)
            visibility.append((mask[0, 0] == 0).to(dtype).expand(seq, seq))  # (T, T)
            x = trace.layer_output[None]
        last = encoder.final_norm(x)[0] if encoder.final_norm is not None else x[0]
        heads = config.num_heads
        bias = score_bias[0] if score_bias is not None else torch.zeros(heads, seq, seq, dtype=dtype)

        def stacked(field: str) -> Tensor:
            return torch.stack([getattr(t, field) for t in traces])

        return ExplainOutputs(
            word, position, segment, total, x0,
            stacked("queries"), stacked("keys"), stacked("values"),
            stacked("raw_scores"), stacked("scaled_scores"), stacked("probs"),
            bias, torch.stack(visibility), stacked("context"), stacked("value_output_norms"),
            stacked("head_outputs"), stacked("attention_input"), stacked("attention_output"),
            stacked("attention_residual"), stacked("attention_block_output"), stacked("ffn_output"),
            stacked("layer_output"), last,
        )
