"""The CUDA path: fp16 graph on CUDAExecutionProvider, served over HTTP, agreeing with the CPU fp32 graph.

Runs only where onnxruntime has CUDA (onnxruntime-gpu and a visible GPU); skips with the reason elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="onnxruntime here has no CUDAExecutionProvider (CPU build or no GPU)"),
]

SENTENCES = ["GPU inference should agree with the CPU.", "短い文", "a much longer sentence " * 20]


@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_cuda_provider_serves_and_matches_cpu(start_server: Callable, tiny_artifact_dir: Path, variant: str) -> None:
    gpu = start_server(tiny_artifact_dir, EMBED_PROVIDER="cuda", EMBED_REQUIRE_GPU="true",
                       EMBED_GRAPH_VARIANT=variant, EMBED_BATCH_PADDING_SLACK_TOKENS="512")
    cpu = start_server(tiny_artifact_dir, EMBED_PROVIDER="cpu")
    with httpx.Client(base_url=gpu.base_url, timeout=30) as g, httpx.Client(base_url=cpu.base_url, timeout=30) as c:
        assert g.get("/info").json()["provider"] == "CUDAExecutionProvider"
        assert c.get("/info").json()["provider"] == "CPUExecutionProvider"
        got = np.asarray(g.post("/embed", json={"inputs": SENTENCES}).json())
        want = np.asarray(c.post("/embed", json={"inputs": SENTENCES}).json())
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= (0.999 if variant == "fp16" else 0.99999)
