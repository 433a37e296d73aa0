"""The node's outgoing messages, built from the policy's output (fields listed once, in policy.py)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from rclpy.time import Time
from sensor_msgs.msg import Image
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..msg import ActionChunk, PruningStats
from ..policy import PolicyOutput


def chunk_message(out: PolicyOutput, action_dt: float, stamp_ns: int) -> ActionChunk:
    chunk = ActionChunk(**_ros_values(out.chunk_fields(action_dt)))
    chunk.header.stamp, chunk.header.frame_id = Time(nanoseconds=stamp_ns).to_msg(), "camera_primary"
    return chunk


def stats_message(out: PolicyOutput, header_stamp) -> PruningStats:
    msg = PruningStats()
    for name, value in _ros_values(out.stats_fields()).items():
        setattr(msg, name, value if isinstance(value, list) else type(getattr(msg, name))(value))
    msg.header.stamp, msg.header.frame_id = header_stamp, "camera_primary"
    return msg


def _ros_values(fields: dict) -> dict:
    """numpy arrays as the lists rclpy's generated setters take."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fields.items()}


def empty_trajectory(joint_names: Sequence[str], stamp) -> JointTrajectory:
    """No points: joint_trajectory_controller cancels the current trajectory and holds position."""
    msg = JointTrajectory()
    msg.header.stamp = stamp
    msg.joint_names = list(joint_names)
    return msg


def trajectory_message(actions: np.ndarray, joint_names: Sequence[str], dt: float, header_stamp) -> JointTrajectory:
    """Joint-space action models: the first len(joint_names) dims are joint targets, k*dt apart."""
    names = list(joint_names)
    msg = JointTrajectory()
    msg.header.stamp = header_stamp
    msg.joint_names = names
    for k, row in enumerate(actions, start=1):
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in row[:len(names)]]
        t = k * dt
        point.time_from_start.sec = int(t)
        point.time_from_start.nanosec = int(round((t - int(t)) * 1e9))
        msg.points.append(point)
    return msg


def overlay_message(out: PolicyOutput, header_stamp) -> Image:
    """The model-resolution frames side by side, pruned patches grey and hatched."""
    image = out.overlay()
    msg = Image(height=image.shape[0], width=image.shape[1], encoding="rgb8", is_bigendian=0,
                step=image.shape[1] * 3)
    msg.header.stamp, msg.header.frame_id = header_stamp, "camera_primary"
    msg.data = image.tobytes()
    return msg
