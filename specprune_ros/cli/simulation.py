"""The simulated tabletop task's commands (`specprune sim ...`) and the demo."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import Config, ConfigError
from ..sim import CAMERAS
from .offline import replay_table
from .shared import CliError, Progress, Result, adder, config_args, config_from_args, layout_arg, positive_int

DEMO_MODEL = "sim-tabletop"
# Unpruned, the default rule, the paper's literal rule and random tokens at the default's counts.
DEMO_METHODS = "none,specprune,specprune-paper@0.8,random"


def cmd_demo(args: argparse.Namespace) -> int:
    """The shipped sim model: closed loop unpruned, the default pruning, the paper's rule and random
    tokens, then a recorded episode replayed pruned (the default) vs unpruned."""
    import shutil

    from ..common.methods import parse_methods
    from ..evaluation.replay import replay
    from ..model.checkpoint import SHIPPED_MODELS
    from ..sim.env import seed_range
    from ..sim.evaluate import TABLE_HEADER, evaluate, table_rows
    from ..sim.record import record
    from ..sim.train import PARAMS_FILE

    out = Path(args.out)
    model = Path(SHIPPED_MODELS[DEMO_MODEL])
    if not (model / PARAMS_FILE).is_file():
        raise ConfigError(f"{model}: the shipped {DEMO_MODEL} model is not in this checkout (train one with "
                          f"`specprune sim train`, see docs/sim.md)")
    cfg = Config.from_yaml(model / PARAMS_FILE).replace(model_path=DEMO_MODEL, device="cpu")
    seeds = list(seed_range("test"))[:args.episodes]
    with Progress(args) as progress:
        closed = evaluate(cfg, parse_methods(DEMO_METHODS), seeds, out / "closed_loop", 1,
                          progress.bar("closed loop", "episodes"))
    bag = out / "sim_episode"
    if bag.exists():
        shutil.rmtree(bag)
    record(bag, cfg, 1, "test")
    summary = replay(bag, out / "replay", cfg, compare=True, show_progress=Progress(args).shown)
    rows = [TABLE_HEADER[:6]] + [row[:6] for row in table_rows(closed["methods"])]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    text = "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)
    return Result({"closed_loop": closed, "replay": summary},
          f"SpecPrune-VLA demo on the shipped sim-tabletop model (CPU)\n"
          f"closed loop, {len(seeds)} test episodes per method:\n{text}\n"
          + (f"  {closed['timing_note']}\n" if closed["timing_note"] else "") +
          f"replay of a recorded closed-loop episode ({bag}), pruned vs unpruned:\n{replay_table(summary)}\n"
          f"reports: {out / 'closed_loop' / 'report.html'}, {summary['report']}")


def cmd_sim_bench(args: argparse.Namespace) -> int:
    from ..sim.collect import bench

    r = bench(args.steps)
    return Result(r, f"tabletop env, {r['cameras']} cameras at {r['image_size']} px: "
                   f"{r['steps_per_s_with_cameras']:.1f} steps/s ({r['steps_per_s_physics_only']:.0f} physics only)")


def cmd_sim_collect(args: argparse.Namespace) -> int:
    from ..sim.collect import collect

    with Progress(args) as progress:
        index = collect(args.out, args.episodes, args.split, args.start, progress=progress.bar("collect"),
                        policy=args.policy, layout=args.layout)
    kept = len(index["episodes"])
    summary = {"out": args.out, "episodes": kept, "attempted": index["attempted"], "failed": len(index["failed"])}
    if args.policy:
        wins = sum(bool(e.get("success")) for e in index["episodes"])
        return Result({**summary, "policy": args.policy, "policy_successes": wins},
              f"{kept} episodes of {args.policy} labeled by the expert in {args.out} (the model succeeded in {wins})")
    else:
        return Result(summary,
              f"{kept} expert demonstrations in {args.out} ({len(index['failed'])} failed episodes skipped)")


def cmd_sim_train(args: argparse.Namespace) -> int:
    from ..sim.train import TrainConfig, Trainer

    progress = Progress(args)
    interactive = progress.shown
    bar = progress.bar("train", "steps")

    def show(step: int, total: int, loss: float) -> None:
        text = f"loss {loss:.4f}" + (f" aux {trainer.aux_losses[-1]:.4f}" if trainer.aux_losses else "") \
            + (f" grounding {trainer.grounding_losses[-1]:.4f}" if trainer.grounding_losses else "")
        if bar is not None:
            bar(step, total, text)
        elif step % 50 == 0 or step == total:          # a log file (background run): one line per 50 steps
            print(f"step {step}/{total} {text}", file=sys.stderr, flush=True)

    given = {k: getattr(args, k) for k in ("steps", "batch", "lr", "seed", "checkpoint_every", "aux_weight",
                                       "grounding_weight", "grounding_layer", "aux_questions", "ema", "keep_every")}
    config = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    trainer = Trainer(args.data, args.out, config, progress=None if args.json else show, init=args.init,
                      device=args.device)
    resumed = trainer.resume()
    if resumed and interactive:
        print(f"resuming at step {trainer.step} from {args.out}", file=sys.stderr)
    with progress:
        summary = trainer.train()
    return Result(summary, f"trained {summary['steps']} steps on {summary['episodes']} demonstrations in "
                         f"{summary['seconds'] / 60:.1f} min; loss {summary['loss_first']:.4f} -> "
                         f"{summary['loss_last']:.4f}; model: {summary['model']}")


def cmd_sim_export(args: argparse.Namespace) -> int:
    from ..sim.train import export

    path = export(args.run, args.out, args.data)
    return Result({"model": str(path)}, f"wrote the model of {args.run} to {path}")


def cmd_sim_eval(args: argparse.Namespace) -> int:
    from ..common.methods import parse_budgets, parse_methods, parse_seeds
    from ..latency import parse_latency
    from ..sim.env import seed_range
    from ..sim.evaluate import evaluate, format_table

    cfg = config_from_args(args, args.model)
    methods = parse_methods(args.methods, parse_budgets(args.budgets) if args.budgets else None)
    seeds = parse_seeds(args.seeds) if args.seeds else list(seed_range(args.split))[:args.episodes]
    runner = None
    if args.through_ros and args.freeze_camera:
        raise CliError("--freeze-camera: in process only (the ROS stack's robot publishes what it renders); "
                         "drop --through-ros")
    if args.through_ros and args.latency and args.clock != "lockstep":
        raise CliError("--latency: the delay clock runs on simulated time (in process, or through ROS with --clock "
                       "lockstep); --clock realtime measures the stack's own latency")
    latency = parse_latency(args.latency) if args.latency else None
    cfg, execute = _query_rate(cfg, args)
    if args.through_ros:
        from ..ros.sim_stack import ThroughRos

        runner = ThroughRos(args.out, args.workers, args.clock, layout=args.layout, latency=latency)
    with Progress(args) as progress:
        result = evaluate(cfg, methods, seeds, args.out, args.workers, progress.bar("eval", "episodes"),
                          layout=args.layout, runner=runner, frozen=tuple(args.freeze_camera or ()),
                          latency=latency, execute=execute)
    text = format_table(result["methods"])
    return Result(result, f"closed loop on {len(seeds)} {result['split']} seeds per method "
                        f"({seeds[0]}-{seeds[-1]}), {args.model}:\n{text}\n"
                        + ("" if latency is None else _delay_lines(latency, result["methods"]))
                        + (_realtime_lines(result["methods"]) if args.through_ros and args.clock == "realtime" else "")
                        + (f"{result['timing_note']}\n" if result["timing_note"] else "")
                        + f"report: {args.out}/report.html")


def _query_rate(cfg, args: argparse.Namespace):
    """One query per executed chunk (``control_rate_hz`` = 1 / (8 x action_dt), as OFT runs on
    LIBERO) unless ``-p control_rate_hz:=...`` says otherwise: then a query every that many
    actions (re-planning), in process a whole number of them. Returns (config, actions per query)."""
    from ..sim.env import CHUNK_EXECUTED

    dt = cfg.node.action_dt
    if not any(item.startswith("control_rate_hz:=") for item in args.param or ()):
        return cfg.replace(control_rate_hz=1.0 / (CHUNK_EXECUTED * dt)), CHUNK_EXECUTED
    actions = 1.0 / (cfg.node.control_rate_hz * dt)
    if not args.through_ros and (abs(actions - round(actions)) > 1e-6 or not 1 <= round(actions) <= CHUNK_EXECUTED):
        raise CliError(f"control_rate_hz {cfg.node.control_rate_hz:g}: in process a query every whole number of "
                       f"actions, 1 to {CHUNK_EXECUTED} (at action_dt {dt:g} s: e.g. 1.25 Hz = every 8, 2.5 Hz = "
                       f"every 4); this is every {actions:.3g}")
    return cfg, round(actions) if not args.through_ros else None


def _realtime_lines(methods: dict) -> str:
    """Real time through ROS: whether the robot kept its period (a figure whose period overran by
    more than 5 % is not a real-time one), and how the chunks landed."""
    lines = ["real time through ROS (wall clock):"]
    for label, s in methods.items():
        period = s["robot_period_s_mean"]
        lines.append(f"  {label}: achieved robot period {period:.4f} s ({s['late_periods_per_episode']:.2f} late "
                     f"periods per episode), {s['holds_per_episode']:.1f} holds per episode "
                     f"({s['start_holds_per_episode']:.1f} before the first action), "
                     f"{s['skipped_actions_per_episode']:.1f} skipped actions, the observation behind an action "
                     f"{1000 * s['chunk_age_s_mean']:.0f} ms old (p95 {1000 * s['chunk_age_s_p95']:.0f})")
    return "\n".join(lines) + "\n"


def _delay_lines(latency, methods: dict) -> str:
    lines = [f"delay clock, emulated latency {latency.name} ({latency.source}):"]
    for label, s in methods.items():
        lines.append(f"  {label}: {s['emulated_latency_ms_mean']:.0f} ms per step (emulated), "
                     f"{s['holds_per_episode']:.1f} holds and {s['skipped_actions_per_episode']:.1f} skipped actions "
                     f"per episode, the observation behind an action {1000 * s['chunk_age_s_mean']:.0f} ms old"
                     + ("" if "handover_step_mm_mean" not in s else
                        f", the commanded translation steps {s['handover_step_mm_mean']:.2f} mm at a hand-over "
                        f"({s['within_chunk_step_mm_mean']:.2f} within a chunk)"))
    return "\n".join(lines) + "\n"


def cmd_sim_probe(args: argparse.Namespace) -> int:
    from ..sim.env import seed_range
    from ..sim.probe import attention_on_target, first_chunk_sensitivity, layout_need

    cfg = config_from_args(args, args.model)
    seeds = list(seed_range(args.split))[:args.episodes]
    with Progress(args) as progress:
        r = first_chunk_sensitivity(cfg, seeds, args.layout, args.shift / 1000, progress.bar("probe", "episodes"),
                                    args.object_shift / 1000)
        need = layout_need(list(seed_range(args.split))[:args.need_episodes], args.layout) \
            if args.need_episodes else None
        looks = attention_on_target(cfg, seeds[:args.attention_episodes], args.layout,
                                    progress.bar("attention", "episodes")) if args.attention_episodes else None
    r["layout_need"], r["attention"] = need, looks
    return Result(r, f"first chunk's xy motion of {args.model} on {len(seeds)} {args.split} seeds "
                   f"({args.layout} layout), unpruned:\n"
                   f"  proprio moved {r['shift_mm']:.0f} mm:   it changes by {r['proprio_change_mm']:.1f} mm "
                   f"(the target, seen from the gripper, moved {r['shift_mm']:.0f} mm)\n"
                   f"  another episode's images: it changes by {r['image_change_mm']:.1f} mm "
                   f"(the named object lies {r['target_change_mm']:.1f} mm elsewhere there)\n"
                   f"  named object moved {r['object_shift_mm']:.0f} mm: it changes by {r['object_change_mm']:.1f} mm, "
                   f"the expert by {r['expert_object_change_mm']:.1f} mm (follows {r['object_follow']:.2f} of it)"
                   + ("" if need is None else
                      f"\n  the expert aiming at the layout's mean place of the named object: "
                      f"{need['layout_mean_successes']} / {need['episodes']} (at its real place "
                      f"{need['object_successes']} / {need['episodes']})")
                   + ("" if looks is None else _attention_lines(looks)))


def _attention_lines(looks: dict) -> str:
    lines = [f"\n  attention of the instruction on the named object / receptacle against their share of the "
             f"patches ({looks['queries']} queries of {len(looks['seeds'])} episodes; first queries in brackets):"]
    for layer, shares in looks["per_layer"].items():
        a, f = shares["all"], shares["first"]
        lines.append(f"    layer {layer:>2}: target {100 * a['target_attention']:.1f} % on "
                     f"{100 * a['target_patches']:.1f} % of the patches ({a['target_lift']:.1f}x) "
                     f"[{f['target_lift']:.1f}x], receptacle "
                     f"{a['receptacle_lift']:.1f}x [{f['receptacle_lift']:.1f}x], scene camera "
                     f"{100 * a['primary_attention']:.0f} %")
    return "\n".join(lines)


def cmd_sim_record(args: argparse.Namespace) -> int:
    from ..sim.record import record

    cfg = config_from_args(args, args.model)
    with Progress(args) as progress:
        r = record(args.bag, cfg, args.episodes, args.split, progress.bar("record"), args.layout)
    return Result(r, f"recorded {len(r['episodes'])} closed-loop episodes ({r['successes']} successful) to {r['bag']}")


def cmd_sim_robot(args: argparse.Namespace) -> int:
    from ..ros.sim_robot import main as robot_main

    return robot_main(args.robot_args)


def register(sub, add) -> None:
    from ..common.methods import VARIANTS

    p = add("demo", cmd_demo, "the shipped sim model: closed loop pruned vs unpruned, then replay of a recorded "
                               "episode")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out/)")
    p.add_argument("--episodes", type=positive_int, default=6, help="closed-loop test episodes per method")

    sim = sub.add_parser("sim", help="the simulated tabletop task (MuJoCo): bench, collect, train, export, probe, "
                                     "record, eval",
                         description="the simulated tabletop task (MuJoCo, Gymnasium API)")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")

    add_sim = adder(sim_sub)

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
    q.add_argument("--grounding-weight", type=float, help="weight of the per-patch grounding losses (what lies "
                                                          "under each patch, which patches hold the named object "
                                                          "and receptacle; needs demonstrations with patch labels)")
    q.add_argument("--grounding-layer", type=int, help="the LLM layer whose output marks the named patches "
                                                        "(default 0: the last; a middle layer leaves the layers "
                                                        "above it to carry the marks to the action tokens)")
    q.add_argument("--keep-every", type=int, help="also write the model every N steps (RUN/checkpoints/step-N), "
                                                  "to choose one on validation seeds (default 0: only the last)")
    q.add_argument("--ema", type=float, help="decay of a moving average of the weights, which the model "
                                             "exported takes (e.g. 0.995; default 0: the last step's weights)")
    q.add_argument("--aux-questions", choices=("random", "own"),
                   help="the auxiliary loss asks about random objects of the scene in a second forward (random, "
                        "the default) or about the demonstration's own instruction in the action forward (own)")
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
    q.add_argument("--object-shift", type=float, default=15.0,
                   help="move of the named object in mm along +-x and +-y (re-rendered; against the expert)")
    q.add_argument("--need-episodes", type=int, default=30,
                   help="episodes of the expert aiming at the layout's mean place of the named object (0: skip)")
    q.add_argument("--attention-episodes", type=int, default=4,
                   help="closed-loop episodes (of --episodes' seeds) whose every query records where the unpruned "
                        "model's attention lies at the layers the rules read (0: skip)")
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
    q.add_argument("--latency", metavar="MS|TARGET",
                   help="the delay clock: each answer arrives after this emulated latency in simulated time while "
                        "the arm executes what it has (deterministic; in process, or --through-ros on the lockstep "
                        "clock): milliseconds for every method, or a model of one model on one GPU, its LLM part "
                        "scaled by each step's LLM FLOPs (7b-a800, 7b-h100)")
    q.add_argument("--freeze-camera", action="append", choices=CAMERAS, metavar="CAMERA",
                   help="hold this camera's image at the episode's first frame (repeatable; primary, wrist): what "
                        "the model reads from each camera")
    q.add_argument("--out", default="sim_eval", help="output directory: results.json, episodes.csv, plots, "
                                                     "report.html")
    config_args(q)
