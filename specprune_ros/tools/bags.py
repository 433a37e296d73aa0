"""rosbag2 files with the `rosbags` library (no ROS install): the synthetic episode writer,
a reader with clear errors, and the ActionChunk / PruningStats types for output bags.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import TopicsConfig
from ..synthetic import INSTRUCTION, JOINT_NAMES, episode

# The node's default topics in the root namespace (what make-bag writes).
_DEFAULT = TopicsConfig()
TOPIC_CAMERAS = tuple("/" + t for t in _DEFAULT.cameras(3))
TOPIC_PRIMARY, TOPIC_WRIST = TOPIC_CAMERAS[:2]
TOPIC_JOINTS = "/" + _DEFAULT.joint_states
TOPIC_INSTRUCTION = "/" + _DEFAULT.instruction
TOPIC_EXPERT = "/expert_action"          # recorded command the synthetic episode followed
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
STEP_NS = 100_000_000                    # the synthetic episode runs at 10 Hz
JOINT_RATE = 5                           # joint states per camera frame


class BagError(ValueError):
    """A bag that cannot be read as asked: missing, empty, truncated, wrong topics or types."""


def typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in ("ActionChunk", "PruningStats"):
        types.update(get_types_from_msg(message_definition(name), f"specprune_ros/msg/{name}"))
    store.register(types)
    return store


def message_definition(name: str) -> str:
    """The .msg text: from the installed share/ (venv or ROS install) or the source tree."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "msg" / f"{name}.msg"]
    for prefix in [os.environ.get("VIRTUAL_ENV", ""), *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]:
        if prefix:
            candidates.append(Path(prefix) / "share" / "specprune_ros" / "msg" / f"{name}.msg")
    for path in candidates:
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"{name}.msg not found (looked in {', '.join(str(c.parent) for c in candidates)})")


