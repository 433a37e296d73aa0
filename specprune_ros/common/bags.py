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


def stamp_header(store, ns: int, frame: str):
    return store.types["std_msgs/msg/Header"](stamp=_time(store, ns), frame_id=frame)


@dataclass(frozen=True)
class Recording:
    """How the synthetic episode is recorded: what real recorders and drivers write."""

    storage: str = "mcap"                 # mcap | sqlite3
    topics: TopicsConfig | None = None    # topic names as a robot has them (default: the node's)
    header_clock_s: float | None = None   # headers on another clock (sim time, a device clock)
    zero_stamps: bool = False             # headers left zero (some drivers)
    compression: str = "none"             # none | file | message (zstd, as ros2 bag record --compression-*)
    split: int = 1                        # storage files (as --max-bag-duration splits a recording)
    image_format: str = "raw"             # raw (sensor_msgs/Image) | jpeg (CompressedImage)
    encoding: str = "rgb8"                # rgb8 | bgr8 | mono8 for raw images

    def __post_init__(self) -> None:
        for name, value, allowed in (("storage", self.storage, STORAGES), ("compression", self.compression,
                                     ("none", "file", "message")), ("image_format", self.image_format, ("raw", "jpeg")),
                                     ("encoding", self.encoding, ("rgb8", "bgr8", "mono8"))):
            if value not in allowed:
                raise BagError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.split < 1:
            raise BagError(f"split {self.split}: needs at least 1 file")


STORAGES = ("mcap", "sqlite3")


def write_synthetic_bag(out: str | Path, steps: int = 60, storage: str = "mcap", seed: int = 0,
                        start_ns: int = 1_700_000_000_000_000_000, topics: TopicsConfig | None = None,
                        header_clock_s: float | None = None, zero_stamps: bool = False,
                        recording: Recording | None = None) -> Path:
    """The synthetic episode as a rosbag2: cameras at 10 Hz, joint states at 50 Hz, the
    instruction (transient local) and the expert's commanded action, on the node's topics.

    What real recorders write, for tests (``recording``, or the shorthand keywords): ``topics``
    names the topics as a robot does (e.g. the Rizon4 camera topics), ``header_clock_s`` stamps
    headers on another clock than the recording's (sim time or a device clock starting there),
    ``zero_stamps`` leaves them zero; zstd compression, split files, JPEG or mono / bgr8 cameras.
    """
    rec = recording or Recording(storage, topics, header_clock_s, zero_stamps)
    out = Path(out)
    if out.exists():
        raise BagError(f"{out}: already exists (choose a new path)")
    if steps < 2:
        raise BagError(f"--steps {steps}: an episode needs at least 2 steps")
    store = typestore()
    T = store.types
    shift = 0 if rec.header_clock_s is None else int(rec.header_clock_s * 1e9) - start_ns

    def header(ns, frame):
        return stamp_header(store, 0 if rec.zero_stamps else ns + shift, frame)

    records: list[tuple[str, int, Any]] = [(TOPIC_INSTRUCTION, start_ns, T["std_msgs/msg/String"](data=INSTRUCTION))]
    frames = episode(steps, seed)
    for i, step in enumerate(frames):
        t = start_ns + (i + 1) * STEP_NS
        nxt = frames[min(i + 1, len(frames) - 1)].joints
        for j in range(JOINT_RATE):            # joint states between frames, interpolated
            tj = t + j * STEP_NS // JOINT_RATE
            q = step.joints + (nxt - step.joints) * j / JOINT_RATE
            records.append((TOPIC_JOINTS, tj, joint_state_message(T, header(tj, "base_link"), JOINT_NAMES, q)))
        for topic, img, frame in ((TOPIC_PRIMARY, step.primary, "camera_primary"),
                                  (TOPIC_WRIST, step.wrist, "camera_wrist")):
            records.append((topic, t + 2_000_000, camera_message(T, rec, header(t, frame), img)))
        records.append((TOPIC_EXPERT, t, command_message(T, step.action)))
    parts = np.array_split(np.arange(len(records)), rec.split)
    out.mkdir(parents=True)
    metadata = []
    for k, index in enumerate(parts):
        part = out / f"part_{k}"
        write_records(part, rec, store, [records[i] for i in index])
        metadata.append(part)
    _merge_parts(out, metadata)
    return out


