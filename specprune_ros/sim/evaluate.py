"""Closed-loop evaluation of pruning rules on the tabletop task (`specprune sim eval`).

Every method runs the same seeds with the same model (paired: a seed draws the same scene for
each); the unpruned run (``none``) is the speed reference measured in the same run. Methods are
``name[@alpha]`` (common/methods.py); with budgets, each rule runs at several alphas and the
curves of success against LLM FLOPs are compared at equal FLOPs.

Outputs in ``--out``: ``results.json`` (per method: success with a 95 % Wilson interval, step
latency mean / p95, speed-up against ``none``, LLM FLOPs ratio, kept tokens, global recall,
fine-mode share, episode length, failure modes; exact McNemar tests on the per-seed outcomes
against ``none`` and between the rules of one alpha; the budget curves), ``episodes.csv``, plots
and ``report.html``.
Episodes run in ``--workers`` processes; results depend only on the seeds.
"""
from __future__ import annotations

import csv
import dataclasses
import html
import json
import math
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.device import free_cpus, host_load
from ..common.figures import PRUNED_PATCHES, label_cameras
from ..common.jsonout import finite
from ..common.methods import Method, family
from ..common.stats import exact_mcnemar, interpolate_curve
from ..config import Config
from .env import CHUNK_EXECUTED, DEFAULT_LAYOUT, MAX_STEPS, SEED_SPLITS

SNAPSHOT_QUERY = 3                    # the query whose kept patches the frame strip shows
FAILURES = ("wrong object", "missed grasp", "not placed")


# ---- worker side ---------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def _run_episode(task: tuple[str, Config, int, bool, int, str, tuple[str, ...], Any]) -> dict[str, Any]:
    """One episode in a worker process (the model and the environment are made once per process)."""
    from ..policy import load_model, make_policy
    from .env import TabletopEnv
    from .rollout import run_policy_episode

    label, config, seed, snapshot, max_steps, layout, frozen, latency, execute = task
    node = config.node
    key = (node.model_path, node.device, node.dtype, node.unnorm_key)
    if _WORKER.get("key") != key:
        _WORKER["key"] = key
        _WORKER["loaded"] = load_model(config)
    if _WORKER.get("env_key") != (max_steps, layout):
        if "env" in _WORKER:
            _WORKER["env"].close()
        _WORKER["env"], _WORKER["env_key"] = TabletopEnv(max_steps=max_steps, layout=layout), (max_steps, layout)
    policy = make_policy(config, _WORKER["loaded"])
    r = run_policy_episode(_WORKER["env"], policy, seed, snapshot_query=SNAPSHOT_QUERY if snapshot else None,
                           frozen=frozen, latency=latency, execute=execute)
    return {"method": label, "seed": seed, "instruction": r.instruction, "success": r.success, "steps": r.steps,
            "failure": r.failure, "latency_ms": r.latency_ms, "kept_tokens": r.kept_tokens,
            "flops_ratio": r.flops_ratio, "recall": r.recall, "fine_mode": r.fine_mode, "snapshot": r.snapshot,
            "holds": r.holds, "skipped": r.skipped, "chunk_age_s": r.chunk_age_s,
            "handover_step_m": r.handover_step_m, "within_step_m": r.within_step_m}


