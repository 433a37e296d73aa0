"""`specprune node-soak`: the action node under a robot's load, over real DDS, for minutes.

Three processes, as on the robot computer: a synthetic robot (``cameras`` rgb8 / bgr8 / mono8
streams of ``size`` at ``camera_hz``, joint states at 100 Hz, the instruction latched), the node
(``specprune node``, tiny model unless told otherwise, ``control_hz``), and this monitor, which
subscribes to ActionChunk / PruningStats / /diagnostics and samples the node's RSS and thread
count from /proc. All three get the Fast DDS profile (``config/fastdds_large_data.xml``) unless
``profile`` is None. At the end the node gets SIGINT: exit code, seconds to exit and any ERROR
line it printed are reported.

Per minute: RSS and threads, chunks/s, ticks dropped by reason, policy latency and chunk age
(stamp of the observation -> chunk received) percentiles.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .transport_check import PROFILE, PROFILE_VARIABLES

JOINT_HZ = 100.0
ENCODINGS = {"rgb8": 3, "bgr8": 3, "mono8": 1}
SCENES = ("moving", "noise")
SCENE_HZ = 10.0                        # pictures of the moving scene per second (each held at camera_hz)
SCENE_STEPS = 40


# ---- the synthetic robot (its own process) ---------------------------------------------------------------
def camera_frames(width: int, height: int, encoding: str, scene: str = "moving") -> list[tuple[bytes, bytes]]:
    """(primary, wrist) image payloads, cycled by the robot process.

    ``moving``: the synthetic pick-and-place episode (``synthetic.episode``), one picture per
    0.1 s and played forwards then backwards, so the stream never jumps - what a camera on a
    working robot shows, and what SpecPrune's frame differencing and prior are made for.
    ``noise``: independent random pictures, every step a scene cut (SpecPrune falls back to the
    unpruned step each time): the node's worst case. A first version of this tool sent only
    noise, so its figures were those of the unpruned path."""
    import cv2

    from ..synthetic import episode

    if scene == "noise":
        rng = np.random.default_rng(0)
        pictures = [[rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(2)] for _ in range(8)]
    elif scene == "moving":
        steps = episode(SCENE_STEPS, size=256)
        steps = steps + steps[-2:0:-1]                               # forwards, then backwards
        pictures = [[cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
                     for image in (step.primary, step.wrist)] for step in steps]
    else:
        raise ValueError(f"scene {scene!r}: one of {', '.join(SCENES)}")

    def payload(rgb: np.ndarray) -> bytes:
        if encoding == "bgr8":
            rgb = rgb[..., ::-1]
        elif encoding == "mono8":
            rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return np.ascontiguousarray(rgb).tobytes()

    return [(payload(primary), payload(wrist)) for primary, wrist in pictures]


def _robot(width: int, height: int, camera_hz: float, encoding: str, seconds: float, scene: str = "moving") -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from ..synthetic import INSTRUCTION, JOINT_NAMES

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: stop.append(number))     # end the loop, then rclpy
    node = rclpy.create_node("soak_robot")
    channels = ENCODINGS[encoding]
    cams = [node.create_publisher(Image, topic, qos_profile_sensor_data) for topic in ("image_primary", "image_wrist")]
    joints_pub = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    from .qos import LATCHED as latched
    node.create_publisher(String, "instruction", latched).publish(String(data=INSTRUCTION))
    frames = camera_frames(width, height, encoding, scene)
    hold = max(1, int(round(camera_hz / SCENE_HZ)))
    images = [Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=width * channels)
              for _ in cams]
    joint_msg = JointState(name=list(JOINT_NAMES), position=[0.0] * len(JOINT_NAMES))
    start = time.monotonic()
    next_camera = next_joints = start
    k = 0
    while time.monotonic() - start < seconds and not stop:
        now = time.monotonic()
        if now >= next_joints:
            joint_msg.header.stamp = node.get_clock().now().to_msg()
            joint_msg.position = [0.1 * np.sin(now + i) for i in range(len(JOINT_NAMES))]
            joints_pub.publish(joint_msg)
            next_joints += 1.0 / JOINT_HZ
        if now >= next_camera:
            stamp = node.get_clock().now().to_msg()
            for pub, msg, data in zip(cams, images, frames[(k // hold) % len(frames)]):
                msg.header.stamp = stamp
                msg.data = data
                pub.publish(msg)
            k += 1
            next_camera += 1.0 / camera_hz
        time.sleep(max(0.0, min(next_camera, next_joints) - time.monotonic()))
    node.destroy_node()
    rclpy.shutdown()


# ---- the monitor ---------------------------------------------------------------------------------------
def _proc_status(pid: int) -> tuple[float, int]:
    """(RSS in MB, threads) of a process, from /proc."""
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024
    threads = int(re.search(r"Threads:\s+(\d+)", text).group(1))
    return rss, threads


def soak(minutes: float = 10.0, camera_hz: float = 30.0, size: tuple[int, int] = (640, 480), encoding: str = "rgb8",
         control_hz: float = 10.0, model_path: str = "tiny-random", profile: str | None = str(PROFILE),
         plot: str | None = None, scene: str = "moving") -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    from ..msg import ActionChunk, PruningStats

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r}: one of {', '.join(ENCODINGS)}")
    if scene not in SCENES:
        raise ValueError(f"scene {scene!r}: one of {', '.join(SCENES)}")
    seconds = minutes * 60.0
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if profile:
        env.update({k: profile for k in PROFILE_VARIABLES})
        os.environ.update({k: profile for k in PROFILE_VARIABLES})   # this process too, before rclpy.init
    log = tempfile.NamedTemporaryFile("w+", prefix="node_soak_", suffix=".log", delete=False)
    node = subprocess.Popen([sys.executable, "-m", "specprune_ros", "node", "--ros-args",
                             "-p", f"model_path:={model_path}", "-p", "device:=cpu",
                             "-p", f"control_rate_hz:={control_hz}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    robot = subprocess.Popen([sys.executable, "-m", "specprune_ros.ros.node_soak", f"{size[0]}x{size[1]}",
                              str(camera_hz), encoding, str(seconds + 30), scene], env=env, stdout=subprocess.DEVNULL)
    context = rclpy.Context()
    rclpy.init(context=context)
    monitor = rclpy.create_node("soak_monitor", context=context)
    chunks: list[tuple[float, int]] = []                 # (received monotonic, stamp ns)
    steps: list[tuple[float, float, int, str]] = []      # (received, policy latency ms, tokens kept, fallback)
    drops: list[tuple[float, dict[str, int]]] = []
    clock = monitor.get_clock()

    def on_chunk(msg) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        chunks.append((time.monotonic(), clock.now().nanoseconds - stamp))

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if status.name.endswith(": inference"):
                values = {v.key: v.value for v in status.values}
                drops.append((time.monotonic(), {k[len("dropped_"):]: int(v) for k, v in values.items()
                                                 if k.startswith("dropped_")}))
    monitor.create_subscription(ActionChunk, "action_chunk", on_chunk, 50)
    monitor.create_subscription(PruningStats, "pruning_stats", lambda m: steps.append(
        (time.monotonic(), m.latency_ms, m.vision_tokens_kept, m.fallback_reason)), 50)
    monitor.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(monitor)
    samples: list[tuple[float, float, int]] = []          # (t, rss MB, threads)
    try:
        deadline = time.monotonic() + 60.0
        while not chunks and time.monotonic() < deadline and node.poll() is None:
            executor.spin_once(timeout_sec=0.1)             # start-up: model load, discovery
        if not chunks:
            raise RuntimeError(f"the node published no chunk within 60 s (log: {log.name})")
        start = time.monotonic()
        next_sample = start
        while time.monotonic() - start < seconds and node.poll() is None:
            executor.spin_once(timeout_sec=0.05)
            if time.monotonic() >= next_sample:
                samples.append((time.monotonic() - start, *_proc_status(node.pid)))
                next_sample += 10.0
        stop = time.monotonic()
        node.send_signal(signal.SIGINT)
        try:
            exit_code = node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
            exit_code = None
        exit_s = time.monotonic() - stop
    finally:
        if node.poll() is None:
            node.kill()
        robot.terminate()
        robot.wait(10)
        executor.shutdown()
        monitor.destroy_node()
        rclpy.shutdown(context=context)
    log.seek(0)
    errors = [line.strip() for line in log.read().splitlines() if "[ERROR]" in line or "Traceback" in line]
    result = _report(start, stop, chunks, [(t, ms) for t, ms, _, _ in steps], drops, samples)
    in_run = [(kept, reason) for t, _, kept, reason in steps if start <= t < stop]
    reasons = [reason for _, reason in in_run if reason]
    result["pruning"] = {"tokens_kept_mean": float(np.mean([k for k, _ in in_run])) if in_run else float("nan"),
                         "unpruned_share": len(reasons) / len(in_run) if in_run else float("nan"),
                         "fallbacks": {r: reasons.count(r) for r in sorted(set(reasons))}}
    result.update({"scene": scene, "minutes": minutes, "camera_hz": camera_hz, "size": list(size), "encoding": encoding,
                   "control_hz": control_hz, "model": model_path, "profile": profile,
                   "exit": {"code": exit_code, "seconds": exit_s, "error_lines": errors}, "node_log": log.name})
    if plot:
        _plot(result, plot)
    return result


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _report(start: float, stop: float, chunks, latency, drops, samples) -> dict[str, Any]:
    minutes = []
    total = max(stop - start, 1e-9)
    first_drops = next((d for t, d in drops if t >= start), {})
    count = max(1, int(round(total / 60.0)))            # whole minutes; the last one runs to the end
    for m in range(count):
        lo, hi = start + 60.0 * m, stop if m == count - 1 else start + 60.0 * (m + 1)
        ages = [age / 1e6 for t, age in chunks if lo <= t < hi]
        lats = [v for t, v in latency if lo <= t < hi]
        mem = [(rss, th) for t, rss, th in samples if lo - start <= t < hi - start]
        minutes.append({"minute": m + 1, "chunks_per_s": len(ages) / max(hi - lo, 1e-9),
                        "latency_ms_p50": _pct(lats, 50), "latency_ms_p95": _pct(lats, 95),
                        "chunk_age_ms_p50": _pct(ages, 50), "chunk_age_ms_p95": _pct(ages, 95),
                        "rss_mb": mem[-1][0] if mem else float("nan"), "threads": mem[-1][1] if mem else 0})
    in_run = [d for t, d in drops if start <= t <= stop]
    last = in_run[-1] if in_run else first_drops
    dropped = {k: v - first_drops.get(k, 0) for k, v in last.items() if v - first_drops.get(k, 0) > 0}
    published = sum(1 for t, _ in chunks if start <= t < stop)
    ticks = published + sum(dropped.values())
    ages = [a / 1e6 for t, a in chunks if start <= t < stop]
    return {"seconds": total, "chunks": published, "chunks_per_s": published / total, "dropped": dropped,
            "dropped_share": sum(dropped.values()) / ticks if ticks else 0.0,
            "latency_ms_p50": _pct([v for t, v in latency if start <= t < stop], 50),
            "chunk_age_ms_p50": _pct(ages, 50), "chunk_age_ms_p95": _pct(ages, 95),
            "rss_mb_first": samples[0][1] if samples else float("nan"),
            "rss_mb_last": samples[-1][1] if samples else float("nan"),
            "threads": sorted({s[2] for s in samples}), "per_minute": minutes}


def _plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = result["per_minute"]
    x = [r["minute"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    top.plot(x, [r["chunks_per_s"] for r in rows], marker="o")
    top.set_ylabel("chunks / s")
    top.ticklabel_format(axis="y", useOffset=False)      # 9.998 vs 10.0, not "+9.999" and a collapse
    top.set_ylim(0, max(r["chunks_per_s"] for r in rows) * 1.15 + 1e-9)
    top.set_title(f"node soak: {len(rows)} minute(s)", fontsize=10)
    for key, label in (("latency_ms_p50", "policy p50"), ("chunk_age_ms_p50", "chunk age p50"),
                       ("chunk_age_ms_p95", "chunk age p95")):
        bottom.plot(x, [r[key] for r in rows], marker=".", label=label)
    bottom.set_ylabel("ms")
    bottom.set_xlabel("minute")
    bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":                     # the robot process: SIZE HZ ENCODING SECONDS SCENE
    width, height = (int(v) for v in sys.argv[1].split("x"))
    _robot(width, height, float(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5])
