"""Which int8 graph is worth serving for all-MiniLM-L6-v2? Candidates built side by side, measured side by side.

    .venv/bin/python bench/int8_study.py [--texts 256] [--repeats 9] [--exclude 2,4,6] [--skip-percentile]

The performance issue's bar for int8: >= 2.0x the fp32 graph's batched throughput (4 x 32 texts, padded per
length-sorted batch) with mean cosine >= 0.998 and min >= 0.99 against sentence-transformers on held-out text.

What it does, in one process so every number is comparable:

1. sensitivity: on the export's calibration texts (never the held-out ones), quantizes one MatMul (dynamic,
   per-channel, as export/optimize.py does) or one fused Attention (QAttention) at a time and measures the drop
   in mean cosine against the fused fp32 graph; the ranking picks the nodes that later candidates keep in fp32;
2. builds the candidates into a temp dir: dynamic per-channel (today's export), dynamic with the N most
   sensitive nodes excluded, dynamic with Attention quantized too, static QDQ (MinMax and Percentile
   calibration over the calibration corpus; u8 activations, s8 per-channel weights) with and without the
   exclusions, static QDQ on the unfused graph with the attention score/context MatMuls quantized or not,
   and static QOperator (QLinearMatMul);
3. quality: cosine of each graph's normalised sentence_embedding against `SentenceTransformer.encode
   (normalize_embeddings=True)` on held-out text (bench/parity_corpus.py + bench/corpus.py), cut at 256
   tokens like sentence-transformers' max_seq_length, run in the served shape (length-sorted batches of 32);
4. speed: sessions built with service/runner.py's options; 4 batches of 32 texts per pass, every variant in
   each round (rotating order), medians of the rounds, ratio against fp32 `model.onnx`;
5. writes docs/results/int8-study-<UTC stamp>.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.corpus import sentences  # noqa: E402
from bench.parity_corpus import parity_sentences  # noqa: E402
from export.calibration_corpus import CALIBRATION_SENTENCES  # noqa: E402

ARTIFACT = ROOT / "artifacts" / "all-MiniLM-L6-v2"
RESULTS = ROOT / "docs" / "results"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
BATCH = 32
SPEED_BATCHES = 4
TARGET = {"speedup": 2.0, "mean_cosine": 0.998, "min_cosine": 0.99}
FLOAT = {"DefaultTensorType": TensorProto.FLOAT}

Feeds = dict[str, np.ndarray]


def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(ARTIFACT / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    return tok


def feeds_for(tok: Tokenizer, texts: Sequence[str], width: int | None = None) -> Feeds:
    """One padded batch, as service/runner.py pads it: zeros right of each row, mask 0 there."""
    ids = [e.ids for e in tok.encode_batch(list(texts))]
    width = width or max(len(row) for row in ids)
    input_ids = np.zeros((len(ids), width), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}


def served_batches(tok: Tokenizer, texts: Sequence[str], size: int = BATCH) -> list[tuple[list[int], Feeds]]:
    """Length-sorted batches of `size` (the batcher's shape), each with the original positions of its rows."""
    lengths = [len(e.ids) for e in tok.encode_batch(list(texts))]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    out = []
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        out.append((rows, feeds_for(tok, [texts[i] for i in rows])))
    return out


def session(path: Path) -> ort.InferenceSession:
    """service/runner.py's options with the default settings (threads 0 = onnxruntime's choice, spinning on)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    options.inter_op_num_threads = 0
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def embed(sess: ort.InferenceSession, batches: list[tuple[list[int], Feeds]], n: int) -> np.ndarray:
    """Normalised sentence embeddings (n, D) in the texts' original order."""
    out: np.ndarray | None = None
    for rows, feeds in batches:
        (emb,) = sess.run(["sentence_embedding"], feeds)
        if out is None:
            out = np.zeros((n, emb.shape[1]), dtype=np.float32)
        out[rows] = emb
    if out is None:
        raise ValueError("no batches")
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class Calibration(CalibrationDataReader):
    """The export's calibration texts in length-sorted padded batches of 16 (ranges as served batches see them).

    `fixed_width`: every batch padded to the longest text, because the histogram calibrators (Percentile,
    Entropy) stack each tensor across batches and fail on batches of different sequence lengths."""

    def __init__(self, tok: Tokenizer, texts: Sequence[str], *, fixed_width: bool = False) -> None:
        width = max(len(e.ids) for e in tok.encode_batch(list(texts))) if fixed_width else None
        self._batches: Iterator[Feeds] = iter(
            [feeds_for(tok, [texts[i] for i in rows], width) for rows, _ in served_batches(tok, texts, 16)])

    def get_next(self) -> Feeds | None:
        return next(self._batches, None)


def say(line: str) -> None:
    print(line)  # noqa: T201 - progress and the table are this script's output


def with_shapes(graph: Path, out: Path) -> Path:
    """The graph with symbolic shape inference's value_info: the static quantizer skips (leaves fp32) every
    tensor whose type it cannot infer, which without this is most MatMul inputs of the fused graph (the contrib
    ops Attention/SkipLayerNormalization/BiasGelu are opaque to onnx's own shape inference)."""
    inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(graph)), auto_merge=True)
    onnx.save(inferred, str(out))
    return out


