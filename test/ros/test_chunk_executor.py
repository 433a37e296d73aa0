"""The chunk executor node over real DDS: commands on time, hold, e-stop, the action node's deactivate."""
import time

import numpy as np
import pytest

from .conftest import wait_for

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.time import Time  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402

from specprune_ros.msg import ActionChunk, ActionCommand  # noqa: E402
from specprune_ros.ros.chunk_executor import LATCHED, ChunkExecutorNode, target_pose  # noqa: E402

DT = 0.1


class Robot(Node):
    """Sends chunks, the pose and the e-stop; records the executor's outputs."""

    def __init__(self, context):
        super().__init__("test_robot", context=context)
        self.commands, self.twists, self.poses = [], [], []
        self.chunk_pub = self.create_publisher(ActionChunk, "action_chunk", 10)
        self.pose_pub = self.create_publisher(PoseStamped, "eef_pose", 10)
        self.estop_pub = self.create_publisher(Bool, "estop", LATCHED)
        self.create_subscription(ActionCommand, "command", self.commands.append, 10)
        self.create_subscription(TwistStamped, "target_twist", self.twists.append, 10)
        self.create_subscription(PoseStamped, "target_pose", self.poses.append, 10)

    def send_chunk(self, stamp_ns, step, dx=0.001, size=8):
        msg = ActionChunk(step=step, chunk_size=size, action_dim=7, dt=DT)
        msg.header.stamp = Time(nanoseconds=stamp_ns).to_msg()
        actions = np.zeros((size, 7))
        actions[:, 0] = dx * (np.arange(size) + 1)
        actions[:, 6] = 1.0
        msg.actions = actions.ravel().tolist()
        self.chunk_pub.publish(msg)


def start(ros, **knobs):
    context, spinner = ros
    overrides = [Parameter(f"executor.{k}", value=v) for k, v in knobs.items()]
    executor = spinner.add(ChunkExecutorNode(context=context, parameter_overrides=overrides))
    robot = spinner.add(Robot(context))
    assert wait_for(lambda: robot.count_subscribers("action_chunk") > 0 and robot.count_publishers("command") > 0)
    return executor, robot


def acting(commands):
    return [c for c in commands if not c.hold]


def test_a_late_chunk_starts_where_the_clock_is(ros):
    executor, robot = start(ros)
    now = executor.get_clock().now().nanoseconds
    robot.send_chunk(now - int(0.35e9), step=1)          # observed 0.35 s ago: actions 0-2 are past
    assert wait_for(lambda: acting(robot.commands))
    first = acting(robot.commands)[0]
    assert first.chunk_step == 1 and first.chunk_index == 3 and first.skipped == 3
    assert first.action[0] == pytest.approx(0.004)
    assert wait_for(lambda: len(acting(robot.commands)) >= 3)
    indices = [c.chunk_index for c in acting(robot.commands)]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)   # never replayed
    twist = robot.twists[-1]
    assert twist.twist.linear.x == pytest.approx(acting(robot.commands)[-1].action[0] / DT, rel=1e-5)


def test_one_hold_when_no_fresh_chunk_comes(ros):
    executor, robot = start(ros)
    robot.send_chunk(executor.get_clock().now().nanoseconds, step=1, size=3)
    assert wait_for(lambda: any(c.hold for c in robot.commands))
    time.sleep(5 * DT)
    holds = [c for c in robot.commands if c.hold]
    assert len(holds) == 1 and "ran out" in holds[0].reason
    assert robot.twists[-1].twist.linear.x == 0.0


def test_limits_clamp_and_the_pose_target_follows_the_robot(ros):
    executor, robot = start(ros, max_translation=0.002)
    pose = PoseStamped()
    pose.header.frame_id = "base"
    pose.pose.position.x, pose.pose.orientation.w = 0.5, 1.0
    robot.pose_pub.publish(pose)
    assert wait_for(lambda: executor.pose is not None)
    robot.send_chunk(executor.get_clock().now().nanoseconds, step=1, dx=0.01)
    assert wait_for(lambda: acting(robot.commands) and robot.poses)
    command = acting(robot.commands)[0]
    assert command.clamped and command.action[0] == pytest.approx(0.002)
    assert robot.poses[-1].pose.position.x == pytest.approx(0.502)
    assert robot.poses[-1].header.frame_id == "base"


def test_estop_holds_within_a_period_and_chunks_meanwhile_are_never_run(ros):
    executor, robot = start(ros)
    robot.send_chunk(executor.get_clock().now().nanoseconds, step=1, size=50)
    assert wait_for(lambda: acting(robot.commands))
    robot.estop_pub.publish(Bool(data=True))
    pressed = time.monotonic()
    assert wait_for(lambda: robot.commands[-1].hold, timeout=2.0)
    assert time.monotonic() - pressed < DT + 0.1          # within one period (plus DDS delivery)
    assert "e-stop" in robot.commands[-1].reason
    robot.send_chunk(executor.get_clock().now().nanoseconds, step=2)
    time.sleep(3 * DT)
    assert robot.commands[-1].hold
    robot.estop_pub.publish(Bool(data=False))
    assert wait_for(lambda: not executor.core.stopped)
    robot.send_chunk(executor.get_clock().now().nanoseconds, step=3)
    assert wait_for(lambda: robot.commands[-1].chunk_step == 3 and not robot.commands[-1].hold)


def test_the_action_nodes_deactivate_stops_motion(ros, loaded_tiny):
    from specprune_ros.ros.action_node import ActionNode
    context, spinner = ros
    executor, robot = start(ros)
    node = spinner.add(ActionNode(loaded=loaded_tiny, context=context))
    assert wait_for(lambda: executor.count_publishers("action_node/transition_event") > 0)
    robot.send_chunk(executor.get_clock().now().nanoseconds, step=1, size=50)
    assert wait_for(lambda: acting(robot.commands))
    asked = time.monotonic()
    node.trigger_deactivate()
    assert wait_for(lambda: robot.commands[-1].hold, timeout=2.0)
    assert time.monotonic() - asked < DT + 0.1            # within one period (plus DDS delivery)
    assert "deactivating" in robot.commands[-1].reason          # from the transition's start
    node.trigger_activate()
    assert wait_for(lambda: not executor.core.stopped)


def test_target_pose_rotates_by_the_axis_angle_delta():
    from specprune_ros.execution import Command
    current = PoseStamped()
    current.pose.orientation.w = 1.0
    action = np.array([0.0, 0.0, 0.0, 0.0, 0.0, np.pi / 2, 1.0])
    target = target_pose(current, Command(0.0, action), current.header.stamp)
    q = target.pose.orientation
    assert (q.x, q.y, q.z, q.w) == pytest.approx((0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)))
