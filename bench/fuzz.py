"""Schemathesis against the served /openapi.json: positive and negative cases on every route (RELIABILITY #44).

    .venv/bin/python -m bench.fuzz --max-examples 300          # the recorded run (several thousand cases)
    .venv/bin/python -m bench.fuzz --max-examples 15           # what tests/e2e/test_fuzz.py runs in CI
    .venv/bin/python -m bench.fuzz --tei-only --max-examples 300   # text-embeddings-inference's routes only

Needs schemathesis (`.venv/bin/pip install schemathesis==4.32.5`). Runs its CLI (`st run`) with the four checks
the service promises: not_a_server_error, negative_data_rejection, response_schema_conformance and
content_type_conformance, in `--mode all` (schema-valid and schema-violating data), over the examples, coverage
and fuzzing phases, against a real server process (tiny model by default: the checks are about the HTTP
contract, and a small model lets far more cases run per minute). Prints and records the case count and result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.fuzz")
REPO = Path(__file__).resolve().parent.parent
CHECKS = "not_a_server_error,negative_data_rejection,response_schema_conformance,content_type_conformance"
# Statuses that count as "rejected" for negative (schema-violating) data: every 4xx the API documents for a bad
# request. 413 (too many inputs) and 415 (content type) are rejections too, just more specific ones.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "408", "413", "415", "422"]
"""


def schemathesis_cli() -> str:
    beside = Path(sys.executable).parent / "st"
    if not beside.is_file():
        raise SystemExit("schemathesis is not installed: .venv/bin/pip install schemathesis==4.32.5")
    return str(beside)


# text-embeddings-inference's routes (their errors are in TEI's shape; service/api/errors.TEI_PATHS)
TEI_PATH_REGEX = "^/(invocations|embed|embed_all|tokenize|decode|similarity)?$"


def run_schemathesis(base_url: str, *, max_examples: int, seed: int, workers: int, timeout_s: float,
                     post_only: bool = False, path_regex: str | None = None) -> dict[str, Any]:
    """`st run` against base_url; returns {"returncode", "generated", "passed", "failed", "summary"}."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "schemathesis.toml"
        config.write_text(CONFIG)
        argv = [
            schemathesis_cli(), "--config-file", str(config), "run", f"{base_url}/openapi.json",
            "--checks", CHECKS, "--mode", "all", "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(max_examples), "--seed", str(seed), "--workers", str(workers),
            "--request-timeout", "30", "--no-color",
        ]
        if post_only:
            argv += ["--include-method", "POST"]
        if path_regex:
            argv += ["--include-path-regex", path_regex]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False,
                              env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    out = proc.stdout + proc.stderr
    counts = re.search(r"(\d+) generated(?:, (\d+) found (\d+) unique failures)?(?:, (\d+) passed)?", out)
    generated = int(counts.group(1)) if counts else 0
    return {
        "returncode": proc.returncode,
        "generated": generated,
        "failures": int(counts.group(3)) if counts and counts.group(3) else 0,
        "summary": out[-6000:],
    }


def main() -> int:
    from bench.server_process import running_server

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact-dir", required=True, help="a model artifact (e.g. the tiny test model)")
    p.add_argument("--max-examples", type=int, default=300)
    p.add_argument("--seed", type=int, default=20261125)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--post-only", action="store_true", help="only the POST (inference) routes")
    p.add_argument("--tei-only", action="store_true", help="only text-embeddings-inference's routes")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    env = {"EMBED_ARTIFACT_DIR": args.artifact_dir, "EMBED_MAX_INPUTS_PER_REQUEST": "64",
           "EMBED_MAX_CHARS_PER_INPUT": "5000", "EMBED_ATTENTION_BUDGET": "100000", "EMBED_INTRA_OP_THREADS": "1"}
    t0 = time.monotonic()
    with running_server(env) as (url, _pid):
        result = run_schemathesis(url, max_examples=args.max_examples, seed=args.seed, workers=args.workers,
                                  timeout_s=args.timeout_s, post_only=args.post_only,
                                  path_regex=TEI_PATH_REGEX if args.tei_only else None)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["config"] = {k: v for k, v in vars(args).items() if k != "out"}
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "note": "shared 2-core box"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scope = "tei" if args.tei_only else "post" if args.post_only else "all"
    path = out / f"fuzz-{scope}-{args.max_examples}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    log.info("%s\n%d cases generated, return code %d, %.0f s; written to %s", result["summary"][-2500:],
             result["generated"], result["returncode"], result["seconds"], path)
    return result["returncode"]


if __name__ == "__main__":
    raise SystemExit(main())