def node_names(graph: Path, op_type: str) -> list[str]:
    model = onnx.load(str(graph), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == op_type]


def dynamic(fused: Path, out: Path, *, ops: Sequence[str] = ("MatMul",), include: Sequence[str] | None = None,
            exclude: Sequence[str] = ()) -> None:
    """export/optimize.py's `to_int8`, plus the node filters this study varies."""
    quantize_dynamic(str(fused), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=list(ops), nodes_to_quantize=list(include or []),
                     nodes_to_exclude=list(exclude), extra_options=FLOAT)


def static(source: Path, out: Path, reader: CalibrationDataReader, *, fmt: QuantFormat,
           method: CalibrationMethod = CalibrationMethod.MinMax, exclude: Sequence[str] = (),
           const_b_only: bool = True) -> None:
    """Static int8: u8 activations, s8 per-channel weights (VNNI's u8s8), ranges from the calibration reader."""
    extra = {**FLOAT, "MatMulConstBOnly": const_b_only}
    if method == CalibrationMethod.Percentile:
        extra["CalibPercentile"] = 99.999
    quantize_static(str(source), str(out), reader, quant_format=fmt, op_types_to_quantize=["MatMul"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method, nodes_to_exclude=list(exclude), extra_options=extra)


def sensitivity(fused: Path, tmp: Path, tok: Tokenizer, texts: Sequence[str]) -> list[dict]:
    """Drop in mean cosine vs the fused fp32 graph when only this one node is quantized, worst first."""
    batches = served_batches(tok, texts)
    ref = embed(session(fused), batches, len(texts))
    rows = []
    for op in ("MatMul", "Attention"):
        for name in node_names(fused, op):
            path = tmp / "one.onnx"
            dynamic(fused, path, ops=[op], include=[name])
            cos = cosines(embed(session(path), batches, len(texts)), ref)
            rows.append({"node": name, "op": op, "mean_drop": float(1 - cos.mean()), "min_cosine": float(cos.min())})
            say(f"  sensitivity {name:55s} drop {rows[-1]['mean_drop']:.5f} min {cos.min():.4f}")
    return sorted(rows, key=lambda r: -r["mean_drop"])


def speed(sessions: dict[str, ort.InferenceSession], feeds: list[Feeds], repeats: int) -> dict[str, float]:
    """Median seconds per pass (all batches) per variant; every round runs every variant, in a rotating order."""
    names = list(sessions)
    for name in names:  # warm-up: first-run allocations out of the timings
        for f in feeds:
            sessions[name].run(["sentence_embedding"], f)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for f in feeds:
                sessions[name].run(["sentence_embedding"], f)
            times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256, help="held-out texts for quality (>= 200)")
    parser.add_argument("--sensitivity-texts", type=int, default=96, help="calibration texts for the ranking")
    parser.add_argument("--calibration-texts", type=int, default=128, help="calibration texts for static ranges")
    parser.add_argument("--exclude", default="2,4,6", help="N values: keep the N most sensitive MatMuls in fp32")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--skip-percentile", action="store_true")
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    from export.models import minilm_dir

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" on every call
    ort.set_default_logger_severity(3)
    t_start = time.perf_counter()
    tok = tokenizer()
    fused, fp32 = ARTIFACT / "model_fused.onnx", ARTIFACT / "model.onnx"
    held_out = parity_sentences(args.texts // 2 + args.texts % 2, seed=4321) + sentences(args.texts // 2, seed=77)
    quality_batches = served_batches(tok, held_out)
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    st.max_seq_length = MAX_TOKENS
    reference = st.encode(held_out, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True)
    speed_texts = sentences(BATCH * SPEED_BATCHES, seed=2024)
    speed_feeds = [f for _, f in served_batches(tok, speed_texts)]
    calib = list(CALIBRATION_SENTENCES)

    with tempfile.TemporaryDirectory(prefix="int8-study-") as tmp_name:
        tmp = Path(tmp_name)
        say("sensitivity (one node quantized at a time, vs fused fp32, calibration texts):")
        ranking = sensitivity(fused, tmp, tok, calib[: args.sensitivity_texts])
        shaped = with_shapes(fused, tmp / "fused_shapes.onnx")
        worst_matmuls = [r["node"] for r in ranking if r["op"] == "MatMul"]

        builders: dict[str, Callable[[Path], None]] = {
            "dynamic-per-channel (export today)": lambda p: dynamic(fused, p),
            "dynamic +Attention (QAttention)": lambda p: dynamic(fused, p, ops=["MatMul", "Attention"]),
        }
        for n in (int(x) for x in args.exclude.split(",") if x):
            keep = worst_matmuls[:n]
            builders[f"dynamic excl top{n}"] = lambda p, keep=keep: dynamic(fused, p, exclude=keep)
            builders[f"dynamic +Attention excl top{n}"] = lambda p, keep=keep: dynamic(
                fused, p, ops=["MatMul", "Attention"], exclude=keep)
            builders[f"static QDQ minmax excl top{n}"] = lambda p, keep=keep: static(
                shaped, p, Calibration(tok, calib[: args.calibration_texts]), fmt=QuantFormat.QDQ, exclude=keep)
        builders["static QDQ minmax"] = lambda p: static(
            shaped, p, Calibration(tok, calib[: args.calibration_texts]), fmt=QuantFormat.QDQ)
        if not args.skip_percentile:
            builders["static QDQ percentile99.999"] = lambda p: static(
                shaped, p, Calibration(tok, calib[: args.calibration_texts], fixed_width=True), fmt=QuantFormat.QDQ,
                method=CalibrationMethod.Percentile)
        builders["static QOperator minmax"] = lambda p: static(
            shaped, p, Calibration(tok, calib[: args.calibration_texts]), fmt=QuantFormat.QOperator)
        builders["static QDQ minmax unfused, const-B only"] = lambda p: static(
            fp32, p, Calibration(tok, calib[: args.calibration_texts]), fmt=QuantFormat.QDQ)
        builders["static QDQ minmax unfused, +QK/PV MatMuls"] = lambda p: static(
            fp32, p, Calibration(tok, calib[: args.calibration_texts]), fmt=QuantFormat.QDQ, const_b_only=False)

        graphs: dict[str, Path] = {"fp32 model.onnx": fp32, "fp32 fused": fused,
                                   "served model_int8.onnx": ARTIFACT / "model_int8.onnx"}
        errors: dict[str, str] = {}
        for i, (name, build) in enumerate(builders.items()):
            path = tmp / f"v{i}.onnx"
            t0 = time.perf_counter()
            try:
                build(path)
            except Exception as exc:  # a quantizer failure is a result of the study, not the end of it
                errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                say(f"  build {name}: FAILED {errors[name]}")
                continue
            graphs[name] = path
            say(f"  built {name} in {time.perf_counter() - t0:.1f}s")

        sessions, rows = {}, {}
        for name, path in graphs.items():
            try:
                sessions[name] = session(path)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                errors[name] = f"session: {type(exc).__name__}: {exc}"[:300]
                continue
            cos = cosines(embed(sessions[name], quality_batches, len(held_out)), reference)
            model = onnx.load(str(path), load_external_data=False)
            ops = sorted({n.op_type for n in model.graph.node} & {
                "MatMulInteger", "QLinearMatMul", "QAttention", "DynamicQuantizeLinear", "QuantizeLinear",
                "DequantizeLinear", "MatMul", "Attention"})
            rows[name] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                          "size_mb": round(path.stat().st_size / 1e6, 1), "ops": ops}
            say(f"  quality {name:45s} mean {cos.mean():.5f} min {cos.min():.5f}")

        medians = speed(sessions, speed_feeds, args.repeats)
    base = medians["fp32 model.onnx"]
    for name, row in rows.items():
        row["median_s_per_4x32"] = round(medians[name], 4)
        row["speedup_vs_fp32"] = round(base / medians[name], 3)
        row["meets_target"] = (row["speedup_vs_fp32"] >= TARGET["speedup"]
                               and row["mean_cosine"] >= TARGET["mean_cosine"]
                               and row["min_cosine"] >= TARGET["min_cosine"])

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report = {
        "model": "all-MiniLM-L6-v2", "target": TARGET, "created_utc": stamp,
        "setup": {"held_out_texts": len(held_out), "held_out_source": "parity_sentences(seed=4321) + "
                  "corpus.sentences(seed=77, mixed)", "max_tokens": MAX_TOKENS,
                  "speed": f"{SPEED_BATCHES} x {BATCH} corpus.sentences(seed=2024), length-sorted, padded",
                  "repeats": args.repeats, "calibration_texts": args.calibration_texts,
                  "sensitivity_texts": args.sensitivity_texts, "onnxruntime": ort.__version__,
                  "runtime_s": round(time.perf_counter() - t_start)},
        "variants": rows, "errors": errors, "sensitivity": ranking,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"int8-study-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"\n{'variant':48s} {'mean cos':>9s} {'min cos':>9s} {'speedup':>8s}  target")
    for name, row in rows.items():
        say(f"{name:48s} {row['mean_cosine']:9.5f} {row['min_cosine']:9.5f} {row['speedup_vs_fp32']:7.2f}x  "
              f"{'MEETS' if row['meets_target'] else '-'}")
    for name, err in errors.items():
        say(f"{name}: {err}")
    say(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
