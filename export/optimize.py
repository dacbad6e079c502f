"""Graph variants made with onnxruntime's own tools: fused fp32 (default), fp16 for CUDA, int8 for CPU.

onnxruntime's transformer optimizer knows BERT-shaped graphs only; for other families (rotary, relative bias,
local windows, GQA) its pattern matching would be a guess, so their "fused" graph is the exported graph as it
is, and onnxruntime still applies its generic fusions when a session loads it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.onnx_model import OnnxModel
from onnxruntime.transformers.optimizer import optimize_model

from export.onnx_export import save_with_external_data
from model import EncoderConfig

log = logging.getLogger(__name__)


def has_external_data(graph: Path) -> bool:
    return (graph.parent / f"{graph.name}.data").is_file()


def copy_graph(source: Path, target: Path) -> None:
    """Copy a graph, giving it its own external data file if it has one."""
    if has_external_data(source):
        save_with_external_data(source, target)
    else:
        shutil.copyfile(source, target)


def fuse(raw: Path, out: Path, config: EncoderConfig, model_type: str | None) -> dict[str, int]:
    """Fuse attention, LayerNorm+residual and bias+GELU with the optimizer; return the fused-op counts.

    opt_level=0 keeps the saved graph portable across providers: onnxruntime applies its own provider-specific
    rewrites at session creation, so baking them in here would tie the file to one provider.
    """
    if model_type is None or has_external_data(raw):
        log.info("%s: no exact transformer-optimizer fusion for this family; fused graph = exported graph", raw.name)
        copy_graph(raw, out)
        return {}
    model = optimize_model(
        str(raw), model_type=model_type, num_heads=config.num_heads, hidden_size=config.hidden_size, opt_level=0
    )
    stats = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    if not stats.get("Attention") and not stats.get("MultiHeadAttention"):
        log.warning("attention was not fused in %s; the graph is still exact but slower", raw.name)
    model.save_model_to_file(str(out))
    return stats


def to_fp16(fused: Path, out: Path) -> None:
    """fp16 weights and compute for CUDA, keeping float32 inputs/outputs so callers need not care."""
    external = has_external_data(fused)
    model = OnnxModel(onnx.load(str(fused), load_external_data=True))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out), use_external_data_format=external,
                             all_tensors_to_one_file=True)


def to_int8(fused: Path, out: Path) -> None:
    """Dynamic int8 with per-channel weight scales, MatMul weights only.

    Measured on MiniLM over 200 hard sentences (bench: tests/export/test_export_real.py): per-tensor scales give
    mean cosine ~0.96; per-channel 0.9895; also quantizing the embedding Gather and fused Attention costs another
    ~0.002 of cosine for ~15% speed, so only MatMul is quantized (mean 0.991; 1.32-1.36x the fp32 graph measured
    side by side, docs/results/int8-study-20261204-024123.json).

    DefaultTensorType tells the quantizer the type of tensors whose type shape inference cannot find in the
    fused graph (the contrib ops); without it quantize_dynamic fails on the optimized graph.
    """
    from onnx import TensorProto

    quantize_dynamic(
        str(fused),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        use_external_data_format=has_external_data(fused),
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
