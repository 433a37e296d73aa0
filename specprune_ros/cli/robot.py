"""Commands that start ROS 2 processes: the action node, the chunk executor, the DDS diagnostics."""
from __future__ import annotations

import argparse
import re

from ..config import ConfigError
from .shared import Result, positive_int


def cmd_node(args: argparse.Namespace) -> int:
    from ..ros.action_node import main as node_main

    return node_main(["specprune-node", *args.ros_args])


def cmd_executor(args: argparse.Namespace) -> int:
    from ..ros.chunk_executor import main as executor_main

    return executor_main(["specprune-executor", *args.ros_args])


def cmd_transport_check(args: argparse.Namespace) -> int:
    from ..ros.transport_check import measure

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
    return Result(result, "\n".join(lines))


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    return width, height


def cmd_node_soak(args: argparse.Namespace) -> int:
    from ..ros.node_soak import soak
    from ..ros.transport_check import PROFILE

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
    return Result(r, "\n".join(lines))


def cmd_node_latency(args: argparse.Namespace) -> int:
    from ..ros.node_latency import measure

    r = measure(args.chunks, args.camera_hz, args.control_hz, args.model, args.device)
    return Result(r, f"action node over DDS, {r['model']} on {r['device']}, {r['chunks']} chunks, camera "
                   f"{r['camera_hz']:g} Hz, control {r['control_hz']:g} Hz (medians):\n"
                   f"  observation stamp -> chunk received  {r['end_to_end_ms']['p50']:.1f} ms "
                   f"(p95 {r['end_to_end_ms']['p95']:.1f})\n"
                   f"  = observation age at step start     {r['observation_age_at_step_ms']['p50']:.1f} ms\n"
                   f"  + policy step                       {r['policy_step_ms']['p50']:.1f} ms\n"
                   f"  + node (publish, DDS delivery)      {r['node_overhead_ms']['p50']:.1f} ms")


def register(sub, add) -> None:
    p = sub.add_parser("node", help="start the action node (as `ros2 run specprune_ros action_node`)",
                       description="start the action node; arguments after `node` go to ROS (--ros-args ...)")
    p.add_argument("ros_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_node, json=False)

    p = sub.add_parser("executor", help="start the chunk executor (as `ros2 run specprune_ros chunk_executor`)",
                       description="start the chunk executor; arguments after `executor` go to ROS (--ros-args ...)")
    p.add_argument("ros_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_executor, json=False)

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
