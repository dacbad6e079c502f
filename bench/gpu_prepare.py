"""Prepare, on this (CPU) machine, what a lent GPU machine needs to run bench/gpu.py, in the git-ignored `.gpu/`.

    .venv/bin/python -m bench.gpu_prepare                 # checkpoint + service wheels (~55 MB, one carry)
    .venv/bin/python -m bench.gpu_prepare --ort-gpu       # also onnxruntime-gpu, split into carry-sized parts

The GPU machine has torch, transformers, onnx and a CPU onnxruntime, but not the model package, our serving
dependencies (fastapi, pydantic-settings, uvicorn, orjson, ...) or, perhaps, onnxruntime-gpu; it cannot download.
One call carries at most 64 MiB, so:
- `.gpu/minilm-fp16/`: all-MiniLM-L6-v2 with fp16 weights (45 MB instead of 87 MB); bench/gpu.py exports it
  there (`python -m export`) and PyTorch loads it. Rounding the weights to fp16 changes the model slightly;
  every timed contender runs these same weights, so the comparison is unaffected.
- `.gpu/wheels/`: the serving dependencies' closure for CPython 3.12 manylinux (what the device runs), at the
  versions pinned here, without numpy/tokenizers/onnxruntime, which the device has.
- `.gpu/ort/part-NN`: with --ort-gpu, the onnxruntime-gpu wheel (~255 MB) cut into parts that each fit one call;
  bench/gpu_device.sh joins them. Each part travels in its own call while the machine stays warm.
Prints the `run` calls to make (docs/performance.md §GPU has the same sequence).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

log = logging.getLogger("bench.gpu_prepare")

REPO = Path(__file__).resolve().parent.parent
GPU_DIR = REPO / ".gpu"
PART_BYTES = 56 * 2**20  # one part + the ~1 MB working tree stays under the 64 MiB a call carries
ON_DEVICE = {"numpy", "tokenizers", "onnxruntime", "onnxruntime-gpu"}  # large, and present in the device image
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def serving_closure() -> dict[str, str]:
    """name -> version of requirements/serve.txt and everything it needs (no extras but uvicorn's 'standard',
    as pinned), evaluated for CPython 3.12 on Linux, at the versions installed in this venv."""
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
           "sys_platform": "linux", "platform_system": "Linux", "extra": ""}
    todo = []
    for line in (REPO / "requirements" / "serve.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            todo.append(Requirement(line))
    seen: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = _name(req.name)
        if name in seen or name in ON_DEVICE:
            continue
        seen[name] = metadata.version(name)
        for dep in metadata.requires(name) or []:
            dep_req = Requirement(dep)
            extras = req.extras or {""}
            if dep_req.marker is None or any(dep_req.marker.evaluate({**env, "extra": e}) for e in extras):
                todo.append(dep_req)
    return dict(sorted(seen.items()))


def pip_download(spec: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "-d", str(dest), spec]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd, check=True)


def fp16_checkpoint(source: Path, dest: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    for rel in CHECKPOINT_FILES:
        if (source / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, dest / rel)
    weights = load_file(str(source / "model.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    save_file({k: v.contiguous() for k, v in half.items()}, str(dest / "model.safetensors"))
    if any(t.dtype == torch.float32 for t in half.values()):
        raise RuntimeError(f"{dest / 'model.safetensors'}: float32 tensors left after .half()")


def split(wheel: Path, parts_dir: Path) -> list[Path]:
    parts_dir.mkdir(parents=True, exist_ok=True)
    (parts_dir / "WHEEL_NAME").write_text(wheel.name)
    parts = []
    with wheel.open("rb") as f:
        while chunk := f.read(PART_BYTES):
            part = parts_dir / f"part-{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append(part)
    wheel.unlink()
    return parts


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort-gpu", action="store_true", help="also fetch onnxruntime-gpu and split it")
    parser.add_argument("--ort-gpu-version", default="1.31.1")
    args = parser.parse_args(argv)

    from export.models import minilm_dir

    shutil.rmtree(GPU_DIR, ignore_errors=True)
    fp16_checkpoint(minilm_dir(), GPU_DIR / "minilm-fp16")
    closure = serving_closure()
    wheels = GPU_DIR / "wheels"
    for name, version in closure.items():
        pip_download(f"{name}=={version}", wheels)
    (wheels / "closure.json").write_text(json.dumps(closure, indent=2))
    log.info("wheels: %s", ", ".join(f"{k}=={v}" for k, v in closure.items()))
    calls = ['1. carry [".gpu/minilm-fp16", ".gpu/wheels"]: bash bench/gpu_device.sh check']
    if args.ort_gpu:
        download = GPU_DIR / "download"
        pip_download(f"onnxruntime-gpu=={args.ort_gpu_version}", download)
        (wheel,) = download.glob("*.whl")
        parts = split(wheel, GPU_DIR / "ort")
        shutil.rmtree(download)
        for i, part in enumerate(parts):
            rel = part.relative_to(REPO)
            names = f'"{rel}"' + (', ".gpu/ort/WHEEL_NAME"' if i == 0 else "")
            calls.append(f"{len(calls) + 1}. carry [{names}]: true   (the part stays there while the machine is warm)")
    calls.append(f"{len(calls) + 1}. no carry: bash bench/gpu_device.sh bench   (joins any parts, installs, runs)")
    size = sum(p.stat().st_size for p in GPU_DIR.rglob("*") if p.is_file()) / 2**20
    log.info("wrote %s (%.0f MB); run on the device, back to back so it stays warm:\n%s", GPU_DIR, size,
             "\n".join(calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
