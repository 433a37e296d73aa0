"""The `specprune` command line (also `python -m specprune_ros`).

Errors print one line on stderr and exit non-zero; `--debug` shows the traceback instead.
`--json` prints exactly one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from .common.jsonout import finite
from .config import Config, ConfigError, model_params_file
from .model.config import PRESETS

DEMO_MODEL = "sim-tabletop"
# Unpruned, the default rule, the paper's literal rule and random tokens at the default's counts.
DEMO_METHODS = "none,specprune,specprune-paper@0.8,random"


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(finite(payload), sort_keys=True, allow_nan=False, default=str) if args.json else text)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _table(summary: dict) -> str:
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
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in lines)


def cmd_make_bag(args: argparse.Namespace) -> int:
    from .common.bags import Recording, write_synthetic_bag

    recording = Recording(storage=args.storage, topics=_config(args).topics if args.params or args.param else None,
                          header_clock_s=args.header_clock, compression=args.compression, split=args.split,
                          image_format=args.image_format, encoding=args.encoding)
    path = write_synthetic_bag(args.out, steps=args.steps, seed=args.seed, recording=recording)
    _emit(args, {"bag": str(path), "steps": args.steps, "storage": args.storage, "compression": args.compression,
                 "split": args.split, "image_format": args.image_format, "encoding": args.encoding},
          f"wrote a {args.steps}-step synthetic episode ({args.storage}) to {path}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .evaluation.replay import replay

    cfg = _config(args, args.model)
    for mapping in args.remap or ():
        name, sep, topic = mapping.partition(":=")
        if not sep or not name or not topic:
            raise ConfigError(f"--remap {mapping!r}: expected NODE_TOPIC:=BAG_TOPIC, e.g. "
                              f"image_primary:=/camera/color/image_raw")
        cfg = cfg.replace(**{f"topics.{name.lstrip('/')}": topic})
    summary = replay(args.bag, args.out, cfg, compare=not args.no_compare, output_bag=args.output_bag,
                     show_progress=not args.json and sys.stderr.isatty(), motion=args.motion,
                     start_s=args.start, duration_s=args.duration, max_steps=args.max_steps)
    _emit(args, summary, f"replayed {summary['steps']} steps of {args.bag}\n{_table(summary)}\n"
                         f"report: {summary['report']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The shipped sim model: closed loop unpruned, the default pruning, the paper's rule and random
    tokens, then a recorded episode replayed pruned (the default) vs unpruned."""
    import shutil

    from .common.methods import parse_methods
    from .common.progress import progress_bar
    from .evaluation.replay import replay
    from .model.checkpoint import SHIPPED_MODELS
    from .sim.env import seed_range
    from .sim.evaluate import TABLE_HEADER, evaluate, table_rows
    from .sim.record import record
    from .sim.train import PARAMS_FILE

    out = Path(args.out)
    interactive = not args.json and sys.stderr.isatty()
    model = Path(SHIPPED_MODELS[DEMO_MODEL])
    if not (model / PARAMS_FILE).is_file():
        raise ConfigError(f"{model}: the shipped {DEMO_MODEL} model is not in this checkout (train one with "
                          f"`specprune sim train`, see docs/sim.md)")
    cfg = Config.from_yaml(model / PARAMS_FILE).replace(model_path=DEMO_MODEL, device="cpu")
    seeds = list(seed_range("test"))[:args.episodes]
    show = progress_bar("closed loop", "episodes") if interactive else None
    closed = evaluate(cfg, parse_methods(DEMO_METHODS), seeds, out / "closed_loop", 1, show)
    if show:
        print(file=sys.stderr)
    bag = out / "sim_episode"
    if bag.exists():
        shutil.rmtree(bag)
    record(bag, cfg, 1, "test")
    summary = replay(bag, out / "replay", cfg, compare=True, show_progress=interactive)
    rows = [TABLE_HEADER[:6]] + [row[:6] for row in table_rows(closed["methods"])]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    text = "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)
    _emit(args, {"closed_loop": closed, "replay": summary},
          f"SpecPrune-VLA demo on the shipped sim-tabletop model (CPU)\n"
          f"closed loop, {len(seeds)} test episodes per method:\n{text}\n"
          f"replay of a recorded closed-loop episode ({bag}), pruned vs unpruned:\n{_table(summary)}\n"
          f"reports: {out / 'closed_loop' / 'report.html'}, {summary['report']}")
    return 0


