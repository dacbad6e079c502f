"""Task heads on top of the encoder: sequence classification (rerank and classify) and SPLADE sparse vectors.

Each head is the textbook module its checkpoints were trained with, written here so that the exported graph is
ours end to end: the classifier reads one pooled vector (BERT's pooler, RoBERTa's classification head,
ModernBERT's prediction head, DistilBERT's pre-classifier are all "dense, activation, maybe a norm, then a
linear layer"), and SPLADE is a masked-language-model head whose logits are pooled over the tokens as
sentence-transformers' SpladePooling does.

Like the encoder, a task model has one fixed forward signature and one fixed output tuple.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from model.encoder import Encoder, first_token_index, pool
from model.layers import activate

Task = Literal["embed", "rerank", "classify", "sparse"]
TASKS: tuple[str, ...] = ("embed", "rerank", "classify", "sparse")
HeadActivation = Literal["tanh", "relu", "gelu", "gelu_tanh", "silu"]
SpladeStrategy = Literal["max", "sum"]
SpladeActivation = Literal["relu", "log1p_relu"]
# A head parameter the checkpoint may leave out because it is tied to the word embeddings (MLM decoders).
TIED_TO_WORD_EMBEDDINGS = "=embeddings.word.weight"


@dataclass(frozen=True)
class HeadRecipe:
    """Where one family's head lives in its checkpoint: our parameter -> the Hugging Face keys that may hold
    it, first found wins (a tied decoder lists TIED_TO_WORD_EMBEDDINGS last)."""

    keys: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class ClassifierConfig:
    """pool -> dense -> activation -> (norm) -> linear to num_labels.

    BERT (pooler) and RoBERTa (classification head): cls, tanh. DistilBERT: cls, relu. ModernBERT: cls or mean,
    its classifier_activation, then a LayerNorm.
    """

    hidden_size: int
    num_labels: int
    pooling: Literal["cls", "mean"] = "cls"
    activation: HeadActivation = "tanh"
    dense_bias: bool = True
    norm: bool = False
    norm_eps: float = 1e-5
    norm_bias: bool = True

    def __post_init__(self) -> None:
        if self.num_labels <= 0:
            raise ValueError(f"num_labels must be positive, got {self.num_labels}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"unsupported classifier pooling {self.pooling!r}")


@dataclass(frozen=True)
class SparseConfig:
    """MLM head (dense -> activation -> LayerNorm -> decoder to the vocabulary) and SpladePooling."""

    hidden_size: int
    vocab_size: int
    activation: HeadActivation = "gelu"
    norm_eps: float = 1e-12
    pooling_strategy: SpladeStrategy = "max"
    splade_activation: SpladeActivation = "relu"

    def __post_init__(self) -> None:
        if self.pooling_strategy not in ("max", "sum"):
            raise ValueError(f"unsupported SPLADE pooling_strategy {self.pooling_strategy!r}")
        if self.splade_activation not in ("relu", "log1p_relu"):
            raise ValueError(f"unsupported SPLADE activation_function {self.splade_activation!r}")


def _activate(x: Tensor, name: str) -> Tensor:
    return torch.tanh(x) if name == "tanh" else activate(x, name)


class ClassificationHead(nn.Module):
    """(B, T, D) token vectors -> (B, num_labels) raw logits."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        d_model = config.hidden_size
        self.dense = nn.Linear(d_model, d_model, bias=config.dense_bias)
        self.norm = nn.LayerNorm(d_model, eps=config.norm_eps, bias=config.norm_bias) if config.norm else None
        self.classifier = nn.Linear(d_model, config.num_labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        pooled = pool(hidden, attention_mask, self.config.pooling, first_token_index(attention_mask))  # (B, D)
        x = _activate(self.dense(pooled), self.config.activation)
        if self.norm is not None:
            x = self.norm(x)
        return self.classifier(x)  # (B, num_labels)


class MaskedLMHead(nn.Module):
    """BERT's `cls.predictions` / DistilBERT's vocab_* layers: (B, T, D) -> (B, T, V) token logits."""

    def __init__(self, config: SparseConfig) -> None:
        super().__init__()
        self.config = config
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden: Tensor) -> Tensor:
        x = self.norm(_activate(self.transform(hidden), self.config.activation))
        return self.decoder(x)


def splade_pool(logits: Tensor, attention_mask: Tensor, strategy: str, activation: str) -> Tensor:
    """sentence-transformers' SpladePooling: log(1 + relu(logits * mask)) (log1p once more for log1p_relu),
    then max or sum over the tokens: (B, T, V) -> (B, V). Masked tokens give 0, never more than a real one."""
    x = torch.log1p(torch.relu(logits * attention_mask.unsqueeze(-1).to(logits.dtype)))  # (B, T, V)
    if activation == "log1p_relu":
        x = torch.log1p(x)
    return x.max(dim=1).values if strategy == "max" else x.sum(dim=1)


class ClassifierOutput(NamedTuple):
    last_hidden_state: Tensor  # (B, T, D)
    logits: Tensor  # (B, num_labels), no activation
    attentions: Tensor  # (L, B, H, T, T)


class SparseOutput(NamedTuple):
    last_hidden_state: Tensor  # (B, T, D)
    sparse_values: Tensor  # (B, K) descending
    sparse_indices: Tensor  # (B, K) int64 vocabulary ids
    attentions: Tensor  # (L, B, H, T, T)


class SequenceClassifier(nn.Module):
    """Encoder + ClassificationHead: a cross-encoder (1 label, rerank) or a classifier (N labels)."""

    def __init__(self, encoder: Encoder, head: ClassificationHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                token_type_ids: Tensor | None = None) -> ClassifierOutput:
        out = self.encoder(input_ids, attention_mask, token_type_ids)
        return ClassifierOutput(out.last_hidden_state, self.head(out.last_hidden_state, attention_mask),
                                out.attentions)


class SpladeEncoder(nn.Module):
    """Encoder + MaskedLMHead + SpladePooling; forward keeps only each row's top_k vocabulary weights, so the
    (B, T, V) logits never leave the graph."""

    def __init__(self, encoder: Encoder, head: MaskedLMHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def sparse_embedding(self, input_ids: Tensor, attention_mask: Tensor,
                         token_type_ids: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(dense (B, V) SPLADE vector, last_hidden_state, attentions)."""
        out = self.encoder(input_ids, attention_mask, token_type_ids)
        logits = self.head(out.last_hidden_state)  # (B, T, V)
        config = self.head.config
        return (splade_pool(logits, attention_mask, config.pooling_strategy, config.splade_activation),
                out.last_hidden_state, out.attentions)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                top_k: Tensor | None = None) -> SparseOutput:
        vector, hidden, attentions = self.sparse_embedding(input_ids, attention_mask, token_type_ids)
        vocab = vector.size(1)
        if top_k is None:
            top_k = torch.tensor([vocab], dtype=torch.int64)
        # K = min(top_k, V), kept a tensor so that the traced graph reads it at run time (ONNX TopK's k input).
        k = torch.minimum(top_k.to(torch.int64), torch.tensor([vocab], dtype=torch.int64)).reshape(())
        # torch's stub wants an int k; a 0-d tensor works eagerly and is what keeps k dynamic in the export.
        values, indices = torch.topk(vector, k, dim=1, largest=True, sorted=True)  # type: ignore[arg-type]  # (B, K)
        return SparseOutput(hidden, values, indices, attentions)


TaskModel = SequenceClassifier | SpladeEncoder  # what load_task_checkpoint builds, by task
