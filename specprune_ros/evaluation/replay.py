"""`specprune replay`: run the pruned (and unpruned) policy over a recorded rosbag2 episode.

Observations are assembled by the node's own code (``sensing.assembly``) at the node's control
ticks in bag time, so replay sees what the live node would have seen. Writes summary.json,
steps.csv, plots and report.html; optionally a bag with the predicted ActionChunk and
PruningStats messages.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..common.bags import IMAGE_TYPES, TOPIC_EXPERT, BagError, BagMessage, BagReader, bag_name
from ..common.device import host_load
from ..common.progress import progress_bar
from ..config import Config
from ..control import ControlTick
from ..model.config import dimension_names
from ..observation import Observation
from ..policy import PolicyOutput, SpecPrunePolicy, load_model
from ..sensing.assembly import ObservationAssembler, stamp_nanoseconds
from .threads import fit_torch_threads

EXPERT_TYPES = ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/Float32MultiArray")


@dataclass
class ReplayStep:
    """What one control tick produced (kept for the plots)."""

    tick_ns: int
    stamp_ns: int
    pruned: PolicyOutput
    unpruned: PolicyOutput | None
    expert: np.ndarray | None


@dataclass
class ReplayRun:
    steps: list[ReplayStep] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    instruction: str = ""
    last_drop: str = ""
    time_base: str = "header"


def _bag_dir(path: Path) -> Path:
    """A bag directory, or a storage file inside one (rosbags reads the directory's metadata)."""
    if path.is_file():
        if (path.parent / "metadata.yaml").is_file():
            return path.parent
        raise BagError(f"{path}: a storage file without metadata.yaml beside it; give the bag directory")
    return path


class RecordedCommands:
    """The bag's recorded commands (``/expert_action``) on the header clock."""

    def __init__(self, window_ns: int) -> None:
        self.items: list[tuple[int, np.ndarray]] = []
        self.window_ns = window_ns

    def add(self, stamp_ns: int, command: np.ndarray) -> None:
        self.items.append((stamp_ns, command))

    def nearest(self, stamp_ns: int) -> np.ndarray | None:
        return _nearest(self.items, stamp_ns, self.window_ns)

    def since(self, previous_ns: int | None, stamp_ns: int) -> np.ndarray | None:
        """The commands executed after the previous observation, up to this one (rows)."""
        rows = [a for t, a in self.items if (previous_ns is None or t > previous_ns) and t <= stamp_ns]
        return np.stack(rows) if rows else None


@dataclass(frozen=True)
class EpisodeTopics:
    """The bag topics the node's inputs map to (``topics.*`` of the configuration)."""

    cameras: tuple[str, ...]
    joints: str | None              # None: not in the bag (fine for a model without proprio)
    instruction: str
    expert: str | None

    def all(self) -> list[str]:
        optional = [t for t in (self.joints, self.expert) if t]
        return [*self.cameras, self.instruction, *optional]


def open_episode(bag: Path, config: Config) -> tuple[BagReader, EpisodeTopics]:
    """Open a bag and check it has what the node would subscribe to, under the configured names."""
    node, names = config.node, config.topics
    reader = BagReader(_bag_dir(bag))
    try:
        cameras = tuple(bag_name(t) for t in names.cameras(node.num_images))
        keys = ("image_primary", "image_wrist", "image_extra")
        for key, topic in zip(keys, cameras):
            _require(reader, key, topic, IMAGE_TYPES)
        joints = bag_name(names.joint_states)
        if joints in reader.topics:            # required only by a model with proprio (checked at load)
            _require(reader, "joint_states", joints, ("sensor_msgs/msg/JointState",))
        else:
            joints = None
        instruction = bag_name(names.instruction)
        if not node.instruction:
            _require(reader, "instruction", instruction, ("std_msgs/msg/String",),
                     hint=" or give the instruction with -p instruction:=...")
    except BagError:
        reader.close()
        raise
    expert = TOPIC_EXPERT if reader.topics.get(TOPIC_EXPERT) in EXPERT_TYPES else None
    return reader, EpisodeTopics(cameras, joints, instruction, expert)


def _require(reader: BagReader, key: str, topic: str, types: tuple[str, ...], hint: str = "") -> None:
    """The topic the node input ``key`` maps to must be in the bag with one of ``types``."""
    found = reader.topics.get(topic)
    if found in types:
        return
    candidates = sorted(t for t, kind in reader.topics.items() if kind in types)
    what = f"has type {found}" if found else "is not in the bag"
    if not candidates:
        listed = ", ".join(sorted(reader.topics)) or "no topics"
        raise BagError(f"{reader.path}: the node's {key} input maps to {topic}, which {what}, and the bag has no "
                       f"{' / '.join(types)} topic at all (it has: {listed}): it cannot be replayed{hint}")
    raise BagError(f"{reader.path}: the node's {key} input maps to {topic}, which {what}; its {' / '.join(types)} "
                   f"topics: {', '.join(candidates)}. Map it with --remap {key}:={candidates[0]} or topics.{key} "
                   f"in the --params file{hint}")


class TimeBase:
    """Header stamps, falling back to the recording time for messages stamped zero.

    Real recordings stamp headers with a device clock or sim time while the recorder writes
    wall time: staleness is only meaningful on one clock, so everything runs on header time.
    """

    def __init__(self) -> None:
        self.header = 0              # primary images on header time
        self.recording = 0           # primary images stamped zero (recording time used)
        self.offset: int | None = None   # header - recording time, from the latest primary image

    def stamp(self, m: BagMessage, primary: bool = False) -> int:
        header = stamp_nanoseconds(m.msg.header)
        if primary:
            if header:
                self.header += 1
                self.offset = header - m.timestamp
            else:
                self.recording += 1
            return header or m.timestamp
        # Other streams stamped zero: their recording time, moved onto the primary camera's clock.
        return header or self.from_recording(m.timestamp)

    def from_recording(self, timestamp: int) -> int:
        """A recording time (messages without a header, or stamped zero) on the header clock."""
        return timestamp + (self.offset or 0)

    @property
    def name(self) -> str:
        if self.header and self.recording:
            return "mixed (header stamps; recording time for zero stamps)"
        return "recording (all header stamps zero)" if self.recording else "header"


def bag_ticks(reader: BagReader, topics: EpisodeTopics, config: Config, assembler: ObservationAssembler,
              time_base: TimeBase | None = None, start_s: float = 0.0, duration_s: float | None = None,
              recorded: RecordedCommands | None = None) -> Iterator[int]:
    """The node's control ticks replayed on the bag's header clock: every message up to a tick is
    fed to the node's assembler, then the tick time is yielded (the caller runs the tick). Ticks
    follow the primary camera's header time; ``start_s`` / ``duration_s`` (from the first primary
    image) choose a window, messages before it still fill the buffers."""
    clock = time_base or TimeBase()
    period = int(round(1e9 / config.node.control_rate_hz))
    first: int | None = None
    next_tick: int | None = None
    last = 0

    def in_window(now: int) -> bool:
        begin = first + int(start_s * 1e9)
        return now >= begin and (duration_s is None or now <= begin + int(duration_s * 1e9))

    def ticks_until(t: int) -> Iterator[int]:
        nonlocal next_tick
        while next_tick is not None and t > next_tick:
            if in_window(next_tick):
                yield next_tick
            next_tick += period

    for m in reader.messages(topics.all()):
        if m.topic == topics.cameras[0]:
            t = clock.stamp(m, primary=True)
            if first is None:
                first, next_tick = t, t        # the first tick sees the first frame
            yield from ticks_until(t)
            if duration_s is not None and t > first + int((start_s + duration_s) * 1e9) + period:
                return
            last = max(last, t)
            assembler.add_image(0, t, m.msg)
        elif m.topic == topics.instruction:
            assembler.set_instruction(m.msg.data)
        elif m.topic == topics.joints:
            assembler.add_joint_state(clock.stamp(m), list(m.msg.name), list(m.msg.position))
        elif m.topic == topics.expert:
            if recorded is not None:
                recorded.add(clock.from_recording(m.timestamp), np.asarray(m.msg.data, dtype=np.float64))
        else:
            assembler.add_image(topics.cameras.index(m.topic), clock.stamp(m), m.msg)
    yield from ticks_until(last + period + 1)


def run_replay(bag: Path, config: Config, compare: bool = True,
               progress: Callable[[int, int], None] | None = None, motion: str = "predicted",
               start_s: float = 0.0, duration_s: float | None = None, max_steps: int | None = None,
               step_latency_ms: float = 0.0) -> ReplayRun:
    """``motion="recorded"`` gives the controller the bag's recorded command as the measured
    end-effector motion (instead of the previous prediction), e.g. for random-weight models.

    The node's after-step rule applies on the recorded timeline: an action whose observation is
    older than ``max_observation_age_s`` at its tick plus the declared ``step_latency_ms`` is
    dropped as stale, as the node would drop it. The measured latency never enters the rule, so
    the same bag gives the same steps on a fast, slow or busy host.
    """
    node = config.node
    reader, topics = open_episode(bag, config)
    with reader:
        total = sum(c.msgcount for c in reader.reader.connections if c.topic == topics.cameras[0])
        if max_steps is not None:
            total = min(total, max_steps)
        fit_torch_threads()
        loaded = load_model(config)
        uses_proprio = loaded.model.proprio_projector is not None
        if uses_proprio and topics.joints is None:
            _require(reader, "joint_states", bag_name(config.topics.joint_states), ("sensor_msgs/msg/JointState",),
                     hint=" (the model uses proprio)")
        pruned = SpecPrunePolicy(loaded, config)
        unpruned = SpecPrunePolicy(loaded, config.replace(**{"pruning.enabled": False})) if compare else None
        assembler = ObservationAssembler.for_node(config, uses_proprio)
        run = ReplayRun()
        clock = TimeBase()
        recorded = RecordedCommands(int(round(1e9 / node.control_rate_hz)))
        previous: list[int | None] = [None]          # stamp of the previous observation
        unpruned_out: list[PolicyOutput | None] = [None]

        def prepare(obs: Observation) -> None:
            if motion == "recorded":       # what the robot executed since the previous observation
                executed = recorded.since(previous[0], obs.stamp_ns)
                executed = recorded.nearest(obs.stamp_ns) if executed is None else executed
                obs.motion = None if executed is None else np.atleast_2d(executed)[:, :6]
            previous[0] = obs.stamp_ns

        def step(obs: Observation) -> PolicyOutput:
            if unpruned is not None and len(run.steps) % 2:    # alternate the order: no order bias
                unpruned_out[0] = unpruned.step(obs)
                return pruned.step(obs)
            out = pruned.step(obs)
            unpruned_out[0] = unpruned.step(obs) if unpruned is not None else None
            return out

        tick = ControlTick(assembler, step, prepare)
        step_ns = int(round(step_latency_ms * 1e6))
        for now in bag_ticks(reader, topics, config, assembler, clock, start_s, duration_s, recorded):
            if max_steps is not None and len(run.steps) >= max_steps:
                break
            result = tick.run(now, lambda out: now + step_ns)    # the node's clock after the step
            if result.output is None:
                run.last_drop = result.reason if result.dropped else run.last_drop
                continue
            stamp = result.observation.stamp_ns
            run.steps.append(ReplayStep(now, stamp, result.output, unpruned_out[0], recorded.nearest(stamp)))
            if progress:
                progress(len(run.steps), total)
    run.drops = dict(assembler.drops)
    run.instruction = assembler.instruction
    run.time_base = clock.name
    if not run.steps:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(run.drops.items())) or "no complete observation"
        last = f"; last: {run.last_drop}" if run.last_drop else ""
        raise BagError(f"{bag}: no observation produced an action (dropped: {reasons}{last})")
    return run