def _config(args: argparse.Namespace, model: str | None = None) -> Config:
    """The model directory's own ``specprune.yaml``, then ``--params YAML`` (in order), then every
    ``-p name:=value`` (YAML values, as ``--ros-args -p`` reads them), then ``model`` - the layers
    the node applies."""
    params = getattr(args, "params", None) or []
    params = [params] if isinstance(params, str) else params       # `specprune params FILE` takes one
    overrides = {}
    for item in getattr(args, "param", None) or ():
        name, sep, text = item.partition(":=")
        if not sep or not name:
            raise ConfigError(f"-p {item!r}: expected name:=value, e.g. -p pruning.alpha:=0.6")
        try:
            overrides[name] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            overrides[name] = text
    if model is not None:
        overrides["model_path"] = model
    given = (Config.from_yaml_files(params) if params else Config()).replace(**overrides)
    own = model_params_file(given.node.model_path)
    if own is None:
        return given
    return Config.from_yaml_files([own, *params]).replace(**overrides)


def cmd_bench(args: argparse.Namespace) -> int:
    from .evaluation.bench import run_bench

    cfg = _config(args)
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
    _emit(args, result, text)
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from .evaluation.bench import run_flops

    result = run_flops(_config(args), args.model_config, args.steps)
    text = (f"{result['model_config']}: LLM FLOPs ratio {result['flops_ratio']:.3f} (mean over {result['steps']} "
            f"steps, {result['unpruned_steps']} unpruned), {result['tflops_pruned_mean']:.2f} vs "
            f"{result['tflops_unpruned']:.2f} TFLOP per step; vision tokens kept "
            f"{result['vision_tokens']['kept_mean']:.0f} / {result['vision_tokens']['total']}; "
            f"fine mode {100 * result['fine_mode_fraction']:.0f} % of steps")
    _emit(args, result, text)
    return 0


def cmd_transport_check(args: argparse.Namespace) -> int:
    from .ros.transport_check import measure

    width, height = _size(args.size)
    segments = tuple(s.strip() for s in args.segment_mib.split(","))
    for s in segments:
        if s != "default" and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", s):
            raise ConfigError(f"--segment-mib: {s!r} is neither 'default' nor a size in MiB")
    result = measure((width, height), args.hz, args.seconds, args.cameras, segments)
    lines = [f"{args.cameras} x {width}x{height} rgb8 ({result['frame_mib']:.2f} MiB per frame) at {args.hz:g} Hz "
             f"for {args.seconds:g} s, publisher and subscriber in two processes:"]
    for r in result["results"]:
        segment = r["segment_mib"]
        name = "Fast DDS default (512 KiB)" if segment is None else f"profile, {segment:g} MiB segment"
        cams = ", ".join(f"{c['received']}/{c['sent']}" for c in r["cameras"])
        lines.append(f"  {name:28s} frames received {cams}  lost {100 * r['loss']:.1f} %")
    _emit(args, result, "\n".join(lines))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    return width, height