def _storage(name: str):
    from rosbags.rosbag2 import StoragePlugin

    try:
        return {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[name]
    except KeyError:
        raise BagError(f"unknown storage {name!r} (mcap, sqlite3)") from None


def _time(store, ns: int):
    Time = store.types["builtin_interfaces/msg/Time"]
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(store, ns: int, frame: str):
    return store.types["std_msgs/msg/Header"](stamp=_time(store, ns), frame_id=frame)


def write_synthetic_bag(out: str | Path, steps: int = 60, storage: str = "mcap", seed: int = 0,
                        start_ns: int = 1_700_000_000_000_000_000, topics: TopicsConfig | None = None,
                        header_clock_s: float | None = None, zero_stamps: bool = False) -> Path:
    """The synthetic episode as a rosbag2: cameras at 10 Hz, joint states at 50 Hz, the
    instruction (transient local) and the expert's commanded action, on the node's topics.

    What real recorders write, for tests: ``topics`` names the topics as a robot does (e.g.
    the Rizon4 camera topics), ``header_clock_s`` stamps headers on another clock than the
    recording's (sim time or a device clock starting there), ``zero_stamps`` leaves them zero.
    """
    from rosbags.rosbag2 import Writer

    out = Path(out)
    if out.exists():
        raise BagError(f"{out}: already exists (choose a new path)")
    if steps < 2:
        raise BagError(f"--steps {steps}: an episode needs at least 2 steps")
    store = typestore()
    T = store.types
    Image, JointState = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/JointState"]
    String, Array = T["std_msgs/msg/String"], T["std_msgs/msg/Float64MultiArray"]
    Layout = T["std_msgs/msg/MultiArrayLayout"]
    names = topics or _DEFAULT
    named = {TOPIC_PRIMARY: names.image_primary, TOPIC_WRIST: names.image_wrist, TOPIC_JOINTS: names.joint_states,
             TOPIC_INSTRUCTION: names.instruction, TOPIC_EXPERT: TOPIC_EXPERT}
    types = {TOPIC_PRIMARY: Image, TOPIC_WRIST: Image, TOPIC_JOINTS: JointState, TOPIC_INSTRUCTION: String,
             TOPIC_EXPERT: Array}
    shift = 0 if header_clock_s is None else int(header_clock_s * 1e9) - start_ns
    with Writer(out, version=9, storage_plugin=_storage(storage)) as writer:
        conns = {key: writer.add_connection(bag_name(named[key]), types[key].__msgtype__, typestore=store)
                 for key in named}

        def put(topic, ns, msg):
            writer.write(conns[topic], ns, store.serialize_cdr(msg, msg.__msgtype__))

        def header(ns, frame):
            return _header(store, 0 if zero_stamps else ns + shift, frame)

        put(TOPIC_INSTRUCTION, start_ns, String(data=INSTRUCTION))
        frames = episode(steps, seed)
        for i, step in enumerate(frames):
            t = start_ns + (i + 1) * STEP_NS
            nxt = frames[min(i + 1, len(frames) - 1)].joints
            for j in range(JOINT_RATE):            # joint states between frames, interpolated
                tj = t + j * STEP_NS // JOINT_RATE
                q = step.joints + (nxt - step.joints) * j / JOINT_RATE
                put(TOPIC_JOINTS, tj, JointState(header=header(tj, "base_link"), name=list(JOINT_NAMES),
                                                 position=np.asarray(q, np.float64),
                                                 velocity=np.zeros(0), effort=np.zeros(0)))
            for topic, img, frame in ((TOPIC_PRIMARY, step.primary, "camera_primary"),
                                      (TOPIC_WRIST, step.wrist, "camera_wrist")):
                h, w, _ = img.shape
                put(topic, t + 2_000_000, Image(header=header(t, frame), height=h, width=w, encoding="rgb8",
                                                is_bigendian=0, step=w * 3, data=img.reshape(-1).copy()))
            put(TOPIC_EXPERT, t, Array(layout=Layout(dim=[], data_offset=0), data=step.action.astype(np.float64)))
    return out


def bag_name(topic: str) -> str:
    """A node topic name as a recording names it (relative names live in the root namespace)."""
    return topic if topic.startswith("/") else "/" + topic


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    timestamp: int          # receive time recorded in the bag, ns
    msg: Any


class BagReader:
    """Messages of the wanted topics in bag-time order, with errors that name the problem."""

    def __init__(self, path: str | Path) -> None:
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag")
        self.store = typestore()
        try:
            self.reader = Reader(self.path)
            self.reader.open()
        except Exception as exc:   # rosbags raises ReaderError and storage-specific errors
            raise BagError(f"{self.path}: cannot open the bag ({_first_line(exc)})") from None
        if self.reader.message_count == 0:
            raise BagError(f"{self.path}: the bag holds no messages")

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def topics(self) -> dict[str, str]:
        return {c.topic: c.msgtype for c in self.reader.connections}

    def require(self, topic: str, types: tuple[str, ...]) -> None:
        found = self.topics.get(topic)
        if found is None:
            raise BagError(f"{self.path}: topic {topic} is missing (the bag has: "
                           f"{', '.join(sorted(self.topics)) or 'nothing'})")
        if found not in types:
            raise BagError(f"{self.path}: topic {topic} has type {found}, expected {' or '.join(types)}")

    def messages(self, topics: list[str]) -> Iterator[BagMessage]:
        conns = [c for c in self.reader.connections if c.topic in topics]
        try:
            for conn, timestamp, raw in self.reader.messages(connections=conns):
                try:
                    msg = self.store.deserialize_cdr(raw, conn.msgtype)
                except Exception as exc:
                    raise BagError(f"{self.path}: cannot decode a {conn.msgtype} message on {conn.topic} "
                                   f"({_first_line(exc)})") from None
                yield BagMessage(conn.topic, conn.msgtype, timestamp, msg)
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"{self.path}: reading failed ({_first_line(exc)}): truncated or corrupt bag") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
