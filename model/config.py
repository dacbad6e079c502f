"""Hyper-parameters of the encoder, validated once so that a bad combination fails before any weight is made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

PositionEmbedding = Literal["learned", "sinusoidal"]
PoolingMode = Literal["mean", "cls", "max"]


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of a BERT-style encoder. Names follow the paper (d_model = hidden_size, h = num_heads).

    `position_embedding="learned"` is BERT's table of absolute positions; "sinusoidal" is the fixed encoding of
    "Attention Is All You Need", meant for configs trained from scratch (no checkpoint carries it).
    `norm_first=False` is BERT's post-norm (LayerNorm after each residual); True gives pre-norm.
    """

    vocab_size: int
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: Literal["gelu", "gelu_tanh", "relu"] = "gelu"
    position_embedding: PositionEmbedding = "learned"
    norm_first: bool = False
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"EncoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.position_embedding == "sinusoidal" and self.hidden_size % 2:
            raise ValueError("sinusoidal positions need an even hidden_size")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} outside the vocabulary")
        if self.hidden_act not in ("gelu", "gelu_tanh", "relu"):
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}")
        if self.position_embedding not in ("learned", "sinusoidal"):
            raise ValueError(f"unsupported position_embedding {self.position_embedding!r}")

    @property
    def head_dim(self) -> int:
        """d_k = d_model / h."""
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PoolingConfig:
    """How token vectors become one sentence vector (sentence-transformers' 1_Pooling/config.json)."""

    mode: PoolingMode = "mean"
    normalize: bool = True
    max_seq_length: int = 512

    def __post_init__(self) -> None:
        if self.mode not in ("mean", "cls", "max"):
            raise ValueError(f"unsupported pooling mode {self.mode!r}")
        if self.max_seq_length <= 0:
            raise ValueError("max_seq_length must be positive")