def cmd_node_soak(args: argparse.Namespace) -> int:
    from .ros.node_soak import soak
    from .ros.transport_check import PROFILE

    r = soak(args.minutes, args.camera_hz, _size(args.size), args.encoding, args.control_hz, args.model,
             None if args.no_profile else str(PROFILE), args.plot, args.scene)
    pruning = r["pruning"]
    lines = [f"node soak: {args.minutes:g} min, 2 x {args.size} {args.encoding} at {args.camera_hz:g} Hz "
             f"({args.scene} scene), joint "
             f"states at 100 Hz, control {args.control_hz:g} Hz, model {args.model}, DDS profile "
             f"{'off' if args.no_profile else 'on'}",
             f"  chunks {r['chunks']} ({r['chunks_per_s']:.2f}/s), dropped ticks {100 * r['dropped_share']:.2f} % "
             f"{r['dropped'] or ''}",
             f"  vision tokens kept {pruning['tokens_kept_mean']:.0f} on average, unpruned steps "
             f"{100 * pruning['unpruned_share']:.1f} % {pruning['fallbacks'] or ''}",
             f"  RSS {r['rss_mb_first']:.1f} -> {r['rss_mb_last']:.1f} MB, threads {r['threads']}",
             f"  exit on SIGINT: code {r['exit']['code']} after {r['exit']['seconds']:.2f} s, "
             f"{len(r['exit']['error_lines'])} ERROR line(s)",
             "  minute  chunks/s  policy p50 ms  chunk age p50/p95 ms  RSS MB  threads"]
    for m in r["per_minute"]:
        lines.append(f"  {m['minute']:6d}  {m['chunks_per_s']:8.2f}  {m['latency_ms_p50']:13.1f}  "
                     f"{m['chunk_age_ms_p50']:9.1f} / {m['chunk_age_ms_p95']:6.1f}  {m['rss_mb']:6.1f}  "
                     f"{m['threads']:7d}")
    _emit(args, r, "\n".join(lines))
    return 0


def cmd_node_latency(args: argparse.Namespace) -> int:
    from .ros.node_latency import measure

    r = measure(args.chunks, args.camera_hz, args.control_hz, args.model, args.device)
    _emit(args, r, f"action node over DDS, {r['model']} on {r['device']}, {r['chunks']} chunks, camera "
                   f"{r['camera_hz']:g} Hz, control {r['control_hz']:g} Hz (medians):\n"
                   f"  observation stamp -> chunk received  {r['end_to_end_ms']['p50']:.1f} ms "
                   f"(p95 {r['end_to_end_ms']['p95']:.1f})\n"
                   f"  = observation age at step start     {r['observation_age_at_step_ms']['p50']:.1f} ms\n"
                   f"  + policy step                       {r['policy_step_ms']['p50']:.1f} ms\n"
                   f"  + node (publish, DDS delivery)      {r['node_overhead_ms']['p50']:.1f} ms")
    return 0


def cmd_write_tiny_checkpoint(args: argparse.Namespace) -> int:
    from .model.checkpoint import write_tiny_checkpoint

    path = write_tiny_checkpoint(args.directory, seed=args.seed)
    files = sorted(p.name for p in path.iterdir())
    _emit(args, {"path": str(path), "files": files}, f"wrote a tiny OpenVLA-OFT checkpoint to {path}:\n  "
          + "\n  ".join(files))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from .ros.action_node import main as node_main

    return node_main(["specprune-node", *args.ros_args])


def cmd_executor(args: argparse.Namespace) -> int:
    from .ros.chunk_executor import main as executor_main

    return executor_main(["specprune-executor", *args.ros_args])


def cmd_sim_robot(args: argparse.Namespace) -> int:
    from .ros.sim_robot import main as robot_main

    return robot_main(args.robot_args)


def cmd_params(args: argparse.Namespace) -> int:
    """Validate a parameter file (or the defaults) and print the resolved parameters."""
    cfg = _config(args)
    if args.json:
        _emit(args, cfg.flat(), "")
    else:
        print(cfg.to_ros_yaml(), end="")
    return 0


def cmd_sim_bench(args: argparse.Namespace) -> int:
    from .sim.collect import bench

    r = bench(args.steps)
    _emit(args, r, f"tabletop env, {r['cameras']} cameras at {r['image_size']} px: "
                   f"{r['steps_per_s_with_cameras']:.1f} steps/s ({r['steps_per_s_physics_only']:.0f} physics only)")
    return 0


