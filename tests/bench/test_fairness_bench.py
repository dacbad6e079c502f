"""bench/fairness.py against real servers on the tiny model: alternating rounds, load counted, memory, JSON written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import fairness

pytestmark = pytest.mark.timeout(120)


def test_fairness_alternates_rounds_counts_the_load_and_writes_its_report(tiny_artifact_dir: Path,
                                                                        tmp_path: Path) -> None:
    models = f"sat={tiny_artifact_dir};max_batch_size=8,probe={tiny_artifact_dir}"
    code = fairness.main(["--models", models, "--saturate", "sat", "--probe", "probe", "--clients", "4",
                          "--rounds", "2", "--probe-requests", "6", "--phase-seconds", "5", "--settle-seconds", "0.3",
                          "--server-env", "EMBED_INTRA_OP_THREADS=1", "--out", str(tmp_path)])
    assert code in (0, 1), "1 only means the ratio target missed on this noisy machine"
    [path] = tmp_path.glob("fairness-sat-sat-probe-probe-*.json")
    report = json.loads(path.read_text())

    assert [(p["round"], p["phase"]) for p in report["phases"]] == [(0, "idle"), (0, "loaded"), (1, "idle"),
                                                                      (1, "loaded")]
    for phase in report["phases"]:
        assert phase["statuses"] == {"200": phase["requests"]}
        assert 0 < phase["requests"] <= 6, "bounded by count"
        assert 0 < phase["p50_ms"] <= phase["p90_ms"] <= phase["max_ms"]
        assert phase["server_inference_ms_p50"] is not None
    for phase in (p for p in report["phases"] if p["phase"] == "loaded"):
        load = phase["load"]
        assert load["clients"] == 4
        assert load["failures"] == {}
        assert not load["stopped_by_deadline"]
        assert load["statuses"].get("200", 0) == load["replies"] > 0
        assert load["refusals"] == 0
        assert load["texts_per_s_in_probe_window"] > 0
        assert load["texts_per_s_whole_phase"] > 0
    summary = report["summary"]
    assert summary["ratio_loaded_over_idle_p50"] == pytest.approx(
        summary["probe_loaded_p50_ms"] / summary["probe_idle_p50_ms"], abs=0.01)
    assert len(summary["ratio_per_round"]) == 2
    assert summary["probe_non_200"] == 0
    assert summary["target_met"] == (code == 0)

    assert report["models"]["sat"]["limits"]["max_batch_size"] == 8, "per-model options reach the server"
    assert all(m["resident_bytes_estimate"] > 0 for m in report["models"].values())
    memory = report["memory"]
    assert memory["all_models"]["rss_ready_bytes"] > 0
    assert memory["all_models"]["vm_hwm_bytes"] > 0
    assert set(memory["alone"]) == {"sat", "probe"}
    assert all(m["rss_ready_bytes"] > 0 for m in memory["alone"].values())
    assert report["server_env"]["EMBED_INTRA_OP_THREADS"] == "1"


@pytest.mark.parametrize("argv", [["--saturate", "nope"], ["--saturate", "mpnet", "--probe", "mpnet"],
                                  ["--models", "artifacts/x"], ["--server-env", "NOEQUALS"]])
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        fairness.parse_args(argv)
    assert exc.value.code != 0
