"""torch -> ONNX with dynamic batch and sequence axes, via a dummy batch that is unlike any real shape.

The graph's inputs follow the model: input_ids and attention_mask always, token_type_ids only for a model with
several segments, prompt_length only for pooling that leaves the prompt out. RoBERTa position ids and rotary
angles are computed inside the graph, so no model needs a position_ids input.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from model import Encoder
from model.heads import TaskModel

log = logging.getLogger(__name__)

OPSET = 17
# Above this an ONNX protobuf cannot hold the weights (2 GB limit): they go to one external data file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def input_names(encoder: Encoder) -> tuple[str, ...]:
    names = ["input_ids", "attention_mask"]
    if encoder.config.uses_token_types:
        names.append("token_type_ids")
    if not encoder.pooling_config.include_prompt:
        names.append("prompt_length")
    return tuple(names)


class _Graph(nn.Module):
    """Named inputs in, the encoder's outputs out; `with_attentions` also returns every layer's probabilities
    (the exact graph), without them the optimizer can fuse attention (the fast graph)."""

    def __init__(self, encoder: Encoder, names: tuple[str, ...], with_attentions: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.names = names
        self.with_attentions = with_attentions

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        feeds = dict(zip(self.names, inputs, strict=True))
        out = self.encoder(feeds["input_ids"], feeds["attention_mask"], feeds.get("token_type_ids"),
                           feeds.get("prompt_length"))
        if self.with_attentions:
            return out.last_hidden_state, out.sentence_embedding, out.attentions
        return out.last_hidden_state, out.sentence_embedding


def dummy_inputs(encoder: Encoder, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    """Batch 3 x 11 with one padded row: no axis of size 1, so the tracer cannot bake a shape in."""
    vocab_size = encoder.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    values = {
        "input_ids": torch.randint(1000 % vocab_size, vocab_size, (3, 11), generator=generator),
        "attention_mask": torch.ones(3, 11, dtype=torch.int64),
        "token_type_ids": torch.zeros(3, 11, dtype=torch.int64),
        "prompt_length": torch.tensor([2, 0, 3], dtype=torch.int64),
    }
    values["attention_mask"][1, 7:] = 0
    return tuple(values[name] for name in names)


def export_graph(encoder: Encoder, path: Path, *, with_attentions: bool,
                 external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> None:
    """Write one ONNX graph. The TorchScript exporter is used because its output is what onnxruntime's
    transformer optimizer recognises for attention fusion, and it is deterministic byte for byte."""
    names = input_names(encoder)
    module = _Graph(encoder, names, with_attentions)
    outputs = ["last_hidden_state", "sentence_embedding"] + (["attentions"] if with_attentions else [])
    axes: dict[str, dict[int, str]] = {name: {0: "batch_size", 1: "sequence_length"} for name in names}
    if "prompt_length" in axes:
        axes["prompt_length"] = {0: "batch_size"}
    axes["last_hidden_state"] = {0: "batch_size", 1: "sequence_length"}
    axes["sentence_embedding"] = {0: "batch_size"}
    if with_attentions:
        axes["attentions"] = {1: "batch_size", 3: "sequence_length", 4: "sequence_length"}
    _trace(module, dummy_inputs(encoder, names), path, names, outputs, axes, external_data_threshold)
    log.info("exported %s", path.name)


def _trace(module: nn.Module, dummy: tuple[Tensor, ...], path: Path, names: tuple[str, ...], outputs: list[str],
           axes: dict[str, dict[int, str]], external_data_threshold: int) -> None:
    module.eval()
    # The exporter writes one file per tensor beside a graph over 2 GB: let it do so in a directory of its own.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export.") as scratch:
        raw = Path(scratch) / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                dummy,
                str(raw),
                input_names=list(names),
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        split = len(list(Path(scratch).iterdir())) > 1
        if split or raw.stat().st_size > external_data_threshold:
            save_with_external_data(raw, path)
        else:
            shutil.move(raw, path)


def save_with_external_data(source: Path, target: Path) -> None:
    """Save `source` as `target` with its weights in one `<target>.data` file beside it, which onnxruntime
    loads from the same directory (a protobuf cannot exceed 2 GB)."""
    import onnx

    model = onnx.load(str(source), load_external_data=True)
    location = f"{target.name}.data"
    onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    log.info("%s: weights stored as external data in %s", target.name, location)


# ---- task graphs (rerank, classify, sparse) ----------------------------------------------------------------

TASK_OUTPUTS = {"rerank": ("last_hidden_state", "logits"), "classify": ("last_hidden_state", "logits"),
                "sparse": ("last_hidden_state", "sparse_values", "sparse_indices")}


def task_input_names(model: TaskModel, task: str) -> tuple[str, ...]:
    """The encoder's inputs (token_type_ids when the config has segments, so pairs are fed their type ids),
    plus top_k (shape [1]) for sparse models."""
    names = ["input_ids", "attention_mask"]
    if model.encoder.config.uses_token_types:
        names.append("token_type_ids")
    if task == "sparse":
        names.append("top_k")
    return tuple(names)


class _TaskGraph(nn.Module):
    """Named inputs in, the task model's outputs out (attentions only in the exact graph)."""

    def __init__(self, model: TaskModel, names: tuple[str, ...], task: str, with_attentions: bool) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.task = task
        self.with_attentions = with_attentions

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        feeds = dict(zip(self.names, inputs, strict=True))
        args = [feeds["input_ids"], feeds["attention_mask"], feeds.get("token_type_ids")]
        if self.task == "sparse":
            args.append(feeds["top_k"])
        out = self.model(*args)
        picked = tuple(getattr(out, name) for name in TASK_OUTPUTS[self.task])
        return (*picked, out.attentions) if self.with_attentions else picked


def export_task_graph(model: TaskModel, task: str, path: Path, *, with_attentions: bool,
                      external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> None:
    """Write one task graph; the dummy batch is the embedding export's (3 x 11, one padded row) and top_k=7,
    so neither the batch nor K is baked in."""
    names = task_input_names(model, task)
    encoder_names = tuple(n for n in names if n != "top_k")
    dummy = dummy_inputs(model.encoder, encoder_names)
    if task == "sparse":
        dummy = (*dummy, torch.tensor([7], dtype=torch.int64))
    outputs = list(TASK_OUTPUTS[task]) + (["attentions"] if with_attentions else [])
    axes: dict[str, dict[int, str]] = {name: {0: "batch_size", 1: "sequence_length"} for name in encoder_names}
    axes["last_hidden_state"] = {0: "batch_size", 1: "sequence_length"}
    if task == "sparse":
        axes["sparse_values"] = {0: "batch_size", 1: "k"}
        axes["sparse_indices"] = {0: "batch_size", 1: "k"}
    else:
        axes["logits"] = {0: "batch_size"}
    if with_attentions:
        axes["attentions"] = {1: "batch_size", 3: "sequence_length", 4: "sequence_length"}
    _trace(_TaskGraph(model, names, task, with_attentions), dummy, path, names, outputs, axes,
           external_data_threshold)
    log.info("exported %s (%s)", path.name, task)
