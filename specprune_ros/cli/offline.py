"""Offline commands: synthetic bags, replay, bench, flops, proxy, calibrate, parameter files, the tiny checkpoint."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..model.config import PRESETS
from .shared import Progress, Result, config_args, config_from_args, non_negative_float, positive_int, source_args


def replay_table(summary: dict) -> str:
    from ..evaluation.report import replay_warnings

    lat = summary["latency_ms"]
    lines = [("steps", f"{summary['steps']}"),
             ("latency p50 pruned", f"{lat['pruned']['p50']:.1f} ms")]
    if "unpruned" in lat:
        lines += [("latency p50 unpruned", f"{lat['unpruned']['p50']:.1f} ms"),
                  ("speedup p50", f"{summary['speedup_p50']:.2f}x")]
    tokens = summary["vision_tokens"]
    lines += [("vision tokens kept", f"{tokens['kept_mean']:.1f} / {tokens['total']}"),
              ("LLM FLOPs ratio", f"{summary['flops_ratio_mean']:.3f}"),
              ("fine-mode share", f"{100 * summary['fine_mode_fraction']:.0f} %")]
    if "action_l1_vs_unpruned" in summary:
        lines.append(("action L1 vs unpruned", f"{summary['action_l1_vs_unpruned']['mean']:.4f} (mean), "
                                               f"{summary['action_l1_vs_unpruned']['max']:.4f} (max)"))
    if "action_l1_vs_recorded" in summary:
        lines.append(("action L1 vs recorded", f"{summary['action_l1_vs_recorded']['pruned']:.4f} (pruned)"))
    width = max(len(k) for k, _ in lines)
    return "\n".join([f"  {k:<{width}}  {v}" for k, v in lines] + [f"  note: {w}" for w in replay_warnings(summary)])


def cmd_make_bag(args: argparse.Namespace) -> int:
    from ..common.bags import Recording, write_synthetic_bag

    topics = config_from_args(args).topics if args.params or args.param else None
    recording = Recording(storage=args.storage, topics=topics,
                          header_clock_s=args.header_clock, compression=args.compression, split=args.split,
                          image_format=args.image_format, encoding=args.encoding)
    path = write_synthetic_bag(args.out, steps=args.steps, seed=args.seed, recording=recording)
    return Result({"bag": str(path), "steps": args.steps, "storage": args.storage, "compression": args.compression,
                 "split": args.split, "image_format": args.image_format, "encoding": args.encoding},
          f"wrote a {args.steps}-step synthetic episode ({args.storage}) to {path}")


def cmd_replay(args: argparse.Namespace) -> int:
    from ..evaluation.replay import replay

    cfg = config_from_args(args, args.model)
    for mapping in args.remap or ():
        name, sep, topic = mapping.partition(":=")
        if not sep or not name or not topic:
            raise ConfigError(f"--remap {mapping!r}: expected NODE_TOPIC:=BAG_TOPIC, e.g. "
                              f"image_primary:=/camera/color/image_raw")
        cfg = cfg.replace(**{f"topics.{name.lstrip('/')}": topic})
    summary = replay(args.bag, args.out, cfg, compare=not args.no_compare, output_bag=args.output_bag,
                     show_progress=Progress(args).shown, motion=args.motion,
                     start_s=args.start, duration_s=args.duration, max_steps=args.max_steps,
                     step_latency_ms=args.step_latency_ms)
    return Result(summary, f"replayed {summary['steps']} steps of {args.bag}\n{replay_table(summary)}\n"
                         f"report: {summary['report']}")


def cmd_bench(args: argparse.Namespace) -> int:
    from ..evaluation.bench import run_bench

    cfg = config_from_args(args)
    if args.device:
        cfg = cfg.replace(device=args.device)
    result = run_bench(cfg, args.model_config, args.model, cfg.node.device, args.steps, args.warmup)
    lat = result["latency_ms"]
    text = (f"device {result['device']} ({result['device_name']}), model {result['model_config']}, "
            f"{result['dtype']}, {result['steps']} steps after {result['warmup']} warm-up\n"
            f"  unpruned  median {lat['unpruned']['median']:8.1f} ms   p95 {lat['unpruned']['p95']:8.1f} ms\n"
            f"  pruned    median {lat['pruned']['median']:8.1f} ms   p95 {lat['pruned']['p95']:8.1f} ms\n"
            f"  speedup {result['speedup']:.2f}x   LLM FLOPs ratio {result['flops_ratio']:.3f}   "
            f"overhead {result['overhead_ms']['median']:.2f} ms ({100 * result['overhead_fraction']:.1f} % of the "
            f"pruned step)\n  vision tokens kept {result['vision_tokens']['kept_mean']:.0f} / "
            f"{result['vision_tokens']['total']}, fine mode {100 * result['fine_mode_fraction']:.0f} % of steps\n"
            f"  preprocessing {result['preprocess_ms']['frames']} ({result['preprocess_ms']['resize']}): "
            f"median {result['preprocess_ms']['median']:.2f} ms")
    host = result["host"]
    if host["loaded"]:
        text += (f"\n  busy host (load {host['load_avg_1m']} on {host['cpus']} CPUs, {result['threads']} torch "
                 f"thread(s)): these latencies are not an idle machine's")
    return Result(result, text)


def cmd_flops(args: argparse.Namespace) -> int:
    from ..evaluation.bench import run_flops

    result = run_flops(config_from_args(args), args.model_config, args.steps)
    text = (f"{result['model_config']}: LLM FLOPs ratio {result['flops_ratio']:.3f} (mean over {result['steps']} "
            f"steps, {result['unpruned_steps']} unpruned), {result['tflops_pruned_mean']:.2f} vs "
            f"{result['tflops_unpruned']:.2f} TFLOP per step; vision tokens kept "
            f"{result['vision_tokens']['kept_mean']:.0f} / {result['vision_tokens']['total']}; "
            f"fine mode {100 * result['fine_mode_fraction']:.0f} % of steps")
    return Result(result, text)


def cmd_write_tiny_checkpoint(args: argparse.Namespace) -> int:
    from ..model.checkpoint import write_tiny_checkpoint

    path = write_tiny_checkpoint(args.directory, seed=args.seed)
    files = sorted(p.name for p in path.iterdir())
    return Result({"path": str(path), "files": files}, f"wrote a tiny OpenVLA-OFT checkpoint to {path}:\n  "
          + "\n  ".join(files))


def cmd_params(args: argparse.Namespace) -> int:
    """Validate a parameter file (or the defaults) and print the resolved parameters."""
    cfg = config_from_args(args)
    return Result(cfg.flat(), cfg.to_ros_yaml().rstrip("\n"))


def proxy_episodes(args: argparse.Namespace, cfg: Config, loaded, show) -> list:
    """The proxy's and calibration's observation sequences: a bag's, or unpruned sim episodes'."""
    from ..common.methods import parse_seeds
    from ..evaluation.proxy import observations_from_bag
    from ..policy import SpecPrunePolicy

    if args.bag:
        return observations_from_bag(args.bag, cfg, loaded.model.proprio_projector is not None)
    from ..sim.env import TabletopEnv
    from ..sim.rollout import recorded_observations

    env = TabletopEnv(layout=args.layout)
    try:
        unpruned = SpecPrunePolicy(loaded, cfg.replace(**{"pruning.enabled": False}))
        return recorded_observations(env, unpruned, parse_seeds(args.sim_seeds), show)
    finally:
        env.close()


def recorded_model(args: argparse.Namespace) -> tuple[Config, Any, list]:
    """proxy / calibrate: the configuration, the loaded model and the observation sequences."""
    from ..policy import load_model

    cfg = config_from_args(args, args.model)
    loaded = load_model(cfg)
    with Progress(args) as progress:
        episodes = proxy_episodes(args, cfg, loaded, progress.bar("recording", "episodes"))
    return cfg, loaded, episodes


def cmd_proxy(args: argparse.Namespace) -> int:
    from ..common.jsonout import finite
    from ..common.methods import parse_budgets, parse_methods
    from ..evaluation.proxy import action_gap, occlusion_importance, rank_agreement

    methods = [m for m in parse_methods(args.methods, parse_budgets(args.budgets) if args.budgets else None)
               if m.name != "none"]
    cfg, loaded, episodes = recorded_model(args)
    node = cfg.node
    oracle = None
    if args.oracle_blocks:
        with Progress(args) as progress:
            oracle = occlusion_importance(loaded, cfg, episodes[:args.oracle_episodes], args.oracle_blocks,
                                          progress.bar("oracle", "observations"))
        episodes = episodes[:args.oracle_episodes]
    with Progress(args) as progress:
        points = action_gap(loaded, cfg, episodes, methods, progress.bar("proxy", "rules"), oracle=oracle)
    result: dict[str, Any] = {"model": node.model_path, "source": args.bag or f"sim seeds {args.sim_seeds}",
                              "episodes": len(episodes), "steps": sum(len(e) for e in episodes), "methods": points}
    if args.closed_loop:
        result["rank_agreement"] = rank_agreement(points, json.loads(Path(args.closed_loop).read_text())["methods"])
    if args.out:
        Path(args.out).write_text(json.dumps(finite(result), indent=2, allow_nan=False))
    rows = [["method", "L1 chunk", "L1 first", "LLM FLOPs", "tokens", "oracle ratio"]] + [
        [label, f"{p['l1']:.4f}", f"{p['l1_first']:.4f}", f"{p['flops_ratio_mean']:.3f}",
         f"{p['kept_tokens_mean']:.0f}", f"{p['oracle_ratio']:.2f}" if "oracle_ratio" in p else "-"]
        for label, p in points.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    if "rank_agreement" in result:
        ra = result["rank_agreement"]
        text += (f"\nrank agreement with closed-loop success over {len(ra['labels'])} rules: Spearman rho "
                 f"{ra['rho_l1']:.2f} (-L1 chunk), {ra['rho_l1_first']:.2f} (-L1 first), {ra['rho_flops']:.2f} (FLOPs)")
    return Result(result, f"action gap from unpruned over {result['steps']} steps ({result['source']}):\n{text}")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..evaluation.calibrate import calibrate, params_yaml

    if not 0.05 <= args.target_flops <= 1.0:          # before minutes of recording
        raise ConfigError(f"--target-flops {args.target_flops:g}: must lie in [0.05, 1] (a share of the unpruned "
                          f"LLM FLOPs)")
    cfg, loaded, episodes = recorded_model(args)
    node = cfg.node
    with Progress(args) as progress:
        result = calibrate(loaded, cfg, episodes, args.target_flops, progress.bar("calibrate", "runs"))
    Path(args.out).write_text(params_yaml(result, node.model_path))
    knobs = ", ".join(f"{k} {v}" for k, v in result["knobs"].items())
    return Result({**result, "out": args.out},
          f"calibrated on {result['steps']} steps for {result['target_flops']:.2f} LLM FLOPs: {knobs}\n"
          f"proxy: {result['flops_ratio']:.3f} FLOPs, action gap {result['l1']:.4f}; wrote {args.out}")


def register(sub, add) -> None:
    p = add("make-bag", cmd_make_bag, "write a synthetic, seeded episode as a rosbag2 on the node's topics")
    p.add_argument("out", help="new bag directory")
    p.add_argument("--steps", type=positive_int, default=60)
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--header-clock", type=float, default=None, metavar="SEC",
                   help="stamp headers on another clock starting at SEC (sim time, a device clock)")
    p.add_argument("--compression", choices=("none", "file", "message"), default="none", help="zstd compression")
    p.add_argument("--split", type=positive_int, default=1, metavar="N", help="write N storage files")
    p.add_argument("--image-format", choices=("raw", "jpeg"), default="raw",
                   help="sensor_msgs/Image or CompressedImage (JPEG)")
    p.add_argument("--encoding", choices=("rgb8", "bgr8", "mono8"), default="rgb8", help="raw image encoding")
    config_args(p)        # topics.* of --params / -p name the topics, as a robot's recording does

    p = add("replay", cmd_replay, "offline evaluation of a rosbag2 episode: pruned vs unpruned")
    p.add_argument("bag", help="rosbag2 directory (MCAP or sqlite3), or a storage file inside one")
    p.add_argument("--out", required=True, help="output directory (summary.json, steps.csv, plots, report.html)")
    config_args(p)
    p.add_argument("--model", help="checkpoint directory or tiny-random (overrides model_path)")
    p.add_argument("--no-compare", action="store_true", help="run only the pruned policy")
    p.add_argument("--output-bag", help="also write the predicted ActionChunk / PruningStats to this new bag")
    p.add_argument("--motion", choices=("predicted", "recorded"), default="predicted",
                   help="controller input: the previous prediction (paper) or the bag's recorded command")
    p.add_argument("--remap", action="append", metavar="NODE_TOPIC:=BAG_TOPIC",
                   help="read a node input from another topic (repeatable), e.g. "
                        "image_primary:=/camera/third_person/color/image_raw; same as -p topics.NAME:=TOPIC")
    p.add_argument("--start", type=float, default=0.0, metavar="SEC",
                   help="skip the first SEC seconds (from the first primary image)")
    p.add_argument("--duration", type=float, default=None, metavar="SEC", help="replay only SEC seconds")
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="stop after N steps")
    p.add_argument("--step-latency-ms", type=non_negative_float, default=0.0, metavar="MS",
                   help="the step time the node's after-step age rule assumes (default 0: an observation's "
                        "age is judged at its tick on the recorded timeline); never this host's speed, so a "
                        "bag gives the same steps on any machine")

    p = add("params", cmd_params, "validate a ROS parameter file and print every resolved knob")
    p.add_argument("params", nargs="?", help="config/*.yaml (action_node: ros__parameters: ...)")
    p.add_argument("-p", "--param", action="append", metavar="NAME:=VALUE",
                   help="override one parameter after the file (repeatable), as --ros-args -p does")

    p = add("bench", cmd_bench, "latency of pruned vs unpruned in one run on the same observations")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--model-config", choices=sorted(PRESETS), default=None,
                       help="random weights of this geometry (default: scaled)")
    group.add_argument("--model", help="a checkpoint directory (released layout) or tiny-random")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="default: the parameter file's, else auto")
    p.add_argument("--steps", type=positive_int, default=20, help="measured steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="steps run before measuring (default 3)")
    config_args(p)

    p = add("flops", cmd_flops, "LLM FLOPs of the default pruning schedule on the synthetic episode")
    p.add_argument("--model-config", choices=sorted(PRESETS), default="openvla-7b")
    p.add_argument("--steps", type=positive_int, default=60, help="episode length (default 60)")
    config_args(p)

    p = add("proxy", cmd_proxy, "offline proxy: how far each rule's action chunks are from the unpruned ones, on "
                                "recorded observations (seconds per rule)")
    source_args(p)
    p.add_argument("--model", help="checkpoint directory (default: the params file's model_path)")
    p.add_argument("--methods", default="specprune,random,fastv", help="rules as in sim eval (none is the reference)")
    p.add_argument("--budgets", metavar="A1,A2,...", help="alphas for the rules listed without one")
    p.add_argument("--closed-loop", metavar="RESULTS_JSON", help="a sim eval results.json: rank agreement of the "
                                                                 "proxy with its closed-loop success")
    p.add_argument("--oracle-blocks", type=positive_int, metavar="B", help="also the occlusion oracle: each camera in "
                   "B x B regions, each blanked in turn; how much of what moves the action each rule keeps")
    p.add_argument("--oracle-episodes", type=positive_int, default=2, help="episodes the oracle (and then the "
                                                                           "whole proxy) runs on (default 2)")
    p.add_argument("--out", help="write the result JSON here")
    config_args(p)

    p = add("calibrate", cmd_calibrate, "choose the pruning knobs for a checkpoint from its own recordings: layers, "
                                        "scoring queries, extensions and budget closest to unpruned at a FLOPs target")
    source_args(p)
    p.add_argument("--model", help="checkpoint directory (default: the params file's model_path)")
    p.add_argument("--target-flops", type=float, default=0.3, help="share of the unpruned LLM FLOPs (default 0.3)")
    p.add_argument("--out", required=True, help="the ROS parameter file to write (YAML)")
    config_args(p)

    p = add("write-tiny-checkpoint", cmd_write_tiny_checkpoint,
            "write a small random model in exactly the released checkpoint layout")
    p.add_argument("directory")
    p.add_argument("--seed", type=int, default=0)