def cmd_sim_collect(args: argparse.Namespace) -> int:
    from .common.progress import progress_bar
    from .sim.collect import collect

    show = progress_bar("collect") if not args.json and sys.stderr.isatty() else None
    index = collect(args.out, args.episodes, args.split, args.start, progress=show, policy=args.policy,
                    layout=args.layout)
    if show:
        print(file=sys.stderr)
    kept = len(index["episodes"])
    summary = {"out": args.out, "episodes": kept, "attempted": index["attempted"], "failed": len(index["failed"])}
    if args.policy:
        wins = sum(bool(e.get("success")) for e in index["episodes"])
        _emit(args, {**summary, "policy": args.policy, "policy_successes": wins},
              f"{kept} episodes of {args.policy} labeled by the expert in {args.out} (the model succeeded in {wins})")
    else:
        _emit(args, summary,
              f"{kept} expert demonstrations in {args.out} ({len(index['failed'])} failed episodes skipped)")
    return 0


def cmd_sim_train(args: argparse.Namespace) -> int:
    from .common.progress import progress_bar
    from .sim.train import TrainConfig, Trainer

    interactive = not args.json and sys.stderr.isatty()

    bar = progress_bar("train", "steps")

    def show(step: int, total: int, loss: float) -> None:
        text = f"loss {loss:.4f}" + (f" aux {trainer.aux_losses[-1]:.4f}" if trainer.aux_losses else "")
        if interactive:
            bar(step, total, text)
        elif step % 50 == 0 or step == total:          # a log file (background run): one line per 50 steps
            print(f"step {step}/{total} {text}", file=sys.stderr, flush=True)

    given = {k: getattr(args, k) for k in ("steps", "batch", "lr", "seed", "checkpoint_every", "aux_weight")}
    config = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    trainer = Trainer(args.data, args.out, config, progress=None if args.json else show, init=args.init,
                      device=args.device)
    resumed = trainer.resume()
    if resumed and interactive:
        print(f"resuming at step {trainer.step} from {args.out}", file=sys.stderr)
    summary = trainer.train()
    if interactive:
        print(file=sys.stderr)
    _emit(args, summary, f"trained {summary['steps']} steps on {summary['episodes']} demonstrations in "
                         f"{summary['seconds'] / 60:.1f} min; loss {summary['loss_first']:.4f} -> "
                         f"{summary['loss_last']:.4f}; model: {summary['model']}")
    return 0


def cmd_sim_export(args: argparse.Namespace) -> int:
    from .sim.train import export

    path = export(args.run, args.out, args.data)
    _emit(args, {"model": str(path)}, f"wrote the model of {args.run} to {path}")
    return 0


