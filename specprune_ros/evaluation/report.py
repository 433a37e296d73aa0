"""Plots and the HTML report of a replay (matplotlib, no display needed)."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..common.figures import PRUNED_PATCHES, label_cameras


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shade_fine(ax, steps: list[int], fine: list[int]) -> None:
    start = None
    for s, f in zip(steps + [None], fine + [0]):
        if f and start is None:
            start = s
        elif not f and start is not None:
            ax.axvspan(start - 0.5, (s if s is not None else steps[-1] + 1) - 0.5, color="tab:orange", alpha=0.15,
                       lw=0)
            start = None


def _unit_groups(dims: list[str]) -> list[tuple[str, list[str]]]:
    """Dimensions that share a unit, plotted on one axis: the end-effector's translation deltas
    (metres in the sim task), its rotation deltas (radians) and the gripper command never share
    one; other action spaces are one group in their own units."""
    translation, rotation = "translation, m per period", "rotation, rad per period"
    units = {"x": translation, "y": translation, "z": translation, "roll": rotation, "pitch": rotation,
             "yaw": rotation, "gripper": "gripper command"}
    if not set(dims) <= set(units):
        return [("action units", dims)]
    order = list(dict.fromkeys(units[d] for d in dims))
    return [(unit, [d for d in dims if units[d] == unit]) for unit in order]


def write_plots(run, rows: list[dict[str, Any]], out: Path) -> list[str]:
    plt = _pyplot()
    steps = [r["step"] for r in rows]
    fine = [r["fine_mode"] for r in rows]
    written = []

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(steps, [r["latency_pruned_ms"] for r in rows], label="pruned", color="tab:blue")
    if not np.isnan(rows[0]["latency_unpruned_ms"]):
        ax.plot(steps, [r["latency_unpruned_ms"] for r in rows], label="unpruned", color="tab:gray")
    ax.set(xlabel="step", ylabel="latency (ms)", title="Policy step latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    written.append("latency.png")

    fig, ax = plt.subplots(figsize=(9, 3.2))
    _shade_fine(ax, steps, fine)
    ax.plot(steps, [r["vision_tokens_kept"] for r in rows], color="tab:blue", label="kept after static pruning")
    ax.plot(steps, [r["global_selected"] for r in rows], lw=0.8, label="global")
    ax.plot(steps, [r["local_selected"] for r in rows], lw=0.8, label="local")
    ax.plot(steps, [r["dynamic_selected"] for r in rows], lw=0.8, label="dynamic")
    ax.axhline(rows[0]["vision_tokens_total"], color="k", lw=0.6, ls="--", label="all vision tokens")
    ax.set(xlabel="step (shaded: fine mode)", ylabel="vision tokens", title="Kept vision tokens")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out / "kept_tokens.png", dpi=110)
    written.append("kept_tokens.png")

    deviation_keys = [k for k in rows[0] if k.startswith("deviation_")]
    if deviation_keys:
        groups = _unit_groups([k.removeprefix("deviation_") for k in deviation_keys])
        fig, axes = plt.subplots(len(groups), 1, figsize=(9, 2.4 * len(groups) + 0.6), sharex=True, squeeze=False)
        for ax, (unit, dims) in zip(axes[:, 0], groups):
            _shade_fine(ax, steps, fine)
            for dim, style in zip(dims, ("-", "--", ":") * len(dims)):      # styles: equal lines stay visible
                ax.plot(steps, [r[f"deviation_{dim}"] for r in rows], lw=1.2, ls=style, label=dim)
            ax.set_ylabel(f"|pruned - unpruned|\n({unit})", fontsize=9)
            ax.legend(fontsize=7, ncol=len(dims))
        axes[0, 0].set_title(f"Action deviation per dimension (mean over the chunk), {len(rows)} steps")
        axes[-1, 0].set_xlabel("step (shaded: fine mode)")
        fig.tight_layout()
        fig.savefig(out / "action_deviation.png", dpi=110)
        written.append("action_deviation.png")

    shown = [s for s in run.steps if s.pruned.kept_mask is not None]
    if shown:
        picks = [shown[int(i)] for i in np.linspace(0, len(shown) - 1, min(4, len(shown)))]
        fig, axes = plt.subplots(len(picks), 1, figsize=(6, 3 * len(picks)), squeeze=False)
        for ax, s in zip(axes[:, 0], picks):
            image = s.pruned.overlay()
            ax.imshow(image)
            label_cameras(ax, image)
            ax.set_title(f"step {s.pruned.stats.step}: {s.pruned.stats.vision_tokens_kept} of "
                         f"{s.pruned.stats.vision_tokens_total} patches kept"
                         + (", fine mode" if s.pruned.stats.fine_mode else "") + f" ({PRUNED_PATCHES})",
                         fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "overlays.png", dpi=100)
        written.append("overlays.png")
    plt.close("all")
    return written


def replay_warnings(summary: dict[str, Any]) -> list[str]:
    """What a reader of the figures must know first; the CLI table and the report both show it."""
    warnings = []
    if summary["model"] == "tiny-random":
        warnings.append("model tiny-random: random weights, the actions mean nothing (pass --model DIR)")
    drops = {k: v for k, v in summary["dropped_observations"].items() if v}
    if drops:
        warnings.append("dropped observations: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))
                        + " (no step for them)")
    host = summary.get("host")
    if host and host["loaded"]:
        warnings.append(f"busy host (load {host['load_avg_1m']} on {host['cpus']} CPUs): latencies and the "
                        f"speed-up are not comparable with an idle host's")
    return warnings


def write_report(summary: dict[str, Any], out: Path) -> Path:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    lat = summary["latency_ms"]
    rows = [("steps", summary["steps"]), ("latency p50 pruned (ms)", lat["pruned"]["p50"])]
    if "unpruned" in lat:
        rows += [("latency p50 unpruned (ms)", lat["unpruned"]["p50"]), ("speedup p50", summary["speedup_p50"]),
                 ("action L1 vs unpruned (mean)", summary["action_l1_vs_unpruned"]["mean"])]
    rows += [("vision tokens kept (mean)", f"{summary['vision_tokens']['kept_mean']:.1f} / "
                                           f"{summary['vision_tokens']['total']}"),
             ("LLM FLOPs ratio (mean)", summary["flops_ratio_mean"]),
             ("fine-mode share", summary["fine_mode_fraction"]),
             ("global recall (mean)", summary["global_recall_mean"])]
    if "action_l1_vs_recorded" in summary:
        rows.append(("action L1 vs recorded (pruned)", summary["action_l1_vs_recorded"]["pruned"]))
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{fmt(v)}</td></tr>" for k, v in rows)
    warnings = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in replay_warnings(summary))
    images = "\n".join(f'<figure><img src="{p}" alt="{p}"><figcaption>{p}</figcaption></figure>'
                       for p in summary["plots"])
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>specprune replay: {html.escape(summary['bag'])}</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}img{{max-width:100%}}
.warn{{background:#fff3cd;border-left:4px solid #d39e00;padding:6px 10px}}</style></head>
<body><h1>SpecPrune-VLA replay</h1>
<p>Bag <code>{html.escape(summary['bag'])}</code>, model <code>{html.escape(summary['model'])}</code>,
instruction <em>{html.escape(summary['instruction'])}</em>.</p>
{warnings}<table>{table}</table>
{images}
<details><summary>summary.json</summary><pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre></details>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