class InProcess:
    """Episodes in ``workers`` processes, each calling the policy directly (the default runner);
    ``frozen``: cameras whose image stays each episode's first frame; ``latency``: the delay
    clock's emulated latency (``run_policy_episode``; None: lockstep); ``execute``: actions per
    query (the chunk's 8: one query per chunk; fewer: re-planning)."""

    name = "in-process"

    def __init__(self, workers: int = 1, max_steps: int = MAX_STEPS, layout: str = DEFAULT_LAYOUT,
                 frozen: tuple[str, ...] = (), latency: Any = None, execute: int | None = None) -> None:
        self.workers, self.max_steps, self.layout, self.frozen = workers, max_steps, layout, tuple(frozen)
        self.latency, self.execute = latency, execute or CHUNK_EXECUTED
        self.threads = max(1, free_cpus() // workers)     # never more threads than free cores

    def __enter__(self) -> "InProcess":
        self.pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                        initargs=(self.threads,))
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()

    def run(self, label: str, config: Config, seeds: list[int], done: Callable[[], None]) -> list[dict[str, Any]]:
        tasks = [(label, config, seed, i == 0, self.max_steps, self.layout, self.frozen, self.latency, self.execute)
                 for i, seed in enumerate(seeds)]
        results = []
        for r in self.pool.map(_run_episode, tasks):
            results.append(r)
            done()
        return results

    def summary(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """With the delay clock: the emulated step latency and what the stack's runner reports
        (the observation's age behind each executed action, skips and holds per episode)."""
        if self.latency is None:
            return {}
        ages, flops = _concatenated(results, "chunk_age_s"), _concatenated(results, "flops_ratio")
        return {"clock": "delay (emulated latency)",
                "emulated_latency_ms_mean": _mean(np.array([self.latency.step_ms(f) for f in flops])),
                "chunk_age_s_mean": _mean(ages),
                "chunk_age_s_p95": float(np.percentile(ages, 95)) if ages.size else math.nan,
                "skipped_actions_per_episode": float(np.mean([r["skipped"] for r in results])),
                "holds_per_episode": float(np.mean([r["holds"] for r in results])),
                "handover_step_mm_mean": 1000 * _mean(_concatenated(results, "handover_step_m")),
                "within_chunk_step_mm_mean": 1000 * _mean(_concatenated(results, "within_step_m"))}


def _concatenated(results: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.concatenate([np.asarray(r[key], np.float64) for r in results]) if results else np.zeros(0)


# ---- the evaluation --------------------------------------------------------------------------------------
def evaluate(config: Config, methods: list[Method], seeds: list[int], out: str | Path, workers: int = 1,
             progress: Callable[[int, int], None] | None = None, max_steps: int = MAX_STEPS,
             layout: str = DEFAULT_LAYOUT, runner: Any = None, frozen: tuple[str, ...] = (),
             latency: Any = None, execute: int | None = None) -> dict[str, Any]:
    """``runner`` runs one method's episodes (``InProcess`` by default; the ROS stack's runner
    runs them through DDS) and may add its own figures to each method's summary. ``frozen``:
    cameras held at each episode's first frame (in process only: the ROS stack's robot
    publishes what it renders). ``latency``: a ``latency.LatencyModel`` - the delay clock, in
    process; a runner that runs it (the ROS stack's, lockstep) brings its own."""
    from .rollout import wilson_interval

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total, done = len(methods) * len(seeds), [0]
    episodes: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, dict[str, Any]] = {}
    if runner is not None:
        if frozen:
            raise ValueError(f"frozen cameras ({', '.join(frozen)}): only in process, "
                             f"not with the {runner.name} runner")
        latency = latency or getattr(runner, "latency", None)     # the runner's delay clock, if it has one
        if latency is not getattr(runner, "latency", None):
            raise ValueError(f"an emulated latency ({latency.name}): give it to the {runner.name} runner")
    runner = runner or InProcess(workers, max_steps, layout, frozen, latency, execute)

    def one_done() -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    with runner:
        for method in methods:
            fastv_tokens = None
            if method.matched_to:
                fastv_tokens = max(1, round(summary[method.matched_to]["kept_tokens_mean"]))
            cfg = method.config(config, fastv_tokens)
            results = runner.run(method.label, cfg, seeds, one_done)
            episodes[method.label] = results
            alpha = None if method.name == "none" else cfg.pruning.alpha   # the configured one if none given
            summary[method.label] = _summarize(method, results, wilson_interval, fastv_tokens, alpha)
            summary[method.label].update(runner.summary(results))
    paired = compare_methods(episodes, summary)
    result = {"model": config.node.model_path, "episodes_per_method": len(seeds), "seeds": [seeds[0], seeds[-1]],
              "split": seed_split(seeds), "max_steps": max_steps, "layout": layout,
              "frozen_cameras": list(frozen), "device": _device_name(config),
              "emulated_latency": None if latency is None else dataclasses.asdict(latency),
              "actions_per_query": runner.execute if isinstance(runner, InProcess)
              else 1.0 / (config.node.control_rate_hz * config.node.action_dt),
              "runner": runner.name, "workers": runner.workers, "torch_threads_per_worker": runner.threads,
              "host": host_load(), "methods": summary, "paired": paired, "curves": budget_curves(summary)}
    result["timing_note"] = timing_note(result)
    (out / "results.json").write_text(json.dumps(finite(result), indent=2, allow_nan=False))
    _write_csv(out / "episodes.csv", episodes)
    _plots(out, summary, episodes, result["timing_note"])
    plot_curves(out / "success_vs_flops_curves.png", result["curves"], summary)
    _report(out, result)
    result["out"] = str(out)
    return result


# What must agree for runs to be merged into one sweep: the same episodes asked the same way.
MERGE_KEYS = ("model", "seeds", "max_steps", "layout", "frozen_cameras", "emulated_latency", "actions_per_query",
              "runner")


def merge_evaluations(runs: list[str | Path], out: str | Path) -> dict[str, Any]:
    """One sweep from ``sim eval`` runs made in parts (one budget group per run, say): their
    methods side by side, the paired tests recomputed from every run's per-seed outcomes
    (``episodes.csv``: every method against ``none``, the rules of one alpha against each other),
    the speed-up against ``none`` wherever it ran, the budget curves and their plot. Writes
    ``results.json`` and ``success_vs_flops_curves.png`` to ``out``. Runs that asked different
    episodes (model, seeds, layout, clock ...) or that repeat a method are refused."""
    if not runs:
        raise ValueError("merge: no runs given")
    results, episodes, summary = [], {}, {}
    for run in map(Path, runs):
        try:
            result = json.loads((run / "results.json").read_text())
            with (run / "episodes.csv").open(newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, ValueError) as exc:
            raise ValueError(f"merge: {run} is not a `sim eval` output ({exc})") from None
        for key in MERGE_KEYS:
            if results and result.get(key) != results[0].get(key):
                raise ValueError(f"merge: {run} has {key} {result.get(key)!r}, the first run "
                                 f"{results[0].get(key)!r}: not the same episodes")
        for label, s in result["methods"].items():
            if label in summary:
                raise ValueError(f"merge: method {label!r} is in {run} and in an earlier run")
            summary[label] = s
            episodes[label] = [{"seed": int(r["seed"]), "success": r["success"] == "1"}
                               for r in rows if r["method"] == label]
        results.append(result)
    for s in summary.values():
        s.pop("vs_none", None)             # a run without `none` has none; the merged one may
    paired = compare_methods(episodes, summary)
    first = results[0]
    merged = {**{k: first.get(k) for k in ("episodes_per_method", "split", "device", *MERGE_KEYS)},
              "merged_from": [str(r) for r in runs], "devices": sorted({r["device"] for r in results}),
              "methods": summary, "paired": paired, "curves": budget_curves(summary),
              "timing_note": "latencies and speed-ups come from runs made at different times; "
                             "`specprune bench` times one step alone"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(finite(merged), indent=2, allow_nan=False))
    plot_curves(out / "success_vs_flops_curves.png", merged["curves"], summary)
    return merged


def compare_methods(episodes: dict[str, list[dict[str, Any]]],
                    summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each method's speed-up against ``none`` and its paired test against it (``vs_none``), in
    ``summary``; returns every paired comparison (``paired_comparisons``)."""
    reference = summary.get("none", {}).get("latency_ms_mean")
    for s in summary.values():
        s["speedup"] = reference / s["latency_ms_mean"] if reference and s.get("latency_ms_mean") else math.nan
    paired = paired_comparisons(episodes, summary)
    for comparison in paired:
        if comparison["b"] == "none":
            summary[comparison["a"]]["vs_none"] = {k: comparison[k] for k in ("difference", "p_value")}
    return paired


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """The printed table of ``sim eval``: one row per method, columns aligned."""
    rows = [TABLE_HEADER] + table_rows(summary)
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def seed_split(seeds: list[int]) -> str:
    """The split every seed falls in, "outside" (none), or "mixed"."""
    splits = {next((name for name, (low, high) in SEED_SPLITS.items() if low <= seed < high), "outside")
              for seed in seeds}
    return splits.pop() if len(splits) == 1 else "mixed"


def paired_comparisons(episodes: dict[str, list[dict[str, Any]]],
                       summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Exact McNemar tests on per-seed outcomes: every method against ``none``, and the rules of
    one budget (same alpha) against each other. ``a_only``: seeds only ``a`` solved."""
    labels = list(episodes)
    pairs = [(m, "none") for m in labels if m != "none" and "none" in episodes]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if a != "none" and b != "none" and summary[a]["alpha"] == summary[b]["alpha"]:
                pairs.append((a, b))
    out = []
    for a, b in pairs:
        wins_a = {r["seed"]: r["success"] for r in episodes[a]}
        wins_b = {r["seed"]: r["success"] for r in episodes[b]}
        seeds = sorted(set(wins_a) & set(wins_b))
        a_only = sum(wins_a[s] and not wins_b[s] for s in seeds)
        b_only = sum(wins_b[s] and not wins_a[s] for s in seeds)
        out.append({"a": a, "b": b, "seeds": len(seeds), "a_only": a_only, "b_only": b_only,
                    "difference": (a_only - b_only) / max(len(seeds), 1), "p_value": exact_mcnemar(a_only, b_only)})
    return out


def budget_curves(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per rule family: its points (LLM FLOPs, success, interval) in FLOPs order, and every
    other family's success interpolated at each of its FLOPs (equal-compute comparison; None
    outside the other curve's range)."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for label, s in summary.items():
        if label == "none":
            continue
        curves.setdefault(family(label), []).append(
            {"label": label, "alpha": s["alpha"], "flops": s["flops_ratio_mean"], "success": s["success_rate"],
             "ci95": s["success_ci95"]})
    for points in curves.values():
        points.sort(key=lambda p: p["flops"])
    at_equal_flops = {}
    for name, points in curves.items():
        for other, theirs in curves.items():
            if other == name or len(theirs) < 2:
                continue
            xs, ys = [p["flops"] for p in theirs], [p["success"] for p in theirs]
            at_equal_flops.setdefault(name, {})[other] = [interpolate_curve(xs, ys, p["flops"]) for p in points]
    return {"families": curves, "at_equal_flops": at_equal_flops}


def plot_curves(path: Path, curves: dict[str, Any], summary: dict[str, dict[str, Any]]) -> None:
    """Success against LLM FLOPs, one line per rule family with its 95 % intervals; ``none`` as a band."""
    if not any(len(points) > 1 for points in curves["families"].values()):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if "none" in summary:
        low, high = summary["none"]["success_ci95"]
        ax.axhspan(100 * low, 100 * high, color="grey", alpha=0.2, label="none (95 % interval)")
        ax.axhline(100 * summary["none"]["success_rate"], color="grey", lw=1)
    for name, points in curves["families"].items():
        x = [p["flops"] for p in points]
        y = [100 * p["success"] for p in points]
        err = [[yy - 100 * p["ci95"][0] for yy, p in zip(y, points)],
               [100 * p["ci95"][1] - yy for yy, p in zip(y, points)]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xlabel("LLM FLOPs ratio (pruned / unpruned)")
    ax.set_ylabel("success rate (%), 95 % Wilson interval")
    ax.set_title(f"success against LLM FLOPs: {_episodes_per_point(summary)} per point", fontsize=10)
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _device_name(config: Config) -> str:
    import torch

    from ..common.device import cpu_name
    if config.node.device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_name()


def _summarize(method: Method, results: list[dict[str, Any]], wilson, fastv_tokens: int | None,
               alpha: float | None) -> dict[str, Any]:
    wins = sum(r["success"] for r in results)

    def every(key: str) -> np.ndarray:
        return _concatenated(results, key)

    latency, recall = every("latency_ms"), every("recall")
    recall = recall[np.isfinite(recall)]
    low, high = wilson(wins, len(results))
    return {
        "method": method.name, "alpha": alpha, "knobs": method.overrides, "fastv_tokens": fastv_tokens,
        "episodes": len(results), "successes": wins, "success_rate": wins / len(results), "success_ci95": [low, high],
        "latency_ms_mean": _mean(latency), "latency_ms_p95": float(np.percentile(latency, 95)) if latency.size
        else math.nan,
        "flops_ratio_mean": _mean(every("flops_ratio")), "kept_tokens_mean": _mean(every("kept_tokens")),
        "global_recall_mean": _mean(recall), "fine_mode_share": _mean(every("fine_mode")),
        "episode_steps_mean": float(np.mean([r["steps"] for r in results])),
        "failures": {f: sum(r["failure"] == f for r in results) for f in FAILURES},
    }


def _mean(values: np.ndarray) -> float:
    """The mean, NaN for no values (a method whose steps all dropped)."""
    return float(values.mean()) if values.size else math.nan


def _write_csv(path: Path, episodes: dict[str, list[dict[str, Any]]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", "instruction", "success", "failure", "steps", "queries",
                         "latency_ms_mean", "kept_tokens_mean", "flops_ratio_mean"])
        for label, results in episodes.items():
            for r in results:
                writer.writerow([label, r["seed"], r["instruction"], int(r["success"]), r["failure"], r["steps"],
                                 len(r["latency_ms"]), f"{_mean(np.asarray(r['latency_ms'])):.2f}",
                                 f"{_mean(np.asarray(r['kept_tokens'])):.1f}",
                                 f"{_mean(np.asarray(r['flops_ratio'])):.4f}"])


def _episodes_per_point(summary: dict[str, dict[str, Any]]) -> str:
    """'1 paired episode' / '20 paired episodes' (counts joined by ' / ' where methods differ)."""
    counts = sorted({s["episodes"] for s in summary.values()})
    return f"{' / '.join(map(str, counts))} paired episode{'' if counts == [1] else 's'}"


def _plots(out: Path, summary: dict[str, dict[str, Any]], episodes: dict[str, list[dict[str, Any]]],
           note: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, label, name in (("flops_ratio_mean", "LLM FLOPs ratio (pruned / unpruned)", "success_vs_flops.png"),
                             ("speedup", "speed-up of the policy step vs none", "success_vs_speedup.png")):
        fig, ax = plt.subplots(figsize=(7.5, 4))         # room for the legend beside the axes
        for method, s in summary.items():
            rate, (low, high) = 100 * s["success_rate"], s["success_ci95"]
            ax.errorbar([s[key]], [rate], yerr=[[rate - 100 * low], [100 * high - rate]], fmt="o", capsize=4,
                        label=method)
        ax.set_xlabel(label)
        ax.set_ylabel("success rate (%), 95 % Wilson interval")
        ax.set_title(f"closed-loop success: {_episodes_per_point(summary)} per method"
                     + ("\n(speed-ups not comparable: see the report)" if key == "speedup" and note else ""),
                     fontsize=10)
        ax.set_ylim(-5, 105)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for method, results in episodes.items():
        ax.plot(results[0]["kept_tokens"], marker=".", label=method)
    ax.set_xlabel(f"policy query (seed {next(iter(episodes.values()))[0]['seed']})")
    ax.set_ylabel("vision tokens kept")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "kept_tokens.png", dpi=100)
    plt.close(fig)

    snaps = [(m, r[0]["snapshot"]) for m, r in episodes.items() if r[0].get("snapshot") is not None]
    if snaps:
        fig, axes = plt.subplots(len(snaps), 1, figsize=(6, 3.1 * len(snaps)), squeeze=False)
        for ax, (method, image) in zip(axes[:, 0], snaps):
            ax.imshow(image)
            ax.set_title(f"{method}: kept patches at query {SNAPSHOT_QUERY} ({PRUNED_PATCHES})", fontsize=9)
            label_cameras(ax, image)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "kept_patches.png", dpi=100)
        plt.close(fig)


def timing_note(result: dict[str, Any]) -> str:
    """Why the speed-up column is not a step's speed-up on an idle machine, or "" when it is:
    parallel workers share the cores (each method's latencies depend on what ran beside them)
    and a busy host slows steps unevenly. ``specprune bench`` times one step alone."""
    reasons = []
    if result["workers"] > 1:
        reasons.append(f"{result['workers']} workers ran at once on {result['host']['cpus']} CPUs")
    if result["host"]["loaded"]:
        reasons.append(f"the host was busy (load {result['host']['load_avg_1m']} on {result['host']['cpus']} CPUs)")
    if not reasons:
        return ""
    return ("speed-up: not comparable with an idle single run (" + "; ".join(reasons)
            + "); `specprune bench` times one step alone")


def table_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The README / report table: method, alpha, success (interval), FLOPs, speed-up, tokens, recall."""
    rows = []
    for label, s in summary.items():
        low, high = s["success_ci95"]
        recall = s["global_recall_mean"]
        rows.append([label, "-" if s["alpha"] is None else f"{s['alpha']:g}",
                     f"{100 * s['success_rate']:.0f} % [{100 * low:.0f}, {100 * high:.0f}]",
                     f"{s['flops_ratio_mean']:.3f}", f"{s['speedup']:.2f}x", f"{s['kept_tokens_mean']:.0f}",
                     "-" if recall is None or not math.isfinite(recall) else f"{100 * recall:.0f} %",
                     _versus_none(s.get("vs_none"))])
    return rows


def _versus_none(comparison: dict[str, float] | None) -> str:
    """``-12 pts (p 0.03)``: the paired difference in success from ``none`` and its McNemar p."""
    if not comparison:
        return "-"
    return f"{100 * comparison['difference']:+.0f} pts (p {comparison['p_value']:.2g})"


TABLE_HEADER = ["method", "alpha", "success (95 % CI)", "LLM FLOPs", "speed-up", "tokens kept", "recall",
                "vs none (paired)"]


def _report(out: Path, result: dict[str, Any]) -> None:
    head = "".join(f"<th>{h}</th>" for h in TABLE_HEADER + ["failures"])
    body = ""
    for row, s in zip(table_rows(result["methods"]), result["methods"].values()):
        failures = ", ".join(f"{k}: {v}" for k, v in s["failures"].items() if v) or "-"
        body += "<tr>" + "".join(f"<td>{c}</td>" for c in row + [failures]) + "</tr>"
    images = "".join(f'<p><img src="{n}"></p>' for n in ("success_vs_flops.png", "success_vs_speedup.png",
                                                        "kept_tokens.png", "kept_patches.png")
                     if (out / n).exists())
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>specprune sim eval</title></head><body>"
        f"<h1>Closed-loop evaluation</h1><p>model {result['model']}, {result['episodes_per_method']} episodes per "
        f"method (seeds {result['seeds'][0]}-{result['seeds'][1]}), {result['runner']}, {result['workers']} "
        f"worker(s)</p>"
        + (f"<p><b>{html.escape(result['timing_note'])}</b></p>" if result.get("timing_note") else "")
        + f"<p>recall: the share of a step's global-layer top-k tokens (scored at full length) that its "
        f"prior had already selected; LLM FLOPs: the pruned step's over the unpruned step's</p>"
        f"<table border='1' cellpadding='4'><tr>{head}</tr>{body}</table>{images}</body></html>")
