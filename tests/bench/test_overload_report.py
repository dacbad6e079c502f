"""bench/overload_report.py renders result files as they are: the row says what the file says."""

from __future__ import annotations

import json
from pathlib import Path

from bench.overload_report import BEGIN, END, rewrite_doc, row, table


def _report(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "config": {"case": "burst16", "intra_op_threads": None},
        "server_env": {"EMBED_ARTIFACT_DIR": "x", "EMBED_QUEUE_TIMEOUT_S": "10.0"},
        "statuses": {"200": 57, "429": 3827, "503": 2},
        "error_codes": {"429:queue_full": 3827, "503:queue_timeout": 2},
        "admitted_finished_share": 0.9661,
        "goodput_sentences_per_s": 66.1, "goodput_vs_calm": 0.769,
        "calm": {"sentences_per_s": 85.9, "small_request_ms_p50": 8.0},
        "one_batch_ms": 502.5,
        "probes": {"/health": {"p99_ms": 37.1}, "/ready": {"p99_ms": 41.0}},
        "event_loop_lag": {"p99_under_s": 0.05},
        "small_requests": {"sent": 46, "ok": 46, "p50_ms": 175.2},
        "reject_latency_ms": {"p99": 227.3},
        "recovered_after_s": 0.02,
        "checks": {"admitted_finished": True, "goodput_held": False},
    }
    base.update(over)
    return base


def test_a_row_carries_the_files_figures_and_its_failed_checks() -> None:
    line = row(Path("overload-burst16-1.json"), _report())
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "`overload-burst16-1.json`"
    assert cells[2] == "defaults"
    assert cells[3] == "57 × 200, 3,827 × 429, 2 × 503"
    assert cells[4] == "2"
    assert cells[5] == "0.9661"
    assert cells[6] == "66.1 / 85.9 = 0.769"
    assert cells[7] == "41.0"  # the worst probe
    assert cells[9].startswith("175.2 / 518 ")  # 2 x 8.0 + 502.5, rounded
    assert cells[-1] == "goodput_held"


def test_settings_name_what_differs_from_the_defaults(tmp_path: Path) -> None:
    report = _report(server_env={"EMBED_ARTIFACT_DIR": "x", "EMBED_ADMISSION_DEADLINE_SHARE": "0"},
                     config={"case": "burst1", "intra_op_threads": 1})
    (tmp_path / "overload-burst1-2.json").write_text(json.dumps(report))
    text = table(tmp_path)
    assert "`ADMISSION_DEADLINE_SHARE=0`, `INTRA_OP_THREADS=1`" in text
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{BEGIN}\nold\n{END}\nafter\n")
    rewrite_doc(doc, text)
    content = doc.read_text()
    assert "old" not in content
    assert content.startswith("before\n")
    assert content.endswith("after\n")
    assert "overload-burst1-2.json" in content
