"""Infinity (`infinity-emb`) as the peer: its own throwaway venv, an offline ONNX export, and its server process.

Infinity's dependencies (numpy<2, transformers 4.x, sentence-transformers 3.x, optimum) clash with ours, so it
lives in `bench/.venv-infinity` (gitignored), built on first use. torch is installed FIRST from the pinned CPU
wheel and a constraints file keeps it there: a looser spec lets pip pull a CUDA build of several GB.

Infinity's optimum engine cannot serve the embedded model directory as it is, offline: it needs an `*.onnx` file
inside the model directory (there is none: "No onnx files found for <dir>") and the hub that would supply one is
out of reach. pip resolves infinity-emb 0.0.78's `optimum[onnxruntime]>=1.24` to optimum 2.x + optimum-onnx (the
last optimum 1.x, 1.27.0, cannot even be imported next to torch 2.13: "cannot import name '_attention_scale'
from 'torch.onnx.symbolic_opset14'"), and 0.0.78 drives optimum 2 badly in three ways, each worked around here:

1. the ONNX file: made with optimum's own exporter, offline, from the same local weights
   (`optimum-cli export onnx --library-name transformers --task feature-extraction`, so the graph outputs
   `last_hidden_state` as Infinity reads it; the default sentence-transformers-style export does not, and
   Infinity's warm-up fails with KeyError 'last_hidden_state');
2. Infinity passes an absolute `file_name` that optimum 2 rejects ("Could not find any ONNX files with target file
   name /abs/model.onnx, only found: [PosixPath('model.onnx')]"): the server runs inside the ONNX directory with
   `--model-id .`;
3. Infinity's own optimize step calls `OptimizationConfig(optimize_with_onnxruntime_only=...)`, a keyword optimum 2
   removed; it logs the failure and serves the unoptimized graph. Infinity first looks for a `*_optimized.onnx` in
   its cache folder, so the harness writes one there with optimum's ORTOptimizer at Infinity's own settings
   (optimization_level 99, CPU, no fp16): Infinity's intended CPU path, not a graph of ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.server_process import REPO, free_port, running_command

log = logging.getLogger("bench.infinity")

VENV = REPO / "bench" / ".venv-infinity"
INFINITY_SPEC = "infinity-emb[server,torch,optimum,logging]==0.0.78"
TORCH_SPEC = "torch==2.13.0"  # the CPU wheel on local disk; see the module docstring
ONNX_ROOT = VENV / "onnx-models"  # one optimum export per served model, named after it
HF_ROOT = VENV / "hf-home"  # Infinity caches its optimized ONNX graph under here, never in the user's cache
ENGINES = ("torch", "optimum")

_OPTIMIZE = """
import sys
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer
from optimum.onnxruntime.configuration import OptimizationConfig
model = ORTModelForFeatureExtraction.from_pretrained(".", file_name="model.onnx")
config = OptimizationConfig(optimization_level=99, optimize_for_gpu=False, fp16=False)
ORTOptimizer.from_pretrained(model).optimize(optimization_config=config, save_dir=sys.argv[1], one_external_file=True)
"""


def _bin(name: str) -> Path:
    return VENV / "bin" / name


def hf_home(model_name: str) -> Path:
    """A hub cache per served model: Infinity keys its optimized graph by model id, and the optimum engine's id is
    always "." (workaround 2), so one shared cache would hand one model's graph to another."""
    return HF_ROOT / model_name