def cmd_sim_eval(args: argparse.Namespace) -> int:
    from .common.methods import parse_budgets, parse_methods, parse_seeds
    from .common.progress import progress_bar
    from .sim.env import seed_range
    from .sim.evaluate import TABLE_HEADER, evaluate, table_rows

    cfg = _config(args, args.model)
    methods = parse_methods(args.methods, parse_budgets(args.budgets) if args.budgets else None)
    seeds = parse_seeds(args.seeds) if args.seeds else list(seed_range(args.split))[:args.episodes]
    show = progress_bar("eval", "episodes") if not args.json and sys.stderr.isatty() else None
    runner = None
    if args.through_ros:
        from .ros.sim_stack import ThroughRos
        from .sim.rollout import CHUNK_EXECUTED

        if not any(item.startswith("control_rate_hz:=") for item in args.param or ()):
            # the in-process episodes query once per executed chunk: the same here, unless told otherwise
            cfg = cfg.replace(control_rate_hz=1.0 / (CHUNK_EXECUTED * cfg.node.action_dt))
        runner = ThroughRos(args.out, args.workers, args.clock, layout=args.layout)
    result = evaluate(cfg, methods, seeds, args.out, args.workers, show, layout=args.layout, runner=runner)
    if show:
        print(file=sys.stderr)
    rows = [TABLE_HEADER] + table_rows(result["methods"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)
    _emit(args, result, f"closed loop on {len(seeds)} {result['split']} seeds per method "
                        f"({seeds[0]}-{seeds[-1]}), {args.model}:\n{text}\n"
                        f"report: {args.out}/report.html")
    return 0


def cmd_sim_probe(args: argparse.Namespace) -> int:
    from .common.progress import progress_bar
    from .sim.env import seed_range
    from .sim.probe import first_chunk_sensitivity

    cfg = _config(args, args.model)
    seeds = list(seed_range(args.split))[:args.episodes]
    show = progress_bar("probe", "episodes") if not args.json and sys.stderr.isatty() else None
    r = first_chunk_sensitivity(cfg, seeds, args.layout, args.shift / 1000, show)
    if show:
        print(file=sys.stderr)
    _emit(args, r, f"first chunk's xy motion of {args.model} on {len(seeds)} {args.split} seeds "
                   f"({args.layout} layout), unpruned:\n"
                   f"  proprio moved {r['shift_mm']:.0f} mm:   it changes by {r['proprio_change_mm']:.1f} mm "
                   f"(the target, seen from the gripper, moved {r['shift_mm']:.0f} mm)\n"
                   f"  another episode's images: it changes by {r['image_change_mm']:.1f} mm "
                   f"(the named object lies {r['target_change_mm']:.1f} mm elsewhere there)")
    return 0


def cmd_sim_record(args: argparse.Namespace) -> int:
    from .common.progress import progress_bar
    from .sim.record import record

    cfg = _config(args, args.model)
    show = progress_bar("record") if not args.json and sys.stderr.isatty() else None
    r = record(args.bag, cfg, args.episodes, args.split, show, args.layout)
    if show:
        print(file=sys.stderr)
    _emit(args, r, f"recorded {len(r['episodes'])} closed-loop episodes ({r['successes']} successful) to {r['bag']}")
    return 0


def proxy_episodes(args: argparse.Namespace, cfg: Config, loaded, show) -> list:
    """The proxy's and calibration's observation sequences: a bag's, or unpruned sim episodes'."""
    from .common.methods import parse_seeds
    from .evaluation.proxy import observations_from_bag
    from .policy import SpecPrunePolicy

    if args.bag:
        return observations_from_bag(args.bag, cfg, loaded.model.proprio_projector is not None)
    from .sim.env import TabletopEnv
    from .sim.rollout import recorded_observations

    env = TabletopEnv(layout=args.layout)
    try:
        unpruned = SpecPrunePolicy(loaded, cfg.replace(**{"pruning.enabled": False}))
        return recorded_observations(env, unpruned, parse_seeds(args.sim_seeds), show)
    finally:
        env.close()


def _recorded_model(args: argparse.Namespace) -> tuple[Config, Any, list, bool]:
    """proxy / calibrate: the configuration, the loaded model, the observation sequences, and
    whether progress bars are shown."""
    from .common.progress import progress_bar
    from .policy import load_model

    cfg = _config(args, args.model)
    loaded = load_model(cfg)
    interactive = not args.json and sys.stderr.isatty()
    episodes = proxy_episodes(args, cfg, loaded, progress_bar("recording", "episodes") if interactive else None)
    if interactive:
        print(file=sys.stderr)
    return cfg, loaded, episodes, interactive


def cmd_proxy(args: argparse.Namespace) -> int:
    from .common.jsonout import finite
    from .common.methods import parse_budgets, parse_methods
    from .common.progress import progress_bar
    from .evaluation.proxy import action_gap, occlusion_importance, rank_agreement

    methods = [m for m in parse_methods(args.methods, parse_budgets(args.budgets) if args.budgets else None)
               if m.name != "none"]
    cfg, loaded, episodes, interactive = _recorded_model(args)
    node = cfg.node
    oracle = None
    if args.oracle_blocks:
        oracle = occlusion_importance(loaded, cfg, episodes[:args.oracle_episodes], args.oracle_blocks,
                                      progress_bar("oracle", "observations") if interactive else None)
        episodes = episodes[:args.oracle_episodes]
        if interactive:
            print(file=sys.stderr)
    points = action_gap(loaded, cfg, episodes, methods, progress_bar("proxy", "rules") if interactive else None,
                        oracle=oracle)
    if interactive:
        print(file=sys.stderr)
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
    _emit(args, result, f"action gap from unpruned over {result['steps']} steps ({result['source']}):\n{text}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .common.progress import progress_bar
    from .evaluation.calibrate import calibrate, params_yaml

    if not 0.05 <= args.target_flops <= 1.0:          # before minutes of recording
        raise ConfigError(f"--target-flops {args.target_flops:g}: must lie in [0.05, 1] (a share of the unpruned "
                          f"LLM FLOPs)")
    cfg, loaded, episodes, interactive = _recorded_model(args)
    node = cfg.node
    result = calibrate(loaded, cfg, episodes, args.target_flops, progress_bar("calibrate", "runs") if interactive
                       else None)
    if interactive:
        print(file=sys.stderr)
    Path(args.out).write_text(params_yaml(result, node.model_path))
    knobs = ", ".join(f"{k} {v}" for k, v in result["knobs"].items())
    _emit(args, {**result, "out": args.out},
          f"calibrated on {result['steps']} steps for {result['target_flops']:.2f} LLM FLOPs: {knobs}\n"
          f"proxy: {result['flops_ratio']:.3f} FLOPs, action gap {result['l1']:.4f}; wrote {args.out}")
    return 0


def source_args(p: argparse.ArgumentParser) -> None:
    """Where the proxy's observation sequences come from."""
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--bag", help="a rosbag2 with the node's topics (cameras, joint states, instruction)")
    group.add_argument("--sim-seeds", metavar="A:B", help="closed-loop sim episodes of the unpruned model on seeds "
                                                         "A .. B-1 (validation: 100000:101000)")
    layout_arg(p)


def config_args(p: argparse.ArgumentParser) -> None:
    """The one way every subcommand takes its knobs: the node's parameter file, then overrides."""
    p.add_argument("--params", action="append", help="the node's ROS parameter file (config/*.yaml); repeat to "
                                                      "layer files, later ones overriding earlier ones")
    p.add_argument("-p", "--param", action="append", metavar="NAME:=VALUE",
                   help="override one parameter after --params (repeatable), as --ros-args -p does, "
                        "e.g. -p pruning.alpha:=0.6")


def layout_arg(p: argparse.ArgumentParser) -> None:
    """The sim task's layout (``sim.LAYOUTS``: the package's constants, no MuJoCo import)."""
    from .sim import DEFAULT_LAYOUT, LAYOUTS

    p.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT,
                   help="fixed-start: every shape at its own slot, the gripper starting at its home pose (the "
                        "default, the shipped model's); fixed: the same with the start jittered +-3 cm; shuffled: "
                        "shapes shuffled among the slots, the target found by colour and shape in the image")


def _adder(subparsers) -> Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]:
    """Subcommands all take --json and run ``func``."""
    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.set_defaults(func=func)
        return p
    return add


