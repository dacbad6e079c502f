"""Turn a bench/compare.py report into markdown tables, target verdicts and a PNG (matplotlib, Agg).

Kept apart from the measuring so a saved JSON can be re-rendered: `python -m bench.compare_report FILE.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PEERS = ("infinity-torch", "infinity-optimum", "sentence-transformers")
OURS = ("ours-fp32", "ours-fp32-fused", "ours-int8")
MB = 2**20


def row_for(report: dict[str, Any], system: str, scenario: str) -> dict[str, Any] | None:
    """One system's figures for one scenario; sentence-transformers maps 1×1 to its single-sentence loop and every
    batched scenario to its best batch size (it has no clients, so that is its best case)."""
    entry = report["systems"].get(system)
    if not entry or "error" in entry:
        return None
    if system == "sentence-transformers":
        return entry["single"] if scenario == "c1x1" else entry["batched"]
    return entry["scenarios"].get(scenario)


def best_infinity(report: dict[str, Any], scenario: str, key: str = "sentences_per_s") -> tuple[str, float] | None:
    found = [(s, r[key]) for s in ("infinity-torch", "infinity-optimum") if (r := row_for(report, s, scenario))]
    return max(found, key=lambda x: x[1]) if found else None


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "—" if value is None or value != value else format(value, fmt)  # NaN != NaN


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged on ours-fp32 (the default graph) against measured peers; None = not measurable."""
    ours = "ours-fp32"
    out: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, goal: float, fmt: str, higher_is_better: bool = True) -> None:
        met = None if measured is None else (measured >= goal if higher_is_better else measured <= goal)
        out.append({"target": name, "measured": measured, "goal": goal, "format": fmt, "met": met,
                    "higher_is_better": higher_is_better})

    def ratio(scenario: str, peer: tuple[str, float] | None) -> float | None:
        mine = row_for(report, ours, scenario)
        return mine["sentences_per_s"] / peer[1] if mine and peer and peer[1] else None

    add("32×1 sentences/s ≥ 2× Infinity's best engine", ratio("c32x1", best_infinity(report, "c32x1")), 2.0, ".2f")
    add("4×32 sentences/s ≥ 1.5× Infinity's best engine", ratio("c4x32", best_infinity(report, "c4x32")), 1.5, ".2f")
    st = row_for(report, "sentence-transformers", "c4x32")
    add("4×32 sentences/s ≥ 2× sentence-transformers (best batch)",
        ratio("c4x32", ("st", st["sentences_per_s"]) if st else None), 2.0, ".2f")
    mine = row_for(report, ours, "c1x1")
    inf_p50 = [r["p50_ms"] for s in ("infinity-torch", "infinity-optimum") if (r := row_for(report, s, "c1x1"))]
    add("1×1 p50 ≤ Infinity's (ratio ours / Infinity's best p50)",
        mine["p50_ms"] / min(inf_p50) if mine and inf_p50 else None, 1.0, ".2f", higher_is_better=False)
    limit = report.get("roofline", {}).get("limit_tokens_per_s")
    ours_best = max((r["tokens_per_s"] for sc in ("c32x1", "c4x32", "burst64") if (r := row_for(report, ours, sc))),
                    default=None)
    add("best batched tokens/s ≥ 60% of the arithmetic limit",
        ours_best / limit if ours_best is not None and limit else None, 0.60, ".1%")
    for when in ("rss_ready_bytes", "rss_idle_after_load_bytes"):
        mine_rss = report["systems"].get(ours, {}).get(when)
        inf = [report["systems"][s][when] for s in ("infinity-torch", "infinity-optimum")
               if when in report["systems"].get(s, {})]
        add(f"RSS ({when.removeprefix('rss_').removesuffix('_bytes')}) ≤ 50% of Infinity's smallest",
            mine_rss / min(inf) if mine_rss and inf else None, 0.50, ".1%", higher_is_better=False)
    return out


