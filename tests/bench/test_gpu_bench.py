"""bench/gpu.py on the CPU (fp32, CPU provider): every contender of the sweep, IO binding included, the limit,
and the served-vs-bare comparison run end to end on the tiny model, so the GPU script cannot rot unseen on a
machine without a GPU. The CUDA figures themselves are measured on a lent GPU (docs/performance.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu

pytestmark = pytest.mark.timeout(240)


def test_gpu_bench_runs_on_cpu_and_reports_every_contender(tiny_checkpoint_dir: Path, tiny_artifact_dir: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = gpu.main(["--device", "cpu", "--model", str(tiny_checkpoint_dir), "--artifact", str(tiny_artifact_dir),
                     "--batches", "1,3", "--seq-len", "12", "--warmup", "1", "--repeats", "3", "--seconds", "0.5",
                     "--clients", "4", "--per-request", "4", "--served-batch", "8", "--served-seconds", "3",
                     "--corpus", "48", "--out", str(tmp_path)])
    assert code == 0
    (report_file,) = tmp_path.glob("gpu-cpu-*.json")
    report = json.loads(report_file.read_text())
    rows = report["sweep"]["rows"]
    assert [r["batch"] for r in rows] == [1, 3]
    for row in rows:
        assert set(row["tokens_per_s"]) == {"ort-run", "ort-iobinding", "torch-ours", "torch-hf-sdpa"}
        assert all(v > 0 for v in row["tokens_per_s"].values())
    limit = report["limit"]
    assert limit["matmul"]["flops_per_s"] > 1e9
    assert limit["tokens_per_s"] > 0
    served = report["served"]
    assert served["served"]["statuses"] == {"200": served["served"]["requests"]}
    assert served["bare_sentences_per_s"] > 0
    assert served["ratio"] > 0
    table = capsys.readouterr().out
    assert "ort-iobinding tok/s" in table
    assert "served" in table
