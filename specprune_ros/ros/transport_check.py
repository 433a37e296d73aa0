"""`specprune transport-check`: camera frames lost between two processes over real DDS, per Fast DDS
shared-memory segment size - the measurement behind config/fastdds_large_data.xml.

A publisher process sends ``cameras`` rgb8 streams of ``size`` at ``hz``; a subscriber process
(best-effort sensor QoS, as the node subscribes) counts the distinct frames it receives. Both get
the same profile through ``FASTDDS_DEFAULT_PROFILES_FILE`` / ``FASTRTPS_DEFAULT_PROFILES_FILE``
(Fast DDS reads it when a process creates its first participant, hence one process pair per
setting): "default" runs without a profile (Fast DDS's 512 KiB segment), a number runs the
shipped profile with that segment size in MiB.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_large_data.xml"
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
TOPIC = "/transport_check/camera_{}"
DISCOVERY_S = 15.0                 # longest wait for the subscriber to match


def profile_with_segment(segment_mib: float, directory: Path) -> Path:
    """The shipped profile with another shared-memory segment size."""
    text = PROFILE.read_text()
    size = int(segment_mib * 1024 * 1024)
    text, count = re.subn(r"<segment_size>\d+</segment_size>", f"<segment_size>{size}</segment_size>", text)
    if count != 1:
        raise ValueError(f"{PROFILE}: expected one <segment_size> element, found {count}")
    path = directory / f"fastdds_segment_{segment_mib:g}MiB.xml"
    path.write_text(text)
    return path


def measure(size: tuple[int, int] = (640, 480), hz: float = 30.0, seconds: float = 10.0, cameras: int = 2,
            segments: tuple[str, ...] = ("default", "32")) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for segment in segments:
            env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
            env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
            if segment != "default":
                path = profile_with_segment(float(segment), Path(tmp))
                env.update({k: str(path) for k in PROFILE_VARIABLES})
            common = [f"--size={size[0]}x{size[1]}", f"--hz={hz}", f"--seconds={seconds}", f"--cameras={cameras}"]
            module = [sys.executable, "-m", "specprune_ros.ros.transport_check"]
            subscriber = subprocess.Popen([*module, "subscribe", *common], env=env, stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            publisher = subprocess.run([*module, "publish", *common], env=env, stdout=subprocess.PIPE, text=True,
                                       timeout=seconds + 60, check=True)
            received, _ = subscriber.communicate(timeout=seconds + 60)
            if subscriber.returncode:
                raise RuntimeError(f"transport-check subscriber failed (exit {subscriber.returncode})")
            sent, got = json.loads(publisher.stdout), json.loads(received)
            per_camera = [{"sent": s, "received": r, "loss": 1 - r / s if s else float("nan")}
                          for s, r in zip(sent["sent"], got["received"])]
            results.append({"segment_mib": None if segment == "default" else float(segment),
                            "cameras": per_camera,
                            "loss": 1 - sum(c["received"] for c in per_camera) / max(1, sum(c["sent"]
                                                                                          for c in per_camera))})
    frame_mib = size[0] * size[1] * 3 / 2**20
    return {"size": list(size), "hz": hz, "seconds": seconds, "cameras": cameras, "frame_mib": frame_mib,
            "results": results}


# ---- the two processes ---------------------------------------------------------------------------------
def _image(width: int, height: int, value: int):
    import numpy as np
    from sensor_msgs.msg import Image

    msg = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3)
    msg.data = np.full((height, width, 3), value, np.uint8).tobytes()
    return msg


def _publish(width: int, height: int, hz: float, seconds: float, cameras: int) -> dict[str, Any]:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("transport_check_publisher")
    pubs = [node.create_publisher(Image, TOPIC.format(i), qos_profile_sensor_data) for i in range(cameras)]
    frames = [_image(width, height, 40 * (i + 1)) for i in range(cameras)]
    deadline = time.monotonic() + DISCOVERY_S
    while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in pubs):
        time.sleep(0.05)                         # count only frames a matched subscriber could get
    time.sleep(0.5)
    sent = [0] * cameras
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        stamp = node.get_clock().now().to_msg()
        for i, (pub, msg) in enumerate(zip(pubs, frames)):
            msg.header.stamp = stamp
            pub.publish(msg)
            sent[i] += 1
        tick += 1
        time.sleep(max(0.0, start + tick / hz - time.monotonic()))
    time.sleep(0.5)
    node.destroy_node()
    rclpy.shutdown()
    return {"sent": sent}


def _subscribe(hz: float, seconds: float, cameras: int) -> dict[str, Any]:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("transport_check_subscriber")
    stamps: list[set[int]] = [set() for _ in range(cameras)]
    for i in range(cameras):
        node.create_subscription(Image, TOPIC.format(i), lambda m, i=i: stamps[i].add(
            m.header.stamp.sec * 10**9 + m.header.stamp.nanosec), qos_profile_sensor_data)
    deadline = time.monotonic() + DISCOVERY_S + seconds + 3.0
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        before = sum(len(s) for s in stamps)
        rclpy.spin_once(node, timeout_sec=0.05)
        if sum(len(s) for s in stamps) != before:
            idle_since = time.monotonic()
        elif before and time.monotonic() - idle_since > 2.0:
            break                                # the publisher is done
    node.destroy_node()
    rclpy.shutdown()
    return {"received": [len(s) for s in stamps]}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="one side of `specprune transport-check`")
    parser.add_argument("role", choices=("publish", "subscribe"))
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--hz", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cameras", type=int, default=2)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    if args.role == "publish":
        result = _publish(width, height, args.hz, args.seconds, args.cameras)
    else:
        result = _subscribe(args.hz, args.seconds, args.cameras)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