def markdown(report: dict[str, Any]) -> str:
    systems = list(report["systems"])
    lines = [f"Corpus: {report['corpus']['sentences']} sentences (seed {report['corpus']['seed']}, mixed), "
             f"mean {report['corpus']['mean_tokens']:.1f} tokens, max {report['corpus']['max_tokens']}.", "",
             "| scenario | system | sentences/s | tokens/s | p50 ms | p95 ms | p99 ms | non-200 | "
             "× inf-torch | × inf-optimum | × ST |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario, meta in report["scenarios"].items():
        for system in systems:
            row = row_for(report, system, scenario)
            if row is None:
                err = report["systems"][system].get("error", "not run")
                lines.append(f"| {meta['label']} | {system} | failed: {err.splitlines()[-1][:80]} |||||||||")
                continue
            bad = sum(n for code, n in row.get("statuses", {}).items() if str(code) != "200")
            name = system
            if system == "sentence-transformers" and scenario != "c1x1":
                name += f" (in-process, best batch {row['best_batch_size']})"
            ratios = []
            for peer in PEERS:
                other = row_for(report, peer, scenario)
                ratios.append(f"{row['sentences_per_s'] / other['sentences_per_s']:.2f}×" if other else "—")
            lines.append(f"| {meta['label']} | {name} | {row['sentences_per_s']:.1f} | {row['tokens_per_s']:.0f} | "
                         f"{_f(row.get('p50_ms'))} | {_f(row.get('p95_ms'))} | {_f(row.get('p99_ms'))} | {bad} | "
                         + " | ".join(ratios) + " |")
    lines += ["", "| system | start s | RSS ready MB | RSS idle after load MB | min cosine vs ours-fp32 | "
              "load avg before → after |", "|---|---:|---:|---:|---:|---|"]
    for system, entry in report["systems"].items():
        if "error" in entry:
            continue
        lines.append(f"| {system} | {_f(entry.get('start_seconds'))} | "
                     f"{_f(entry.get('rss_ready_bytes', float('nan')) / MB, '.0f')} | "
                     f"{_f(entry.get('rss_idle_after_load_bytes', float('nan')) / MB, '.0f')} | "
                     f"{entry['min_cosine_vs_first_system']:.6f} | "
                     f"{_f(entry.get('loadavg_1min_before'), '.2f')} → {_f(entry.get('loadavg_1min_after'), '.2f')} |")
    roof = report.get("roofline")
    if roof:
        by_library = roof["matmul"].get("by_library", {})
        rates = ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in by_library.items())
        lines += ["", f"Arithmetic limit: {roof['flops_per_token'] / 1e6:.2f} MFLOP/token at the mean length; "
                  f"fp32 {roof['matmul']['n']}² matmul {roof['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s "
                  f"({roof['matmul'].get('library', 'numpy')}, the fastest of: {rates or 'numpy'} GFLOP/s) → "
                  f"{roof['limit_tokens_per_s']:.0f} tokens/s."]
        for system in systems:
            best = max((r["tokens_per_s"] for sc in report["scenarios"] if sc != "c1x1"
                        and (r := row_for(report, system, sc))), default=None)
            if best is not None:
                lines.append(f"- {system}: best batched {best:.0f} tokens/s = "
                             f"{best / roof['limit_tokens_per_s']:.1%} of the limit")
    profile = [(sc, r["server_stages"]) for sc in report["scenarios"]
               if (r := row_for(report, "ours-fp32", sc)) and "server_stages" in r]
    if profile:
        lines += ["", "ours-fp32 server stages (means of the timing headers, ms) vs client p50:", "",
                  "| scenario | tokenize | queue | inference | server total | client p50 |",
                  "|---|---:|---:|---:|---:|---:|"]
        for sc, st in profile:
            lines.append(f"| {sc} | " + " | ".join(_f(st.get(k, {}).get("mean"), ".2f") for k in
                         ("tokenize_ms", "queue_ms", "inference_ms", "server_total_ms"))
                         + f" | {row_for(report, 'ours-fp32', sc)['p50_ms']:.2f} |")
    judged, per_round = judged_targets(report)
    lines += ["", f"Targets judged on the median of {max(1, len(report.get('rounds', [])))} paired per-round "
              "values (each round: every system side by side, then the matmul):", "",
              "| target (ours-fp32) | measured (median) | per round | goal | verdict |", "|---|---:|---|---:|---|"]
    for t, values in zip(judged, per_round, strict=True):
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        sign = "≥" if t["higher_is_better"] else "≤"
        spread = ", ".join(_f(v, t["format"]) for v in values)
        lines.append(f"| {t['target']} | {_f(t['measured'], t['format'])} | {spread} | "
                     f"{sign} {format(t['goal'], t['format'])} | {verdict} |")
    return "\n".join(lines)


def judged_targets(report: dict[str, Any]) -> tuple[list[dict[str, Any]], list[list[float | None]]]:
    """Targets from each round's own figures (paired: ours and the peers measured minutes apart), and their median.

    A report without rounds (older JSON) is judged on its single set of figures."""
    rounds = report.get("rounds") or [{"systems": report["systems"], "roofline": report.get("roofline", {})}]
    per_round = [targets({**report, "systems": r["systems"], "roofline": r["roofline"]}) for r in rounds]
    judged = []
    values: list[list[float | None]] = []
    for i, t in enumerate(per_round[0]):
        measured = [pr[i]["measured"] for pr in per_round]
        known = sorted(v for v in measured if v is not None)
        median = known[len(known) // 2] if len(known) % 2 else (
            (known[len(known) // 2 - 1] + known[len(known) // 2]) / 2 if known else None)
        met = None if median is None else (median >= t["goal"] if t["higher_is_better"] else median <= t["goal"])
        judged.append({**t, "measured": median, "met": met})
        values.append(measured)
    return judged, values


def plot(report: dict[str, Any], path: Path) -> None:
    """Two panels: sentences/s and p50 latency per scenario, one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(report["scenarios"])
    systems = [s for s in report["systems"] if "error" not in report["systems"][s]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(systems))
    for k, system in enumerate(systems):
        rows = [row_for(report, system, sc) for sc in scenarios]
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(scenarios))]
        axes[0].bar(xs, [r["sentences_per_s"] if r else 0 for r in rows], width, label=system)
        axes[1].bar(xs, [r["p50_ms"] if r and r.get("p50_ms") is not None else 0 for r in rows], width,
                    label=system)
    for ax, title in zip(axes, ("throughput (sentences/s, higher is better)", "p50 latency (ms, lower is better)"),
                         strict=True):
        ax.set_xticks(range(len(scenarios)), scenarios)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(f"all-MiniLM-L6-v2 on {machine['cpus']} CPUs ({machine['cpu_model']}); sentence-transformers "
                 "batched bars are its best batch size, in-process", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description="Re-render a bench/compare.py JSON report as markdown (and PNG).")
    parser.add_argument("report", type=Path)
    parser.add_argument("--png", type=Path, help="also write the plot here")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    if args.png:
        plot(report, args.png)
    print(markdown(report))  # noqa: T201 - the tables are this script's output


if __name__ == "__main__":
    main()
