"""Closed-loop success against step latency, with the delay clock (emulated latency, in process).

    .venv/bin/python bench/sim_latency_curve.py --seeds 101000:101030 --out bench/results/sim_latency_curve

For each query rate (one query per 8-action chunk, and re-planning every 4 actions) and each
latency (fixed milliseconds: every method the same; a named 7B target: each step's latency from
its own LLM FLOPs), one ``specprune sim eval --latency`` of ``none``, the model's default pruning
and random tokens at the default's counts, on the same seeds. Writes ``<out>.json`` (every run's
per-method summary) and ``<out>.png``. Resumable: a finished run's results.json is reused.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RATES = {"chunk rate (1.25 Hz)": "1.25", "re-planning (2.5 Hz)": "2.5"}
LATENCIES = ("0", "100", "200", "300", "450", "7b-h100", "7b-a800")
METHODS = "none,specprune,random"


def run(model: str, seeds: str, latency: str, rate: str, work: Path, workers: int) -> dict:
    out = work / f"{rate}hz_{latency}"
    if not (out / "results.json").exists():
        subprocess.run([sys.executable, "-m", "specprune_ros", "sim", "eval", "--model", model, "--seeds", seeds,
                        "--methods", METHODS, "--latency", latency, "-p", f"control_rate_hz:={rate}",
                        "--workers", str(workers), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/sim-tabletop")
    parser.add_argument("--seeds", default="101000:101030")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/results/sim_latency_curve_test_cpu")
    args = parser.parse_args()
    work = Path(args.out + "_runs")
    rows = []
    for rate_name, rate in RATES.items():
        for latency in LATENCIES:
            r = run(args.model, args.seeds, latency, rate, work, args.workers)
            for label, s in r["methods"].items():
                rows.append({"rate": rate_name, "control_rate_hz": float(rate), "latency": latency,
                             "emulated": r["emulated_latency"], "method": label,
                             "success_rate": s["success_rate"], "success_ci95": s["success_ci95"],
                             "successes": s["successes"], "episodes": s["episodes"],
                             "flops_ratio_mean": s["flops_ratio_mean"],
                             "emulated_latency_ms_mean": s["emulated_latency_ms_mean"],
                             "holds_per_episode": s["holds_per_episode"],
                             "skipped_actions_per_episode": s["skipped_actions_per_episode"],
                             "chunk_age_s_mean": s["chunk_age_s_mean"],
                             "handover_step_mm_mean": s["handover_step_mm_mean"],
                             "within_chunk_step_mm_mean": s["within_chunk_step_mm_mean"],
                             "vs_none": s.get("vs_none")})
            seeds, device = r["seeds"], r["device"]
    result = {"what": "closed-loop success against emulated step latency (delay clock, in process)",
              "model": args.model, "seeds": seeds, "split": "test", "device": device, "methods": METHODS,
              "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    plot(result, Path(args.out + ".png"))
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RATES), figsize=(6 * len(RATES), 4.2), sharey=True)
    n = result["rows"][0]["episodes"]
    for ax, rate_name in zip(axes, RATES):
        for method in METHODS.split(","):
            rows = [r for r in result["rows"] if r["rate"] == rate_name and r["method"] == method]
            xs = [r["emulated_latency_ms_mean"] for r in rows]
            ys = [100 * r["success_rate"] for r in rows]
            ax.plot(xs, ys, "o-", label=method)
            for r, x, y in zip(rows, xs, ys):
                if r["latency"].startswith("7b"):
                    ax.annotate(r["latency"], (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_title(f"{rate_name}: {n} test seeds per point")
        ax.set_xlabel("emulated step latency (ms; 7B points: each method's own)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success (%)")
    axes[0].legend()
    fig.suptitle(f"Success against emulated latency (delay clock), {result['model']}, {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