def offline_env(model_name: str) -> dict[str, str]:
    """Environment for every Infinity-side process: no hub, no telemetry, caches inside the throwaway venv."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(hf_home(model_name)),
            "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


def ensure_venv() -> None:
    """Create the venv and install torch then infinity-emb, unless a previous run already did with this spec."""
    marker = VENV / "installed.txt"
    wanted = f"{TORCH_SPEC}\n{INFINITY_SPEC}\n"
    if marker.exists() and marker.read_text() == wanted and _bin("infinity_emb").exists():
        return
    log.info("building %s (torch first, then %s); a few minutes", VENV, INFINITY_SPEC)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(_bin("python")), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH_SPEC], check=True)
    constraints = VENV / "constraints.txt"
    constraints.write_text(f"{TORCH_SPEC}\n")
    subprocess.run([*pip, "-c", str(constraints), INFINITY_SPEC], check=True)
    marker.write_text(wanted)


def _optimized_folder(model_name: str) -> Path:
    """Where Infinity looks for `*_optimized.onnx`: hub cache / infinity_onnx / provider / model id (".")."""
    return hf_home(model_name) / "hub" / "infinity_onnx" / "CPUExecutionProvider" / "."


def ensure_onnx_export(model_dir: Path, model_name: str) -> Path:
    """optimum's ONNX export of `model_dir` and Infinity's optimized copy of it, offline, made once (docstring)."""
    onnx_dir = ONNX_ROOT / model_name
    if (onnx_dir / "model.onnx").exists() and list(_optimized_folder(model_name).glob("*_optimized.onnx")):
        return onnx_dir
    log.info("exporting %s to ONNX with optimum-cli for Infinity's optimum engine", model_dir)
    work = onnx_dir.with_name(onnx_dir.name + ".tmp")
    for stale in (work, onnx_dir, _optimized_folder(model_name)):
        shutil.rmtree(stale, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(_bin("optimum-cli")), "export", "onnx", "--model", str(model_dir), "--library-name",
                    "transformers", "--task", "feature-extraction", str(work)], check=True,
                   env=offline_env(model_name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work.rename(onnx_dir)
    subprocess.run([str(_bin("python")), "-c", _OPTIMIZE, str(_optimized_folder(model_name))], check=True,
                   cwd=onnx_dir, env=offline_env(model_name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return onnx_dir


def versions() -> dict[str, str]:
    """Versions of the packages that matter in the Infinity venv (pip's view)."""
    out = subprocess.run([str(_bin("python")), "-m", "pip", "freeze"], check=True, capture_output=True, text=True)
    keep = {"infinity-emb", "torch", "onnxruntime", "optimum", "optimum-onnx", "transformers",
            "sentence-transformers", "numpy", "tokenizers", "uvicorn", "fastapi"}
    pairs = (line.split("==", 1) for line in out.stdout.splitlines() if "==" in line)
    return {name: version for name, version in pairs if name.lower().replace("_", "-") in keep}


# "Tuned" as Infinity's author runs it on CPU (the start script of the michaelfeil/infinity Hugging Face space:
# `--batch-size 8 --engine optimum`): smaller batches than the default 32 keep a CPU's latency down; and its
# request lengths taken from len(input) rather than by tokenizing every input a second time.
TUNED_ARGS = ("--batch-size", "8", "--no-lengths-via-tokenize")


@contextlib.contextmanager
def running_infinity(engine: str, model_dir: Path, served_model_name: str,
                     extra_args: tuple[str, ...] = ()) -> Iterator[tuple[str, int]]:
    """`infinity_emb v2` on 127.0.0.1 with `--url-prefix /v1`, so its route is POST /v1/embeddings like ours.

    Pooling is given explicitly (`mean`, the checkpoint's): the optimum engine's `auto` falls back to CLS.
    `extra_args` go last (e.g. TUNED_ARGS).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown Infinity engine {engine!r}; choose one of {ENGINES}")
    port = free_port()
    # The optimum engine runs inside its ONNX directory with a relative model id (workaround 2 above).
    cwd, model_id = (model_dir, ".") if engine == "optimum" else (REPO, str(model_dir))
    argv = [str(_bin("infinity_emb")), "v2", "--model-id", model_id, "--engine", engine, "--device", "cpu",
            "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1", "--served-model-name",
            served_model_name, "--pooling-method", "mean", "--log-level", "warning", *extra_args]
    with running_command(argv, offline_env(served_model_name), port=port, ready_path="/health",
                         ready_timeout_s=300.0, cwd=cwd) as served:
        yield served
