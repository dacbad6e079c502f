"""Graph variants made with onnxruntime's own tools: fused fp32 (default), fp16 for CUDA, int8 for CPU."""

from __future__ import annotations

import logging
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model

from model import EncoderConfig

log = logging.getLogger(__name__)


def fuse(raw: Path, out: Path, config: EncoderConfig) -> dict[str, int]:
    """Fuse attention, LayerNorm+residual and bias+GELU with the BERT optimizer; return the fused-op counts.

    opt_level=0 keeps the saved graph portable across providers: onnxruntime applies its own provider-specific
    rewrites at session creation, so baking them in here would tie the file to one provider.
    """
    model = optimize_model(
        str(raw), model_type="bert", num_heads=config.num_heads, hidden_size=config.hidden_size, opt_level=0
    )
    stats = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    if not stats.get("Attention") and not stats.get("MultiHeadAttention"):
        log.warning("attention was not fused in %s; the graph is still exact but slower", raw.name)
    model.save_model_to_file(str(out))
    return stats


def to_fp16(fused: Path, out: Path, config: EncoderConfig) -> None:
    """fp16 weights and compute for CUDA, keeping float32 inputs/outputs so callers need not care."""
    model = optimize_model(
        str(fused), model_type="bert", num_heads=config.num_heads, hidden_size=config.hidden_size, opt_level=0
    )
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out))


def to_int8(fused: Path, out: Path) -> None:
    """Dynamic int8 with per-channel weight scales, MatMul weights only.

    Measured on MiniLM over 200 hard sentences (bench: tests/export/test_export_real.py): per-tensor scales give
    mean cosine ~0.96; per-channel 0.9895; also quantizing the embedding Gather and fused Attention costs another
    ~0.002 of cosine for ~15% speed, so only MatMul is quantized (mean 0.992, ~1.7x fp32 on this CPU).

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
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
