"""torch -> ONNX with dynamic batch and sequence axes, via a dummy batch that is unlike any real shape."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from model import Encoder

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
DYNAMIC = {"batch_size": 0, "sequence_length": 1}


class _EmbeddingGraph(nn.Module):
    """The fast graph: hidden states and pooled vector only, so the optimizer can fuse attention."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encoder(input_ids, attention_mask, token_type_ids)
        return out.last_hidden_state, out.sentence_embedding


class _AttentionGraph(nn.Module):
    """The exact graph: also the attention probabilities of every layer and head."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        out = self.encoder(input_ids, attention_mask, token_type_ids)
        return out.last_hidden_state, out.sentence_embedding, out.attentions


def dummy_inputs(vocab_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Batch 3 x 11 with one padded row: no axis of size 1, so the tracer cannot bake a shape in."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000 % vocab_size, vocab_size, (3, 11), generator=generator)
    attention_mask = torch.ones(3, 11, dtype=torch.int64)
    attention_mask[1, 7:] = 0
    return input_ids, attention_mask, torch.zeros(3, 11, dtype=torch.int64)


def export_graph(encoder: Encoder, path: Path, *, with_attentions: bool) -> None:
    """Write one ONNX graph. The TorchScript exporter is used because its output is what onnxruntime's
    transformer optimizer recognises for attention fusion, and it is deterministic byte for byte."""
    module = _AttentionGraph(encoder) if with_attentions else _EmbeddingGraph(encoder)
    outputs = ["last_hidden_state", "sentence_embedding"] + (["attentions"] if with_attentions else [])
    axes: dict[str, dict[int, str]] = {name: {0: "batch_size", 1: "sequence_length"} for name in INPUT_NAMES}
    axes["last_hidden_state"] = {0: "batch_size", 1: "sequence_length"}
    axes["sentence_embedding"] = {0: "batch_size"}
    if with_attentions:
        axes["attentions"] = {1: "batch_size", 3: "sequence_length", 4: "sequence_length"}
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            dummy_inputs(encoder.config.vocab_size),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    log.info("exported %s", path.name)
