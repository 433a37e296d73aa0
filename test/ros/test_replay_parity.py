"""Replay equals live: the observations replay assembles from a bag are the ones the running
node assembles when the same messages arrive over DDS."""
import numpy as np
import pytest

from .conftest import wait_for

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from specprune_ros.common.bags import TOPIC_JOINTS, TOPIC_PRIMARY, TOPIC_WRIST, BagReader, write_synthetic_bag  # noqa: E402
from specprune_ros.config import Config  # noqa: E402
from specprune_ros.evaluation.replay import bag_ticks, open_episode  # noqa: E402
from specprune_ros.ros.action_node import ActionNode  # noqa: E402
from specprune_ros.sensing.assembly import (
    ObservationAssembler,  # noqa: E402
    stamp_nanoseconds,  # noqa: E402
)

STEPS = 6


# Generous on purpose, on both sides alike: the test is about which observations are assembled,
# and a loaded CI machine must not turn a slow live step into a dropped frame.
CONFIG = Config.from_dict({"max_observation_age_s": 5.0})


def replayed_observations(bag):
    reader, topics = open_episode(bag, CONFIG)
    with reader:
        assembler = ObservationAssembler.for_node(CONFIG)
        observations = [assembler.assemble(now).observation for now in bag_ticks(reader, topics, CONFIG, assembler)]
        return [obs for obs in observations if obs is not None]


def to_rclpy(msg, offset_ns):
    """A rosbags message as the rclpy message a driver would publish, stamps moved by offset."""
    def stamp(header, target):
        target.header.stamp.sec, target.header.stamp.nanosec = divmod(stamp_nanoseconds(header) + offset_ns, 10**9)
        target.header.frame_id = header.frame_id
        return target
    if hasattr(msg, "encoding"):
        out = Image(height=msg.height, width=msg.width, encoding=msg.encoding, is_bigendian=msg.is_bigendian,
                    step=msg.step)
        out.data = bytes(msg.data)
        return stamp(msg.header, out)
    return stamp(msg.header, JointState(name=list(msg.name), position=[float(v) for v in msg.position]))


def test_live_node_assembles_the_same_observations_as_replay(ros, loaded_tiny, tmp_path):
    context, spinner = ros
    bag = write_synthetic_bag(tmp_path / "episode", STEPS, "mcap")
    expected = replayed_observations(bag)
    assert len(expected) == STEPS

    node = spinner.add(ActionNode(loaded=loaded_tiny, context=context,
                                  parameter_overrides=[Parameter("control_rate_hz", value=20.0),
                                                       Parameter("max_observation_age_s", value=5.0)]))
    seen = []
    step = node.policy.step

    def recording_step(obs):
        seen.append(obs)
        return step(obs)
    node.policy.step = recording_step

    driver = spinner.add(Node("parity_driver", context=context))
    pubs = {TOPIC_PRIMARY: driver.create_publisher(Image, "image_primary", 10),
            TOPIC_WRIST: driver.create_publisher(Image, "image_wrist", 10),
            TOPIC_JOINTS: driver.create_publisher(JointState, "joint_states", 50)}
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    driver.create_publisher(String, "instruction", latched).publish(String(data=expected[0].instruction))
    try:
        assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 10)
        assert wait_for(lambda: node.assembler.instruction == expected[0].instruction, 10)
        with BagReader(bag) as reader:
            messages = list(reader.messages(list(pubs)))
        offsets = []     # per frame: bag stamps are moved to "now" so nothing is stale on arrival
        frames = {}
        for m in messages:                               # group each camera frame with its joint states
            key = stamp_nanoseconds(m.msg.header) // 100_000_000
            frames.setdefault(key, []).append(m)
        for key in sorted(frames):
            batch = frames[key]
            offset = driver.get_clock().now().nanoseconds - stamp_nanoseconds(batch[0].msg.header)
            count = len(seen)
            # Joint states first, then the images, in the bag's receive order per topic.
            for m in sorted(batch, key=lambda m: (m.topic != TOPIC_JOINTS, m.timestamp)):
                pubs[m.topic].publish(to_rclpy(m.msg, offset))
            if any(m.topic == TOPIC_PRIMARY for m in batch):
                offsets.append(offset)
                assert wait_for(lambda: len(seen) > count, 20), f"the node took no observation at frame {key}"
    finally:
        node.shutdown()

    assert len(seen) == len(expected)
    for live, replayed, offset in zip(seen, expected, offsets):
        assert live.stamp_ns - offset == replayed.stamp_ns
        assert live.instruction == replayed.instruction
        np.testing.assert_array_equal(live.proprio, replayed.proprio)
        for a, b in zip(live.images, replayed.images):
            np.testing.assert_array_equal(a, b)
