"""Qwen3-style decoder embedders: causal pre-RMSNorm SwiGLU layers with rotary positions, grouped-query
attention and per-head RMSNorm of q and k; pooled from the last token, padded on the left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.config import EncoderConfig
from model.families.base import CheckpointError, Family, activation, require, sizes
from model.families.rope import single_theta


def _read(raw: dict[str, Any], path: Path) -> EncoderConfig:
    if raw.get("use_sliding_window"):
        raise CheckpointError(f"{path}: unsupported use_sliding_window=true (sliding-window decoders)")
    types = raw.get("layer_types")
    if types is not None and any(t != "full_attention" for t in types):
        raise CheckpointError(f"{path}: unsupported layer_types {sorted(set(types))} (supported: full_attention)")
    theta = single_theta(raw, path)
    try:
        heads = int(require(raw, "num_attention_heads", path))
        return EncoderConfig(
            **sizes(raw, path),
            max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
            type_vocab_size=0,
            layer_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            hidden_act=activation(raw, "hidden_act", path, default="silu"),
            position_embedding="rotary",
            norm_first=True,
            pad_token_id=int(raw.get("pad_token_id") or 0),
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            attention_head_dim=int(raw["head_dim"]) if raw.get("head_dim") else None,
            qk_norm=True,
            causal=True,
            rope_theta=theta,
            norm="rmsnorm",
            feed_forward="swiglu",
            attention_bias=bool(raw.get("attention_bias", False)),
            mlp_bias=False,
            embedding_norm=False,
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


QWEN3 = Family(
    name="qwen3",
    model_types=("qwen3",),
    read_config=_read,
    embedding_keys={"embed_tokens": "embeddings.word"},
    layer_prefix=r"^layers\.(\d+)\.",
    layer_keys={
        "self_attn.q_proj": "attention.query",
        "self_attn.k_proj": "attention.key",
        "self_attn.v_proj": "attention.value",
        "self_attn.o_proj": "attention.output",
        "self_attn.q_norm": "attention.q_norm",
        "self_attn.k_norm": "attention.k_norm",
        "input_layernorm": "attention_norm",
        "post_attention_layernorm": "output_norm",
        "mlp.gate_proj": "feed_forward.gate",
        "mlp.up_proj": "feed_forward.up",
        "mlp.down_proj": "feed_forward.down",
    },
    final_keys={"norm": "final_norm"},
    prefixes=("model.",),
    ignored=r"^(lm_head\.|score\.|rotary_emb\.)",
    padding_side="left",
    default_pooling="lasttoken",
)
