"""Real rclpy over real Fast DDS: one ROS domain per test run, localhost discovery only."""
import os
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 wheels are installed by `make setup`")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402

os.environ.setdefault("ROS_DOMAIN_ID", str(101 + os.getpid() % 100))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"


@pytest.fixture(scope="session")
def loaded_tiny():
    from specprune_ros.model.checkpoint import load_tiny_random
    return load_tiny_random("cpu")


class Spinner:
    """An executor spinning some nodes in a background thread."""

    def __init__(self, context):
        self.executor = SingleThreadedExecutor(context=context)
        self.nodes = []
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:
            pass

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def shutdown(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(5.0)
        for node in self.nodes:     # no publisher (a latched instruction!) may outlive its test
            if hasattr(node, "shutdown"):
                node.shutdown()
            node.destroy_node()


@pytest.fixture
def ros():
    context = rclpy.Context()
    rclpy.init(context=context)
    spinner = Spinner(context)
    yield context, spinner
    spinner.shutdown()
    rclpy.shutdown(context=context)


def wait_for(predicate, timeout=15.0, period=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return False


def rgb_image(value, stamp_ns, size=64, encoding="rgb8"):
    from sensor_msgs.msg import Image
    img = np.full((size, size, 3), value, np.uint8)
    img[: size // 2, : size // 2, 0] = 200          # some structure
    msg = Image(height=size, width=size, encoding=encoding, is_bigendian=0, step=size * 3)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.data = img.tobytes()
    return msg