def build_parser() -> argparse.ArgumentParser:
    from .common.methods import VARIANTS

    parser = argparse.ArgumentParser(prog="specprune", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = _adder(sub)

    p = add("demo", cmd_demo, "the shipped sim model: closed loop pruned vs unpruned, then replay of a recorded "
                               "episode")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out/)")
    p.add_argument("--episodes", type=positive_int, default=6, help="closed-loop test episodes per method")

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
    p = add("params", cmd_params, "validate a ROS parameter file and print every resolved knob")
    p.add_argument("params", nargs="?", help="config/*.yaml (action_node: ros__parameters: ...)")
    p.add_argument("-p", "--param", action="append", metavar="NAME:=VALUE",
                   help="override one parameter after the file (repeatable), as --ros-args -p does")

    p = sub.add_parser("node", help="start the action node (as `ros2 run specprune_ros action_node`)",
                       description="start the action node; arguments after `node` go to ROS (--ros-args ...)")
    p.add_argument("ros_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_node, json=False)

    p = sub.add_parser("executor", help="start the chunk executor (as `ros2 run specprune_ros chunk_executor`)",
                       description="start the chunk executor; arguments after `executor` go to ROS (--ros-args ...)")
    p.add_argument("ros_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_executor, json=False)

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

    p = add("transport-check", cmd_transport_check,
            "camera frames lost between two processes over DDS, per Fast DDS shared-memory segment size")
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the rgb8 frames")
    p.add_argument("--hz", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--cameras", type=positive_int, default=2)
    p.add_argument("--segment-mib", default="default,8,32",
                   help="comma-separated: 'default' (no profile) and/or segment sizes in MiB of the shipped profile")
    p = add("node-soak", cmd_node_soak, "the node under a robot's load over DDS for minutes: memory, rate, drops, "
                                         "latency, exit")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--camera-hz", type=float, default=30.0)
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of both cameras")
    p.add_argument("--encoding", choices=("rgb8", "bgr8", "mono8"), default="rgb8")
    p.add_argument("--scene", choices=("moving", "noise"), default="moving",
                   help="what the cameras show: a moving pick-and-place scene, or random noise (every step a "
                        "scene cut: SpecPrune falls back to the unpruned step, the worst case)")
    p.add_argument("--control-hz", type=float, default=10.0)
    p.add_argument("--model", default="tiny-random", help="model_path of the node")
    p.add_argument("--no-profile", action="store_true",
                   help="Fast DDS defaults instead of config/fastdds_large_data.xml")
    p.add_argument("--plot", help="PNG of rate and latency over time")
    p = add("node-latency", cmd_node_latency, "end-to-end latency of the action node over DDS with a synthetic robot")
    p.add_argument("--chunks", type=positive_int, default=40)
    p.add_argument("--camera-hz", type=float, default=20.0)
    p.add_argument("--control-hz", type=float, default=5.0)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")

    sim = sub.add_parser("sim", help="the simulated tabletop task (MuJoCo): bench, collect, train, export, probe, "
                                     "record, eval",
                         description="the simulated tabletop task (MuJoCo, Gymnasium API)")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")

    add_sim = _adder(sim_sub)

    q = add_sim("bench", cmd_sim_bench, "environment steps per second with both cameras rendered")
    q.add_argument("--steps", type=positive_int, default=200)
    q = add_sim("collect", cmd_sim_collect, "scripted-expert demonstrations (resumable)")
    q.add_argument("out", help="demonstration directory (index.json + episode_<seed>.npz)")
    q.add_argument("--episodes", type=positive_int, default=100, help="successful episodes wanted (with --policy: "
                                                                         "episodes)")
    q.add_argument("--split", choices=("train", "validation", "test"), default="train")
    q.add_argument("--start", type=int, default=0, help="first seed's offset in the split (e.g. past the seeds of "
                                                        "another directory)")
    q.add_argument("--policy", help="DAgger: a checkpoint drives each episode and the expert labels every state it "
                                    "visits (all episodes kept)")
    layout_arg(q)
    q = add_sim("train", cmd_sim_train, "train the small OpenVLA-OFT model on demonstrations (resumable)")
    q.add_argument("data", nargs="+", help="demonstration directories (sim collect; expert and DAgger rounds)")
    q.add_argument("--out", required=True, help="run directory: train_state.pt, loss.png, train.json, model/")
    # Defaults live in sim.train.TrainConfig (not imported here: it needs torch).
    q.add_argument("--steps", type=positive_int, help="optimizer steps (default: TrainConfig's)")
    q.add_argument("--batch", type=positive_int, help="samples per optimizer step")
    q.add_argument("--lr", type=float, help="peak learning rate (warm-up, then cosine)")
    q.add_argument("--seed", type=int)
    q.add_argument("--checkpoint-every", type=positive_int)
    q.add_argument("--aux-weight", type=float, help="weight of the auxiliary loss locating the named object and "
                                                    "receptacle (privileged simulator state; 0: action loss only)")
    q.add_argument("--init", help="another run's train_state.pt to start from (its weights; a fresh optimizer "
                                  "and schedule); ignored when --out already holds a state to resume")
    q.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model trains and the demonstrations' frames live (cuda: ~0.3 MB of GPU "
                        "memory per sample)")
    q = add_sim("export", cmd_sim_export, "a training run's current model as a checkpoint (also while it trains)")
    q.add_argument("run", help="run directory of sim train (train_state.pt)")
    q.add_argument("--data", nargs="+", help="its demonstration directories, to recompute the dataset statistics "
                                             "(default: the run's own dataset_statistics.json)")
    q.add_argument("--out", required=True, help="checkpoint directory to write")
    q = add_sim("probe", cmd_sim_probe, "does a model use its proprio and images? its first chunk under moved "
                                        "proprio and swapped images")
    q.add_argument("--model", required=True, help="checkpoint directory (released layout)")
    q.add_argument("--episodes", type=positive_int, default=6,
                   help="first queries probed (at least 2: images are swapped between them)")
    q.add_argument("--split", choices=("train", "validation", "test"), default="test")
    q.add_argument("--shift", type=float, default=50.0, help="proprio shift in mm along +-x and +-y")
    layout_arg(q)
    config_args(q)
    q = add_sim("record", cmd_sim_record, "closed-loop episodes of a model as a rosbag2 on the node's topics")
    q.add_argument("bag", help="new bag directory")
    q.add_argument("--model", required=True, help="checkpoint directory or tiny-random")
    q.add_argument("--episodes", type=positive_int, default=3)
    q.add_argument("--split", choices=("train", "validation", "test"), default="test")
    layout_arg(q)
    config_args(q)
    q = sim_sub.add_parser("robot", help="the task as a robot on ROS 2 (cameras, joint states, /clock; moves by "
                                         "the chunk executor's commands)",
                           description="the task as a robot on ROS 2; see `specprune sim robot --seeds 0:1 --help`")
    q.add_argument("robot_args", nargs=argparse.REMAINDER, help="--seeds A:B [--clock lockstep|realtime] "
                                                                "[--log FILE] [--ros-args ...]")
    q.set_defaults(func=cmd_sim_robot, json=False)
    q = add_sim("eval", cmd_sim_eval, "closed-loop success of a model on the task's seeds, pruned and unpruned")
    q.add_argument("--model", required=True, help="checkpoint directory (released layout), e.g. sim train's model/")
    q.add_argument("--episodes", type=positive_int, default=50)
    q.add_argument("--split", choices=("train", "validation", "test"), default="test")
    q.add_argument("--seeds", metavar="A:B", help="seeds A .. B-1 instead of --split / --episodes (validation: "
                                                  "100000:101000, test: 101000:102000)")
    q.add_argument("--methods", default="none,specprune@0.8",
                   help="comma-separated name[@alpha]: none, specprune, random, fastv (R matched to specprune@alpha, "
                        "which must be listed too), or a variant of specprune: " + ", ".join(VARIANTS))
    q.add_argument("--budgets", metavar="A1,A2,...", help="budget sweep: every method listed without @alpha runs at "
                                                         "each of these alphas, on the same seeds")
    q.add_argument("--workers", type=positive_int, default=1, help="episodes in parallel processes (--through-ros: "
                                                                    "robots side by side, /robot1, /robot2, ...)")
    q.add_argument("--through-ros", action="store_true",
                   help="run every episode through the ROS 2 stack: the sim robot, the action node and the chunk "
                        "executor in their own processes over DDS (queries once per executed chunk unless "
                        "-p control_rate_hz:=... says otherwise)")
    q.add_argument("--clock", choices=("lockstep", "realtime"), default="lockstep",
                   help="--through-ros: lockstep (sim time held until each period's command: deterministic) or "
                        "realtime (the robot steps every action_dt of wall time)")
    layout_arg(q)
    q.add_argument("--out", default="sim_eval", help="output directory: results.json, episodes.csv, plots, "
                                                     "report.html")
    config_args(q)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The ROS processes own their arguments (--ros-args ...), which argparse would reject.
    passthrough = {("node",): lambda rest: cmd_node(argparse.Namespace(ros_args=rest)),
                   ("executor",): lambda rest: cmd_executor(argparse.Namespace(ros_args=rest)),
                   ("sim", "robot"): lambda rest: cmd_sim_robot(argparse.Namespace(robot_args=rest))}
    for prefix, command in passthrough.items():
        rest = argv[len(prefix):]
        if tuple(argv[:len(prefix)]) == prefix and "--help" not in rest[:1] and "-h" not in rest[:1]:
            try:
                return command(rest)
            except KeyboardInterrupt:          # Ctrl-C while torch imports: a clean exit
                return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ConfigError, FileNotFoundError, ValueError, OSError, ImportError) as exc:
        if args.debug:
            raise
        print(f"specprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"specprune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
