"""bench/compare_report.py judges the performance targets from a report's figures and writes the docs' block;
bench/roofline.py's FLOPs per token weight attention by E[T²]/E[T]. Synthetic reports: no servers run here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import compare_report, roofline


def _scenario(sent_s: float, tok_s: float, p50: float = 10.0) -> dict[str, Any]:
    return {"sentences_per_s": sent_s, "tokens_per_s": tok_s, "p50_ms": p50, "p95_ms": p50, "p99_ms": p50,
            "statuses": {"200": 10}}


def _section(ours_c32: float, ours_wrk_c32: float, limit: float) -> dict[str, Any]:
    ours = {"scenarios": {"c1x1": _scenario(100, 5000, 6.0), "c32x1": _scenario(ours_c32, ours_c32 * 50),
                          "c4x32": _scenario(240, 12000), "burst64": _scenario(240, 12500)},
            "scenarios_wrk": {"c32x1": _scenario(ours_wrk_c32, ours_wrk_c32 * 50)},
            "rss_ready_bytes": 250 * 2**20, "min_cosine_vs_first_system": 1.0,
            "held_out_vs_sentence_transformers": {"mean_cosine": 1.0, "min_cosine": 1.0, "texts": 4}}
    int8 = {**ours, "scenarios": {"c4x32": _scenario(300, 15000)}, "scenarios_wrk": {},
            "held_out_vs_sentence_transformers": {"mean_cosine": 0.995, "min_cosine": 0.98, "texts": 4}}
    infinity = {"scenarios": {"c1x1": _scenario(80, 4000, 12.0), "c32x1": _scenario(80, 4000),
                              "c4x32": _scenario(80, 4000)}, "rss_ready_bytes": 700 * 2**20,
                "min_cosine_vs_first_system": 1.0}
    st = {"single": _scenario(90, 4500, 8.0), "batched": {"sentences_per_s": 100.0, "tokens_per_s": 5100.0,
                                                          "best_batch_size": 16},
          "min_cosine_vs_first_system": 1.0}
    return {"model": "m", "corpus": {"sentences": 8, "seed": 7, "mean_tokens": 51.0, "max_tokens": 256},
            "scenarios": {k: {"label": k} for k in ("c1x1", "c32x1", "c4x32", "burst64")},
            "systems": {"ours-fp32": ours, "ours-int8": int8, "infinity-optimum": infinity,
                        "sentence-transformers": st},
            "roofline": {"limit_tokens_per_s": limit, "flops_per_token": 1.0, "mean_tokens": 51.0,
                         "matmul": {"n": 2048, "flops_per_s": limit}}}


def _by_name(section: dict[str, Any], key: str = "minilm") -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in compare_report.targets(section, key)}


def test_targets_judge_each_client_and_the_int8_quality_floor() -> None:
    t = _by_name(_section(ours_c32=180, ours_wrk_c32=210, limit=20000))
    eff_wrk = t["best served fp32 tokens/s ≥ 75% of the arithmetic limit (C client wrk)"]
    assert eff_wrk["measured"] == pytest.approx(10500 / 20000)
    assert eff_wrk["met"] is False
    eff_py = t["best served fp32 tokens/s ≥ 75% of the arithmetic limit (Python client)"]
    assert eff_py["measured"] == pytest.approx(12500 / 20000)
    assert "burst64" in eff_py["note"]
    assert t["32×1 sentences/s ≥ 2.0× sentence-transformers' best batch (Python client)"]["met"] is False
    assert t["32×1 sentences/s ≥ 2.0× sentence-transformers' best batch (wrk)"]["met"] is True
    assert t["int8: 4×32 sentences/s ≥ 2.0× the fp32 graph's (Python client)"]["measured"] == pytest.approx(1.25)
    assert t["int8: mean cosine vs sentence-transformers on held-out text ≥ 0.998"]["met"] is False
    assert t["1×1 p50 ≤ 0.6× Infinity's best engine (ratio ours / theirs)"]["measured"] == pytest.approx(0.5)
    assert t["RSS at ready ≤ 40% of Infinity's smallest"]["met"] is True


def test_a_model_without_goals_reports_measured_rows_and_peer_ratios() -> None:
    t = _by_name(_section(ours_c32=180, ours_wrk_c32=210, limit=20000), key="mpnet")
    assert t["c32x1: ≥ 2× Infinity's best engine"]["measured"] == pytest.approx(180 / 80)
    assert t["c4x32: ≥ 1.5× sentence-transformers' best batch"]["measured"] == pytest.approx(2.4)
    assert all(row["met"] is None for name, row in t.items() if "share of the arithmetic limit" in name)


def test_judged_targets_take_the_median_of_the_paired_rounds() -> None:
    rounds = [_section(c, c, 20000) for c in (150, 250, 210)]
    section = {**rounds[0], "rounds": [{"systems": r["systems"], "roofline": r["roofline"]} for r in rounds]}
    judged, per_round = compare_report.judged_targets(section, "minilm")
    row = next(j for j in judged if j["target"].startswith("32×1") and "Python" in j["target"])
    assert row["measured"] == pytest.approx(2.1)
    assert row["met"] is True
    assert [pytest.approx(v) for v in per_round[judged.index(row)]] == [1.5, 2.5, 2.1]


def test_write_docs_replaces_only_the_generated_block(tmp_path: Path) -> None:
    report = {"models": {"minilm": _section(180, 210, 20000)}, "command": "python -m bench.compare",
              "machine": {"cpus": 2, "cpu_model": "cpu", "memory_gib": 1.0, "platform": "linux"},
              "versions": {"onnxruntime": "1"}, "git": "abc"}
    docs = tmp_path / "performance.md"
    docs.write_text(f"# Title\nkept above\n\n{compare_report.BEGIN}\nstale figures\n{compare_report.END}\nkept below\n")
    source = tmp_path / "compare-20261204-000000.json"
    source.write_text(json.dumps(report))
    compare_report.write_docs(report, source, docs)
    text = docs.read_text()
    assert "stale figures" not in text
    assert "kept above" in text
    assert text.endswith("kept below\n")
    assert "| all-MiniLM-L6-v2 |" not in text  # the model name comes from the section, not a constant
    assert "| m | 32×1 sentences/s" in text
    assert "compare-20261204-000000.json" in text


def test_newest_picks_the_latest_stamp(tmp_path: Path) -> None:
    for stamp in ("20261203-235959", "20261204-000001", "20261201-120000"):
        (tmp_path / f"compare-{stamp}.json").write_text("{}")
    (tmp_path / "compare-20261205-000000-an-ab-run.json").write_text("{}")  # not named by its stamp: skipped
    assert compare_report.newest(tmp_path, "compare-*.json").name == "compare-20261204-000001.json"


def test_attention_is_weighted_by_the_mean_square_length_over_the_mean() -> None:
    assert roofline.attention_length([10, 10]) == 10
    assert roofline.attention_length([1, 9]) == pytest.approx((1 + 81) / 10)


def test_flops_per_token_match_the_bert_formula_and_count_gqa_gating_and_causality() -> None:
    bert = {"hidden_size": 384, "intermediate_size": 1536, "num_layers": 6, "num_heads": 12}
    tokens = [20, 60, 100]
    got = roofline.model_flops_per_token(bert, tokens)
    expected = roofline.encoder_flops_per_token(hidden_size=384, intermediate_size=1536, num_layers=6,
                                                mean_tokens=roofline.attention_length(tokens))
    assert got["flops_per_token"] == pytest.approx(expected)
    qwen = {"hidden_size": 1024, "intermediate_size": 3072, "num_layers": 28, "num_heads": 16, "num_kv_heads": 8,
            "attention_head_dim": 128, "feed_forward": "swiglu", "causal": True}
    q = roofline.model_flops_per_token(qwen, [100])
    per_layer_matmul = 2 * (2 * 1024 * 2048 + 2 * 1024 * 1024) + 2 * 3 * 1024 * 3072
    assert q["matmul_flops_per_token"] == 28 * per_layer_matmul
    assert q["attention_flops_per_token"] == pytest.approx(28 * 4 * 2048 * (100 + 1) / 2)
    local = roofline.model_flops_per_token({**bert, "local_window": 8, "global_every": 3}, [100])
    assert local["attention_flops_per_token"] == pytest.approx(4 * 384 * (2 * 100 + 4 * 9))