def episode_connections(rec: Recording) -> dict[str, tuple[str, str]]:
    """The topics of an episode bag, by the node's default name: (topic as recorded, message type)."""
    names = rec.topics or _DEFAULT
    image = "sensor_msgs/msg/CompressedImage" if rec.image_format == "jpeg" else "sensor_msgs/msg/Image"
    return {TOPIC_PRIMARY: (bag_name(names.image_primary), image), TOPIC_WRIST: (bag_name(names.image_wrist), image),
            TOPIC_JOINTS: (bag_name(names.joint_states), "sensor_msgs/msg/JointState"),
            TOPIC_INSTRUCTION: (bag_name(names.instruction), "std_msgs/msg/String"),
            TOPIC_EXPERT: (TOPIC_EXPERT, "std_msgs/msg/Float64MultiArray")}


def joint_state_message(T, header, names, positions):
    return T["sensor_msgs/msg/JointState"](header=header, name=list(names), position=np.asarray(positions, np.float64),
                                           velocity=np.zeros(0), effort=np.zeros(0))


def command_message(T, values):
    """The executed (or commanded) action, as recorded on /expert_action."""
    return T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                               data=np.asarray(values, np.float64))


def camera_message(T, rec: Recording, header, img: np.ndarray):
    import cv2

    if rec.image_format == "jpeg":
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        return T["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=data.reshape(-1))
    if rec.encoding == "mono8":
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    elif rec.encoding == "bgr8":
        img = np.ascontiguousarray(img[..., ::-1])
    h, w, c = img.shape
    return T["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding=rec.encoding, is_bigendian=0,
                                      step=w * c, data=img.reshape(-1).copy())


def write_records(path: Path, rec: Recording, store, records: list[tuple[str, int, Any]]) -> None:
    """(node topic key, receive time ns, message) records as one bag, recorded as ``rec`` says."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, Writer

    connections = episode_connections(rec)

    writer = Writer(path, version=9, storage_plugin=_storage(rec.storage))
    if rec.compression != "none":                 # before open: rosbags refuses it after
        writer.set_compression(CompressionMode[rec.compression.upper()], CompressionFormat.ZSTD)
    with writer:
        conns = {key: writer.add_connection(topic, msgtype, typestore=store)
                 for key, (topic, msgtype) in connections.items()}
        for key, ns, msg in records:
            writer.write(conns[key], ns, store.serialize_cdr(msg, msg.__msgtype__))


def _merge_parts(out: Path, parts: list[Path]) -> None:
    """One bag directory from the parts, as a split recording: storage files side by side, one
    metadata.yaml listing them in order with the totals."""
    import yaml

    infos = []
    for k, part in enumerate(parts):
        info = yaml.safe_load((part / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        for old in info["relative_file_paths"]:
            suffix = old.split(".", 1)[1] if "." in old else ""
            new = f"{out.name}_{k}.{suffix}" if suffix else f"{out.name}_{k}"
            (part / old).rename(out / new)
            info["relative_file_paths"] = [new]
            for entry in info.get("files") or []:
                entry["path"] = new
        infos.append(info)
        (part / "metadata.yaml").unlink()
        part.rmdir()
    merged = dict(infos[0])
    merged["relative_file_paths"] = [p for i in infos for p in i["relative_file_paths"]]
    merged["files"] = [f for i in infos for f in i.get("files") or []]
    merged["message_count"] = sum(i["message_count"] for i in infos)
    start = min(i["starting_time"]["nanoseconds_since_epoch"] for i in infos)
    end = max(i["starting_time"]["nanoseconds_since_epoch"] + i["duration"]["nanoseconds"] for i in infos)
    merged["starting_time"] = {"nanoseconds_since_epoch": start}
    merged["duration"] = {"nanoseconds": end - start}
    counts: dict[str, dict] = {}
    for info in infos:
        for entry in info["topics_with_message_count"]:
            name = entry["topic_metadata"]["name"]
            if name in counts:
                counts[name]["message_count"] += entry["message_count"]
            else:
                counts[name] = {"topic_metadata": entry["topic_metadata"], "message_count": entry["message_count"]}
    merged["topics_with_message_count"] = list(counts.values())
    (out / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": merged}, sort_keys=False))


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
