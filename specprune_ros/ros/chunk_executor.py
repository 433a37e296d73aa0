"""The chunk executor node: ActionChunks in, one command per action period out (robot side).

    ros2 run specprune_ros chunk_executor --ros-args --params-file config/rizon4.yaml

Every ``action_dt`` (on the node's clock: wall time, or /clock with ``use_sim_time``) and at once
when a chunk arrives, it sends the command for the current period (``execution.ChunkExecutor``:
time-aligned to the chunk's observation stamp, replace or ensemble hand-over, one hold when no
fresh chunk is there, translation / rotation limits, the workspace box) as

* ``ActionCommand`` on ``topics.command`` (the sim robot's input; every command, holds included),
* ``geometry_msgs/PoseStamped`` on ``topics.target_pose`` (the pose to reach by the period's end:
  the robot's ``topics.eef_pose`` plus the delta; Cartesian impedance controllers), once a pose is known,
* ``geometry_msgs/TwistStamped`` on ``topics.target_twist`` (the delta over ``action_dt``; MoveIt
  Servo; zero on hold).

It stops - one hold, within the period - on ``topics.estop`` (std_msgs/Bool true, latched) and
when the action node (``action_node`` beside it) leaves the active state; chunks that arrive
while stopped are never executed.
"""
from __future__ import annotations

import math
import sys
from typing import Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from lifecycle_msgs.msg import TransitionEvent
from rclpy.node import Node
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Bool

from ..config import NODE_NAME, Config, iter_specs
from ..execution import ROTATION, TRANSLATION, Chunk, ChunkExecutor, Command
from ..msg import ActionChunk, ActionCommand
from .parameters import declare_all
from .qos import LATCHED
from .spin import spin

EXECUTOR_NODE_NAME = "chunk_executor"
# The knobs this node reads from the shared parameter files.
KNOBS = tuple(name for name, _ in iter_specs() if name.startswith(("executor.", "topics."))) + ("action_dt",)


class ChunkExecutorNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__(EXECUTOR_NODE_NAME, **node_kwargs)
        self.config = declare_all(self, Config(), KNOBS)
        topics = self.config.topics
        self.core = ChunkExecutor(self.config.executor, self.config.node.action_dt)
        self.pose: PoseStamped | None = None
        self.last_command: Command | None = None
        self.command_pub = self.create_publisher(ActionCommand, topics.command, 10)
        self.pose_pub = self.create_publisher(PoseStamped, topics.target_pose, 10)
        self.twist_pub = self.create_publisher(TwistStamped, topics.target_twist, 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(ActionChunk, topics.action_chunk, self._on_chunk, 10)
        self.create_subscription(PoseStamped, topics.eef_pose, self._on_pose, 10)
        self.create_subscription(Bool, topics.estop, self._on_estop, LATCHED)
        self.create_subscription(TransitionEvent, f"{NODE_NAME}/transition_event", self._on_transition, 10)
        # Periods: a wall-clock timer, or with use_sim_time every /clock message that starts a new
        # period (a timer on sim time was seen to miss a period now and then, which stalls a
        # lockstep simulator waiting for that period's command).
        self._last_period: int | None = None
        self._clock_ns = 0                        # the newest /clock (the node's clock may lag it)
        self.create_timer(self.config.node.action_dt, self._on_timer)
        self.create_subscription(Clock, "/clock", self._on_clock, 10)
        self.create_timer(1.0, self._publish_diagnostics)

    # ---- inputs -----------------------------------------------------------------------------------
    def _on_chunk(self, msg: ActionChunk) -> None:
        stamp = Time.from_msg(msg.header.stamp).nanoseconds
        actions = np.asarray(msg.actions, np.float64)
        if msg.chunk_size * msg.action_dim != actions.size or msg.chunk_size == 0:
            self.get_logger().warning(f"chunk {msg.step}: {actions.size} values for {msg.chunk_size} x "
                                      f"{msg.action_dim}: ignored", throttle_duration_sec=2.0)
            return
        if abs(msg.dt - self.config.node.action_dt) > 1e-6:
            self.get_logger().warning(f"chunk {msg.step}: dt {msg.dt:g} s differs from action_dt "
                                      f"{self.config.node.action_dt:g} s: ignored", throttle_duration_sec=2.0)
            return
        if self.core.submit(Chunk(actions.reshape(msg.chunk_size, msg.action_dim), stamp, msg.step)):
            self._on_period()                        # a fresh chunk acts at once, not a period later

    def _on_pose(self, msg: PoseStamped) -> None:
        self.pose = msg

    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            self.core.stop("estop", "e-stop")
            self.get_logger().warning("e-stop: holding")
            self._on_period()
        elif self.core.stopped_by("estop"):
            self.core.release("estop")
            self.get_logger().info("e-stop released")

    def _on_transition(self, msg: TransitionEvent) -> None:
        """Stop when the action node leaves ``active`` (from the transition's first event); act
        again once it is active. Transitions that never touch ``active`` (configure, cleanup)
        change nothing: an executor that joins late may have missed their events."""
        if msg.goal_state.label == "active":
            self.core.release("action_node")
        elif msg.start_state.label == "active":
            self.core.stop("action_node", f"the action node is {msg.goal_state.label}")
            self._on_period()

    # ---- the period --------------------------------------------------------------------------------
    def _on_timer(self) -> None:
        if not self.get_clock().ros_time_is_active:
            self._on_period()

    def _on_clock(self, msg: Clock) -> None:
        now_ns = self._clock_ns = max(self._clock_ns, Time.from_msg(msg.clock).nanoseconds)
        if self.get_clock().ros_time_is_active and now_ns // self.core.dt_ns != self._last_period:
            self._last_period = now_ns // self.core.dt_ns
            self._on_period(now_ns)

    def _on_period(self, now_ns: int | None = None) -> None:
        if now_ns is None:
            now_ns = self.get_clock().now().nanoseconds
            if self.get_clock().ros_time_is_active:
                now_ns = max(now_ns, self._clock_ns)
        position = None if self.pose is None else _position(self.pose)
        command = self.core.command(now_ns, position)
        if command is None:
            return
        self.last_command = command
        stamp = Time(nanoseconds=now_ns).to_msg()
        self.command_pub.publish(command_message(command, stamp))
        twist = TwistStamped()
        twist.header.stamp = stamp
        if not command.hold:
            dt = self.config.node.action_dt
            (twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z) = \
                (float(v) / dt for v in command.action[TRANSLATION])
            (twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z) = \
                (float(v) / dt for v in command.action[ROTATION])
        self.twist_pub.publish(twist)
        if self.pose is not None:
            self.pose_pub.publish(target_pose(self.pose, command, stamp))
        if command.hold:
            self.get_logger().info(f"hold: {command.reason}", throttle_duration_sec=2.0)

    def _publish_diagnostics(self) -> None:
        c = self.core.counters
        status = DiagnosticStatus(name=f"{self.get_name()}: execution", level=DiagnosticStatus.OK)
        holding = self.last_command is None or self.last_command.hold
        status.message = f"holding: {self.last_command.reason}" if holding and self.last_command else \
            "holding: no chunk yet" if holding else "executing"
        if self.core.stopped:
            status.level, status.message = DiagnosticStatus.WARN, f"stopped: {self.core.stopped}"
        values = {"commands": c.commands, "holds": c.holds, "skipped_actions": c.skipped, "clamped": c.clamped,
                  "chunks": c.chunks, **{f"rejected_{k}": v for k, v in c.rejected.items()}}
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)


def command_message(command: Command, stamp) -> ActionCommand:
    msg = ActionCommand(hold=command.hold, reason=command.reason, skipped=command.skipped, clamped=command.clamped)
    msg.header.stamp = stamp
    if command.chunk is not None:
        msg.chunk_stamp = Time(nanoseconds=command.chunk.stamp_ns).to_msg()
        msg.chunk_step, msg.chunk_index = command.chunk.step, command.index
    if not command.hold:
        msg.action = [float(v) for v in command.action]
    return msg


def _position(pose: PoseStamped) -> np.ndarray:
    p = pose.pose.position
    return np.array([p.x, p.y, p.z])


def target_pose(current: PoseStamped, command: Command, stamp) -> PoseStamped:
    """The pose at the end of the period: the current one moved by the delta (a hold: the current
    pose). The rotation delta is an axis-angle vector in the base frame, applied on the left."""
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, current.header.frame_id
    here, q = _position(current), current.pose.orientation
    orientation = np.array([q.x, q.y, q.z, q.w])
    if not command.hold:
        here = here + command.action[TRANSLATION]
        orientation = quaternion_multiply(axis_angle_quaternion(command.action[ROTATION]), orientation)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in here)
    (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
     msg.pose.orientation.w) = (float(v) for v in orientation)
    return msg


def axis_angle_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(x, y, z, w) of a rotation by |r| about r."""
    angle = float(np.linalg.norm(rotation))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = np.asarray(rotation) / angle
    return np.array([*(axis * math.sin(angle / 2)), math.cos(angle / 2)])


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b for (x, y, z, w) quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def main(argv: Sequence[str] | None = None) -> int:
    """``ros2 run specprune_ros chunk_executor``."""
    return spin(ChunkExecutorNode, EXECUTOR_NODE_NAME, list(sys.argv if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
