"""`specprune node-latency`: end-to-end latency of the action node over real DDS.

A synthetic robot (the synthetic episode's camera frames and joint states, stamped with the
current ROS time) publishes at ``camera_hz``; the node runs in the same process on its own
executor; a subscriber records when each ActionChunk arrives. Reported per chunk: observation
age when the policy step starts, the policy step, and observation stamp -> chunk received.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np


def measure(chunks: int = 40, camera_hz: float = 20.0, control_hz: float = 5.0, model_path: str = "tiny-random",
            device: str = "cpu", warmup: int = 3) -> dict[str, Any]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from ..msg import ActionChunk
    from ..synthetic import INSTRUCTION, JOINT_NAMES, episode
    from .action_node import ActionNode

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    frames = episode(60)
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    node = ActionNode(context=context, parameter_overrides=[
        Parameter("model_path", value=model_path), Parameter("device", value=device),
        Parameter("control_rate_hz", value=control_hz)])
    starts: dict[int, int] = {}
    step = node.policy.step

    def timed_step(obs):
        starts[obs.stamp_ns] = node.get_clock().now().nanoseconds
        return step(obs)
    node.policy.step = timed_step

    robot = Node("synthetic_robot", context=context)
    pub_primary = robot.create_publisher(Image, "image_primary", 10)
    pub_wrist = robot.create_publisher(Image, "image_wrist", 10)
    pub_joints = robot.create_publisher(JointState, "joint_states", 10)
    from .qos import LATCHED as latched
    robot.create_publisher(String, "instruction", latched).publish(String(data=INSTRUCTION))
    received: list[tuple[int, int, float]] = []
    robot.create_subscription(ActionChunk, "action_chunk", lambda m: received.append(
        (robot.get_clock().now().nanoseconds, m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, 0.0)), 10)
    counter = iter(range(10**9))

    def publish() -> None:
        s = frames[next(counter) % len(frames)]
        stamp = robot.get_clock().now().to_msg()
        for pub, img in ((pub_primary, s.primary), (pub_wrist, s.wrist)):
            msg = Image(height=img.shape[0], width=img.shape[1], encoding="rgb8", is_bigendian=0,
                        step=img.shape[1] * 3)
            msg.header.stamp = stamp
            msg.data = img.tobytes()
            pub.publish(msg)
        joints = JointState(name=list(JOINT_NAMES), position=[float(v) for v in s.joints])
        joints.header.stamp = stamp
        pub_joints.publish(joints)
    robot.create_timer(1.0 / camera_hz, publish)

    executor.add_node(node)
    executor.add_node(robot)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    deadline = time.monotonic() + 30 + chunks * 3 / control_hz
    try:
        while len(received) < chunks + warmup and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        node.shutdown()
        executor.shutdown(timeout_sec=2.0)
        spinner.join(5.0)
        stats = list(node.worker.latencies)
        node.destroy_node()
        robot.destroy_node()
        rclpy.shutdown(context=context)
    rows = received[warmup:]
    if not rows:
        raise RuntimeError("the node published no action chunk (see its log)")
    e2e = [(r - s) / 1e6 for r, s, _ in rows]
    age = [(starts[s] - s) / 1e6 for _, s, _ in rows if s in starts]
    policy = stats[-len(rows):]

    def pct(v, q):
        return float(np.percentile(v, q))
    return {
        "chunks": len(rows), "camera_hz": camera_hz, "control_hz": control_hz, "model": model_path,
        "device": device,
        "end_to_end_ms": {"p50": pct(e2e, 50), "p95": pct(e2e, 95)},
        "observation_age_at_step_ms": {"p50": pct(age, 50)},
        "policy_step_ms": {"p50": pct(policy, 50)},
        "node_overhead_ms": {"p50": pct(e2e, 50) - pct(age, 50) - pct(policy, 50)},
    }
