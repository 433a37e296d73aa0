"""The generated messages: importable from the venv alone, and they travel over real DDS."""
import os
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 wheels are installed by `make setup`")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from specprune_ros.msg import ActionChunk, PruningStats  # noqa: E402


def chunk():
    msg = ActionChunk()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 12, 345
    msg.header.frame_id = "camera_primary"
    msg.step, msg.chunk_size, msg.action_dim, msg.dt = 7, 2, 3, 0.25  # float32-exact
    msg.dimension_names = ["x", "y", "z"]
    msg.actions = [0.5, -1.0, 2.0, 0.0, 0.25, 1.5]
    return msg


def test_interface_fields_exist():
    stats = PruningStats()
    for name in ("step", "pruning_enabled", "fine_mode", "alpha", "vision_tokens_total", "vision_tokens_kept",
                 "global_selected", "local_selected", "dynamic_selected", "tokens_per_layer", "history_frames",
                 "history_age_s",
                 "translation_speed", "rotation_speed", "global_recall", "flops_ratio", "latency_ms",
                 "overhead_ms"):
        assert hasattr(stats, name), name


def test_cdr_round_trip():
    msg = chunk()
    back = deserialize_message(serialize_message(msg), ActionChunk)
    assert back == msg
    assert list(back.actions) == pytest.approx([0.5, -1.0, 2.0, 0.0, 0.25, 1.5])


@pytest.fixture
def ros_context():
    # One DDS domain per test run, localhost discovery only.
    os.environ.setdefault("ROS_DOMAIN_ID", str(50 + os.getpid() % 100))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def test_publish_and_receive_over_dds(ros_context):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    received = []
    pub_node = Node("msg_test_pub", context=ros_context)
    sub_node = Node("msg_test_sub", context=ros_context)
    pub = pub_node.create_publisher(PruningStats, "pruning_stats", 10)
    sub_node.create_subscription(PruningStats, "pruning_stats", received.append, 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(pub_node)
    executor.add_node(sub_node)
    stats = PruningStats(step=3, fine_mode=True, alpha=0.8, tokens_per_layer=[600, 600, 250, 200])
    deadline = time.monotonic() + 10.0
    try:
        while not received and time.monotonic() < deadline:
            pub.publish(stats)
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
    assert received, "no PruningStats arrived over DDS within 10 s"
    got = received[0]
    assert got.step == 3 and got.fine_mode and list(got.tokens_per_layer) == [600, 600, 250, 200]
