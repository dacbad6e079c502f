"""Hyper-parameters of the encoder, validated once so that a bad combination fails before any weight is made.

One config describes every family we load (BERT, DistilBERT, RoBERTa/XLM-R, MPNet, ModernBERT, Qwen3-style
decoders): the families differ only in which variant of each textbook step they use, never in the steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# How a token learns where it is (step 1 of the walk-through):
#   learned    - a trained table of absolute positions added to the token embedding (BERT, DistilBERT, XLM-R, MPNet)
#   sinusoidal - the fixed sin/cos table of "Attention Is All You Need" (from-scratch configs only)
#   rotary     - no table: Q and K are rotated by their position inside attention (RoFormer; ModernBERT, Qwen3)
#   none       - no absolute position at all
PositionEmbedding = Literal["learned", "sinusoidal", "rotary", "none"]
# Which index each token's learned position has: 0..T-1 ("arange", BERT), or RoBERTa's count of real tokens
# starting after the padding index ("padding_offset": cumsum(mask) * mask + padding_idx; XLM-R, MPNet).
PositionIds = Literal["arange", "padding_offset"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
Norm = Literal["layernorm", "rmsnorm"]
# mlp: down(act(up(x))); geglu/swiglu: down(act(gate(x)) * up(x)) (Shazeer, "GLU Variants Improve Transformer").
FeedForwardKind = Literal["mlp", "geglu", "swiglu"]
PoolingMode = Literal["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
DenseActivation = Literal["identity", "tanh", "relu", "gelu", "sigmoid"]

POSITION_EMBEDDINGS = ("learned", "sinusoidal", "rotary", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
DENSE_ACTIVATIONS = ("identity", "tanh", "relu", "gelu", "sigmoid")


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of one Transformer stack. Names follow the paper (d_model = hidden_size, h = num_heads).

    The defaults are BERT's: learned absolute positions, post-norm (LayerNorm after each residual), a GELU MLP,
    biases everywhere, bidirectional attention. Each other field switches one step to another family's variant.
    """

    vocab_size: int
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    # Segment (token-type) embeddings: 0 = none; 1 = a single row added to every token (RoBERTa), which needs no
    # graph input; 2+ = BERT's sentence A/B embedding, fed as token_type_ids.
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: Activation = "gelu"
    position_embedding: PositionEmbedding = "learned"
    position_ids: PositionIds = "arange"
    norm_first: bool = False
    pad_token_id: int = 0
    # --- attention variants ---
    num_kv_heads: int | None = None  # grouped-query attention (Qwen3): fewer K/V heads than Q heads
    attention_head_dim: int | None = None  # d_k when it is not d_model / h (Qwen3)
    qk_norm: bool = False  # RMSNorm of each head's q and k before the dot product (Qwen3)
    causal: bool = False  # a query sees only itself and earlier keys (decoders)
    local_window: int = 0  # ModernBERT: keys within window // 2 of the query on local layers; 0 = none
    global_every: int = 1  # layer i attends globally when i % global_every == 0 (ModernBERT)
    rope_theta: float = 10000.0  # rotary base on global layers
    local_rope_theta: float | None = None  # rotary base on local layers (ModernBERT); None = rope_theta
    relative_attention_buckets: int = 0  # MPNet/T5 bucketed relative-position bias on every layer; 0 = none
    relative_attention_max_distance: int = 128
    # --- norm, feed-forward and bias variants ---
    norm: Norm = "layernorm"
    norm_bias: bool = True
    feed_forward: FeedForwardKind = "mlp"
    attention_bias: bool = True
    mlp_bias: bool = True
    embedding_norm: bool = True  # a norm right after the embeddings (encoders); decoders have none
    first_attention_norm: bool = True  # ModernBERT's layer 0 has no pre-attention norm (embeddings are normed)

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_position_embeddings", "global_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"EncoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.type_vocab_size < 0 or self.local_window < 0 or self.relative_attention_buckets < 0:
            raise ValueError("type_vocab_size, local_window and relative_attention_buckets must not be negative")
        if self.attention_head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.kv_heads}")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"unsupported position_embedding {self.position_embedding!r}")
        if self.position_ids not in ("arange", "padding_offset"):
            raise ValueError(f"unsupported position_ids {self.position_ids!r}")
        if self.position_embedding == "sinusoidal" and self.hidden_size % 2:
            raise ValueError("sinusoidal positions need an even hidden_size")
        if self.position_embedding == "rotary" and self.head_dim % 2:
            raise ValueError("rotary positions need an even head dimension")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} outside the vocabulary")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unsupported norm {self.norm!r}")
        if self.feed_forward not in ("mlp", "geglu", "swiglu"):
            raise ValueError(f"unsupported feed_forward {self.feed_forward!r}")
        if self.position_ids == "padding_offset" and self.position_embedding != "learned":
            raise ValueError("position_ids='padding_offset' indexes a learned position table")

    @property
    def head_dim(self) -> int:
        """d_k: d_model / h unless the checkpoint states it."""
        return self.attention_head_dim or self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def uses_token_types(self) -> bool:
        """Only a table with more than one segment needs token_type_ids as an input."""
        return self.type_vocab_size > 1

    def is_global_layer(self, index: int) -> bool:
        return self.local_window == 0 or index % self.global_every == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DenseConfig:
    """One sentence-transformers Dense module: a Linear layer and an activation on the pooled vector."""

    in_features: int
    out_features: int
    bias: bool = True
    activation: DenseActivation = "tanh"

    def __post_init__(self) -> None:
        if self.in_features <= 0 or self.out_features <= 0:
            raise ValueError("Dense in_features and out_features must be positive")
        if self.activation not in DENSE_ACTIVATIONS:
            raise ValueError(f"unsupported Dense activation {self.activation!r}")


@dataclass(frozen=True)
class PoolingConfig:
    """How token vectors become one sentence vector: sentence-transformers' Pooling, then Dense modules, then
    (outside the graph, as a request may turn it off) Normalize.

    `include_prompt=False` leaves the prompt's tokens out of the pooled mean (INSTRUCTOR-style models).
    """

    mode: PoolingMode = "mean"
    normalize: bool = True
    max_seq_length: int = 512
    include_prompt: bool = True
    dense: tuple[DenseConfig, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"unsupported pooling mode {self.mode!r}")
        if self.max_seq_length <= 0:
            raise ValueError("max_seq_length must be positive")

    def chain(self) -> list[dict[str, Any]]:
        """The module chain as the manifest records it."""
        steps: list[dict[str, Any]] = [{"type": "Pooling", "mode": self.mode, "include_prompt": self.include_prompt}]
        steps += [{"type": "Dense", **asdict(d)} for d in self.dense]
        if self.normalize:
            steps.append({"type": "Normalize"})
        return steps
