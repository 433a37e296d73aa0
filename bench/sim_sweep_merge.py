"""One budget sweep from `sim eval` runs made in parts: their methods side by side, the paired
tests recomputed from every run's per-seed outcomes, the curves and their plot.

    .venv/bin/python bench/sim_sweep_merge.py RUN_A RUN_B ... --out OUT

A sweep of 15 points takes hours on a 2-core CPU; run it as budget groups (each a `sim eval
--out RUN` with the same model, seeds and layout; `none` in one of them) so a stop loses one
group at most, then merge. Refused: runs of different episodes, a method in two runs.
"""
from __future__ import annotations

import argparse
import sys

from specprune_ros.sim.evaluate import format_table, merge_evaluations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="`sim eval --out` directories (results.json, episodes.csv)")
    parser.add_argument("--out", required=True, help="directory for the merged results.json and curves plot")
    args = parser.parse_args()
    try:
        merged = merge_evaluations(args.runs, args.out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(merged["methods"]))
    for c in merged["paired"]:
        print(f"{c['a']} vs {c['b']}: {c['a_only']} / {c['b_only']} seeds (p {c['p_value']:.3g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