def _nearest(items: list[tuple[int, np.ndarray]], stamp: int, window: int) -> np.ndarray | None:
    best = min(items, key=lambda item: abs(item[0] - stamp), default=None)
    return best[1] if best is not None and abs(best[0] - stamp) <= window else None


# ---- results ---------------------------------------------------------------------------------------

def step_rows(run: ReplayRun) -> list[dict[str, Any]]:
    rows = []
    for s in run.steps:
        st = s.pruned.stats
        dims = dimension_names(s.pruned.actions.shape[1])
        row: dict[str, Any] = {
            "step": st.step, "stamp_s": s.stamp_ns * 1e-9,
            "latency_pruned_ms": st.latency_ms,
            "latency_unpruned_ms": s.unpruned.stats.latency_ms if s.unpruned else math.nan,
            "overhead_ms": st.overhead_ms, "vision_tokens_total": st.vision_tokens_total,
            "vision_tokens_kept": st.vision_tokens_kept, "global_selected": st.global_selected,
            "local_selected": st.local_selected, "dynamic_selected": st.dynamic_selected,
            "fine_mode": int(st.fine_mode), "translation_speed": st.translation_speed,
            "rotation_speed": st.rotation_speed, "history_frames": st.history_frames,
            "history_age_s": st.history_age_s,
            "global_recall": st.global_recall, "flops_ratio": st.flops_ratio, "fallback": st.fallback_reason,
        }
        if s.unpruned is not None:
            deviation = np.abs(s.pruned.actions - s.unpruned.actions).mean(axis=0)
            row.update({f"deviation_{d}": float(v) for d, v in zip(dims, deviation)})
            row["action_l1_vs_unpruned"] = float(deviation.mean())
        if s.expert is not None:
            n = min(len(s.expert), s.pruned.actions.shape[1])
            row["expert_l1_pruned"] = float(np.abs(s.pruned.actions[0, :n] - s.expert[:n]).mean())
            if s.unpruned is not None:
                row["expert_l1_unpruned"] = float(np.abs(s.unpruned.actions[0, :n] - s.expert[:n]).mean())
        rows.append(row)
    return rows


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def summarize(run: ReplayRun, rows: list[dict[str, Any]], bag: Path, config: Config, compare: bool,
              motion: str = "predicted") -> dict[str, Any]:
    lat_p = [r["latency_pruned_ms"] for r in rows]
    summary: dict[str, Any] = {
        "bag": str(bag), "model": config.node.model_path, "instruction": run.instruction,
        "steps": len(rows),
        "latency_ms": {"pruned": {"p50": _pct(lat_p, 50), "p95": _pct(lat_p, 95)}},
        "overhead_ms": {"p50": _pct([r["overhead_ms"] for r in rows], 50)},
        "vision_tokens": {"total": rows[0]["vision_tokens_total"],
                          "kept_mean": float(np.mean([r["vision_tokens_kept"] for r in rows]))},
        "flops_ratio_mean": float(np.mean([r["flops_ratio"] for r in rows])),
        "fine_mode_fraction": float(np.mean([r["fine_mode"] for r in rows])),
        "global_recall_mean": float(np.nanmean([r["global_recall"] for r in rows]))
        if any(not math.isnan(r["global_recall"]) for r in rows) else None,
        "unpruned_fallback_steps": sum(1 for r in rows if r["fallback"]),
        "controller_motion": motion,
        "dropped_observations": run.drops,
        "params": config.flat(),
    }
    if compare:
        lat_u = [r["latency_unpruned_ms"] for r in rows]
        summary["latency_ms"]["unpruned"] = {"p50": _pct(lat_u, 50), "p95": _pct(lat_u, 95)}
        summary["speedup_p50"] = _pct(lat_u, 50) / _pct(lat_p, 50)
        dims = [k.removeprefix("deviation_") for k in rows[0] if k.startswith("deviation_")]
        summary["action_l1_vs_unpruned"] = {
            "mean": float(np.mean([r["action_l1_vs_unpruned"] for r in rows])),
            "max": float(np.max([r["action_l1_vs_unpruned"] for r in rows])),
            "per_dimension": {d: float(np.mean([r[f"deviation_{d}"] for r in rows])) for d in dims},
        }
    experts = [r for r in rows if "expert_l1_pruned" in r]
    if experts:
        summary["action_l1_vs_recorded"] = {"topic": TOPIC_EXPERT, "steps": len(experts),
                                            "pruned": float(np.mean([r["expert_l1_pruned"] for r in experts]))}
        if compare:
            summary["action_l1_vs_recorded"]["unpruned"] = float(np.mean([r["expert_l1_unpruned"] for r in experts]))
    return summary


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def replay(bag: str | Path, out: str | Path, config: Config, compare: bool = True, output_bag: str | None = None,
           show_progress: bool = False, motion: str = "predicted", start_s: float = 0.0,
           duration_s: float | None = None, max_steps: int | None = None,
           step_latency_ms: float = 0.0) -> dict[str, Any]:
    """The whole job; nothing is written to ``out`` unless the replay succeeded."""
    from .report import write_plots, write_report

    bag, out = Path(bag), Path(out)
    progress = progress_bar("replay", "steps") if show_progress else None
    run = run_replay(bag, config, compare, progress, motion, start_s, duration_s, max_steps, step_latency_ms)
    if show_progress:
        print(file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    rows = step_rows(run)
    summary = summarize(run, rows, bag, config, compare, motion)
    summary["time_base"] = run.time_base
    summary["host"] = host_load()
    summary["window"] = {"start_s": start_s, "duration_s": duration_s, "max_steps": max_steps}
    summary["age_rule"] = {"timeline": "recorded", "step_latency_ms": step_latency_ms,
                           "max_observation_age_s": config.node.max_observation_age_s}
    write_csv(rows, out / "steps.csv")
    summary["plots"] = write_plots(run, rows, out)
    if output_bag:
        summary["output_bag"] = str(write_output_bag(run, Path(output_bag), config.node.action_dt))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=_json_default))
    write_report(summary, out)
    summary["report"] = str(out / "report.html")
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value).__name__)


def write_output_bag(run: ReplayRun, path: Path, dt: float) -> Path:
    """The predicted ActionChunk and PruningStats (pruned policy) as a rosbag2 (MCAP)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ..common.bags import typestore

    if path.exists():
        raise BagError(f"{path}: already exists (choose a new path for --output-bag)")
    store = typestore()
    T = store.types
    Chunk, Stats = T["specprune_ros/msg/ActionChunk"], T["specprune_ros/msg/PruningStats"]
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        c_chunk = writer.add_connection("/action_chunk", Chunk.__msgtype__, typestore=store)
        c_stats = writer.add_connection("/pruning_stats", Stats.__msgtype__, typestore=store)
        for s in run.steps:
            header = Header(stamp=Time(sec=s.stamp_ns // 10**9, nanosec=s.stamp_ns % 10**9), frame_id="camera_primary")
            chunk = Chunk(header=header, **s.pruned.chunk_fields(dt))
            stats = Stats(header=header, **s.pruned.stats_fields())
            writer.write(c_chunk, s.tick_ns, store.serialize_cdr(chunk, Chunk.__msgtype__))
            writer.write(c_stats, s.tick_ns, store.serialize_cdr(stats, Stats.__msgtype__))
    return path
