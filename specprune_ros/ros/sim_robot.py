"""The MuJoCo tabletop task as a robot on ROS 2 (``specprune sim robot``).

It publishes what a robot's drivers publish - both cameras (``sensor_msgs/Image`` on the params
file's ``topics.image_primary`` / ``topics.image_wrist``), the joint states (the 8 proprio values
under ``joint_names``), the end-effector pose (``topics.eef_pose``) and each episode's instruction
(latched) - and moves by the chunk executor's ``ActionCommand``s on ``topics.command`` (a hold
keeps the pose and the gripper). Episodes run over the given seeds; ``sim/reset`` (std_srvs/Trigger)
ends the current one early. Each episode's outcome goes to ``sim/episode`` (a JSON string) and, one
JSON object per line, to the log file.

Two clocks:

* ``lockstep`` (deterministic): the robot publishes ``/clock`` (run the other nodes with
  ``use_sim_time``) and holds it at every action period until the command for that period is in;
  at the action node's query periods (the multiples of its control period) it waits for a command
  from the chunk observed at that very period. The policy's speed then changes nothing but the
  wall time.
* ``realtime``: the robot steps every ``action_dt`` of wall time, stamps with the system clock and
  applies the newest command (none since the last period: hold) - what a real arm sees, latency
  and all.

The delay clock (``--delay-clock``, lockstep; the action node with ``emulated_latency`` publishing
to ``sim/computed_chunk``): the robot holds its clock at each of the node's query periods until that
period's chunk is computed, and hands it to the chunk executor (on ``topics.action_chunk``) only at
the period its emulated latency (the step's PruningStats.latency_ms) makes it due, executing the old
chunk's actions meanwhile. It plans the node's next query with the node's own rule
(``QuerySchedule.plan``, fed the same latencies), so both agree on every period without asking.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterEvent
from rclpy.node import Node
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..config import NODE_NAME, Config, iter_specs
from ..execution import QuerySchedule
from ..latency import latency_periods
from ..msg import ActionChunk, ActionCommand, PruningStats
from .parameters import declare_all
from .qos import LATCHED
from .sim_stack import COMPUTED_CHUNK_TOPIC
from .spin import spin

ROBOT_NODE_NAME = "sim_robot"
KNOBS = tuple(name for name, _ in iter_specs() if name.startswith("topics.")) + (
    "action_dt", "control_rate_hz", "joint_names")
PROPRIO_NAMES = ("eef_x", "eef_y", "eef_z", "eef_rx", "eef_ry", "eef_rz", "finger_left", "finger_right")
CLOCKS = ("lockstep", "realtime")
FIRST_EPISODE_S = 100              # sim clock at the first episode (0 is "no time yet" to ROS)
EPISODE_GAP_S = 10.0               # clock between episodes: beyond any action node's episode_gap_s
LOCKSTEP_TIMEOUT_S = 60.0          # the longest wall-clock wait for a period's command
STACK_WAIT_S = 120.0               # for the action node and the executor to come up
CLOCK_REPEAT_S = 0.5               # lockstep: /clock again while waiting (for late subscribers)
HOLD_GRACE_S = 0.2                 # lockstep, executor holding: how long a non-query period waits
INSTRUCTION_WAIT_S = 2.0           # for the action node to take a new episode's instruction


@dataclass
class EpisodeLog:
    """One episode as ``sim eval`` reads it (its per-query lists are the action node's PruningStats)."""

    seed: int
    instruction: str
    clock: str
    success: bool = False
    failure: str = ""
    steps: int = 0
    holds: int = 0                 # periods executed as a hold
    start_holds: int = 0           # of those, before the episode's first action (the first chunk on its way)
    skipped: int = 0               # actions skipped because their time had passed
    clamped: int = 0
    timeouts: int = 0              # lockstep: periods whose command never came
    late_periods: int = 0          # real time: periods the robot's own step overran (the schedule restarts)
    period_s: float = 0.0          # the achieved period: the episode's duration on its clock / steps
    drops: dict[str, int] = field(default_factory=dict)      # the action node's drop counters so far
    chunk_age_s: list[float] = field(default_factory=list)   # per executed action: its observation's age
    latency_ms: list[float] = field(default_factory=list)
    kept_tokens: list[int] = field(default_factory=list)
    flops_ratio: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    fine_mode: list[bool] = field(default_factory=list)


class SimRobotNode(Node):
    def __init__(self, seeds: Sequence[int], clock: str = "lockstep", log: str | Path | None = None,
                 layout: str | None = None, max_steps: int | None = None, delay_clock: bool = False,
                 **node_kwargs) -> None:
        from ..sim import DEFAULT_LAYOUT
        from ..sim.env import MAX_STEPS

        if clock not in CLOCKS:
            raise ValueError(f"clock {clock!r}: one of {', '.join(CLOCKS)}")
        if delay_clock and clock != "lockstep":
            raise ValueError("the delay clock runs on the lockstep clock (emulated latency in simulated time)")
        super().__init__(ROBOT_NODE_NAME, **node_kwargs)
        self.config = declare_all(self, Config(), KNOBS)
        node, topics = self.config.node, self.config.topics
        self.seeds, self.clock_mode = list(seeds), clock
        self.layout, self.max_steps = layout or DEFAULT_LAYOUT, max_steps or MAX_STEPS
        self.log_path = Path(log) if log else None
        self.dt_ns = round(node.action_dt * 1e9)
        self.query_ns = round(1e9 / node.control_rate_hz)
        self.names = list(node.joint_names) or list(PROPRIO_NAMES)
        self.episodes: list[EpisodeLog] = []
        self.finished = threading.Event()
        self._cv = threading.Condition()
        self._commands: dict[int, list[ActionCommand]] = {}      # period stamp -> commands for it
        self._latest: ActionCommand | None = None
        self._stats: list[PruningStats] = []
        self._instruction_taken = ""
        self._reset = threading.Event()
        self._stop = threading.Event()
        self.image_pubs = [self.create_publisher(Image, t, 5) for t in topics.cameras(2)]
        self.joint_pub = self.create_publisher(JointState, topics.joint_states, 5)
        self.pose_pub = self.create_publisher(PoseStamped, topics.eef_pose, 5)
        self.instruction_pub = self.create_publisher(String, topics.instruction, LATCHED)
        self.episode_pub = self.create_publisher(String, "sim/episode", LATCHED)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if clock == "lockstep" else None
        self.create_subscription(ActionCommand, topics.command, self._on_command, 50)
        self.create_subscription(PruningStats, topics.pruning_stats, self._on_stats, 50)
        self.create_subscription(ParameterEvent, "/parameter_events", self._on_parameter_event, 10)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._drops: dict[str, int] = {}
        self.create_service(Trigger, "sim/reset", self._on_reset)
        self.delay = _DelayedDelivery(self, self.dt_ns, self.query_ns) if delay_clock else None
        self._worker = threading.Thread(target=self._run, name="sim-robot", daemon=True)
        self._worker.start()

    # ---- inputs (executor thread) -------------------------------------------------------------------
    def _on_command(self, msg: ActionCommand) -> None:
        with self._cv:
            self._commands.setdefault(_ns(msg.header.stamp), []).append(msg)
            self._latest = msg
            self._cv.notify_all()

    def _on_stats(self, msg: PruningStats) -> None:
        with self._cv:
            self._stats.append(msg)
            if self.delay is not None:
                self.delay.latency_ms[_ns(msg.header.stamp)] = float(msg.latency_ms)
            self._cv.notify_all()

    def _on_computed_chunk(self, msg: ActionChunk) -> None:
        with self._cv:
            self.delay.computed[_ns(msg.header.stamp)] = msg
            self._cv.notify_all()

    def _on_parameter_event(self, msg: ParameterEvent) -> None:
        if msg.node != self._action_node():
            return
        for p in (*msg.new_parameters, *msg.changed_parameters):
            if p.name == "instruction":
                with self._cv:
                    self._instruction_taken = p.value.string_value
                    self._cv.notify_all()

    def _action_node(self) -> str:
        return f"{self.get_namespace().rstrip('/')}/{NODE_NAME}"

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{self._action_node()}: inference":
                drops = {v.key.removeprefix("dropped_"): int(v.value) for v in status.values
                         if v.key.startswith("dropped_")}
                with self._cv:
                    self._drops = drops

    def _on_reset(self, request, response):
        self._reset.set()
        response.success, response.message = True, "the current episode ends at the next period"
        return response

    # ---- episodes (worker thread) -------------------------------------------------------------------
    def _run(self) -> None:
        from ..sim.env import TabletopEnv  # MuJoCo's GL context belongs to the thread that makes it

        env = None
        try:
            env = TabletopEnv(max_steps=self.max_steps, layout=self.layout)
            self._wait_for_stack()
            start = FIRST_EPISODE_S * 10**9
            for seed in self.seeds:
                if self._stop.is_set():
                    break
                episode, end = self._episode(env, seed, start)
                if episode is None:            # stopped mid-episode (Ctrl-C): not an outcome
                    self.get_logger().info(f"seed {seed}: interrupted, not counted")
                    break
                self.episodes.append(episode)
                self._report(episode)
                start = -(-(end + round(EPISODE_GAP_S * 1e9)) // self.query_ns) * self.query_ns
        except Exception as exc:   # a dead worker would leave the evaluation waiting: say why, then end
            self.get_logger().error(f"sim robot failed: {type(exc).__name__}: {exc}")
        finally:
            if env is not None:
                env.close()
            self.finished.set()

    def _wait_for_stack(self) -> None:
        """Start once the action node reads the cameras and the executor sends commands (a model
        loads for seconds; a lockstep clock published before they listen would be lost)."""
        topics = self.config.topics
        deadline = time.monotonic() + STACK_WAIT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.count_subscribers(topics.image_primary) > 0 and self.count_publishers(topics.command) > 0:
                return
            time.sleep(0.1)
        if not self._stop.is_set():
            raise RuntimeError(f"no action node on {topics.image_primary} or no chunk executor on {topics.command} "
                               f"after {STACK_WAIT_S:g} s")

    def _now_ns(self, sim_ns: int) -> int:
        return sim_ns if self.clock_pub is not None else self.get_clock().now().nanoseconds

    def _next_period(self, t: int, episode: EpisodeLog) -> int:
        """The next period's start: ``t + action_dt`` on a fixed schedule - the time the robot spends
        stepping and rendering must not stretch every period. In real time, a step that ran past
        the whole next period loses it: the schedule restarts at now (counted as late)."""
        if self.clock_pub is not None:
            return t + self.dt_ns
        now = self._now_ns(0)
        if now >= t + 2 * self.dt_ns:
            episode.late_periods += 1
            return now
        return t + self.dt_ns

    def _episode(self, env, seed: int, start_ns: int) -> tuple[EpisodeLog | None, int]:
        """One episode from ``start_ns``; ``None`` for an episode the robot's stop cut short."""
        from ..sim.rollout import EpisodeResult, object_heights

        obs, info = env.reset(seed=seed)
        episode = EpisodeLog(seed, info["instruction"], self.clock_mode)
        rest = object_heights(env)
        lifted: dict[str, float] = {}
        self._announce(info["instruction"])
        t = self._now_ns(start_ns)
        if self.clock_pub is None:
            time.sleep(EPISODE_GAP_S / 5)      # real time: the action node's episode gap passes
            t = self._now_ns(0)
        first = t
        gripper = -1.0
        self._reset.clear()
        if self.delay is not None:
            self.delay.start(t)
        while not self._stop.is_set():
            self._publish(t, obs, env)
            command = self._await_command(t, first, episode)
            if command is None or command.hold:
                action = np.array([0, 0, 0, 0, 0, 0, gripper], np.float64)
                episode.holds += 1
                episode.start_holds += int(episode.holds == env.steps + 1)     # nothing executed yet
            else:
                action = np.asarray(command.action, np.float64)[:7]
                gripper = float(action[6])
                episode.chunk_age_s.append((t - _ns(command.chunk_stamp)) * 1e-9)
                episode.skipped += command.skipped
                episode.clamped += int(command.clamped)
            obs, _, success, truncated, info = env.step(action)
            for name, height in object_heights(env).items():
                lifted[name] = max(lifted.get(name, 0.0), height - rest[name])
            t = self._next_period(t, episode)
            if success or truncated or self._reset.is_set():
                episode.success, episode.steps = bool(success), env.steps
                break
        else:
            return None, t
        result = EpisodeResult(seed, episode.instruction, episode.success, episode.steps, lifted=lifted,
                               target=env.task.target)
        episode.failure = "reset" if self._reset.is_set() and not episode.success else result.failure
        episode.period_s = (t - first) * 1e-9 / max(1, episode.steps)
        self._collect_stats(episode, first, t)
        with self._cv:
            episode.drops = dict(self._drops)
        return episode, t

    def _announce(self, instruction: str) -> None:
        """Publish the episode's instruction and wait (bounded) until the action node took it."""
        with self._cv:
            if self._instruction_taken == instruction:
                return
        self.instruction_pub.publish(String(data=instruction))
        with self._cv:
            self._cv.wait_for(lambda: self._instruction_taken == instruction or self._stop.is_set(),
                              INSTRUCTION_WAIT_S)

    def _publish(self, t: int, obs: dict, env) -> None:
        stamp = Time(nanoseconds=t).to_msg()
        for pub, key, frame in zip(self.image_pubs, ("primary", "wrist"), ("camera_primary", "camera_wrist")):
            image = obs[key]
            msg = Image(height=image.shape[0], width=image.shape[1], encoding="rgb8", is_bigendian=0,
                        step=image.shape[1] * 3, data=image.tobytes())
            msg.header.stamp, msg.header.frame_id = stamp, frame
            pub.publish(msg)
        joints = JointState(name=self.names, position=[float(v) for v in obs["proprio"]])
        joints.header.stamp = stamp
        self.joint_pub.publish(joints)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, "world"
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in env.gripper_position())
        pose.pose.orientation.w = 1.0
        self.pose_pub.publish(pose)
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=stamp))

    def _await_command(self, t: int, first: int, episode: EpisodeLog) -> ActionCommand | None:
        """Real time: the newest command once the period is over. Lockstep: the command for this
        period (at a query period: one from the chunk observed now); a holding executor sends none,
        so a non-query period waits only HOLD_GRACE_S for one. A query's chunk may come from an
        earlier frame than the period's own (a frame the node never got): any chunk observed since
        the previous query period counts."""
        if self.clock_pub is None:
            time.sleep(max(0.0, (t + self.dt_ns - self.get_clock().now().nanoseconds) * 1e-9))
            with self._cv:
                latest, self._latest = self._latest, None
            return latest
        query = t % self.query_ns == 0
        due = None                          # the delay clock: the stamp of the chunk delivered now
        if self.delay is not None:
            due = self.delay.period(t, episode)
            query = due is not None

        def ready() -> ActionCommand | None:
            for msg in reversed(self._commands.get(t, [])):
                if not query or (not msg.hold and (_ns(msg.chunk_stamp) == due if due is not None
                                                   else t - self.query_ns < _ns(msg.chunk_stamp) <= t)):
                    return msg
            return None

        holding = self._latest is not None and self._latest.hold
        wait = HOLD_GRACE_S if holding and not query else LOCKSTEP_TIMEOUT_S
        deadline = time.monotonic() + wait
        with self._cv:
            while True:
                found = self._cv.wait_for(lambda: ready() or self._stop.is_set(),
                                          min(CLOCK_REPEAT_S, max(0.0, deadline - time.monotonic())))
                if found or time.monotonic() >= deadline:
                    break
                self.clock_pub.publish(Clock(clock=Time(nanoseconds=t).to_msg()))
            self._commands = {k: v for k, v in self._commands.items() if k > t}
        if found is True or found is None or not found:
            if not (holding and not query) and not self._stop.is_set():
                episode.timeouts += 1
                self.get_logger().warning(f"lockstep: no command for t = {t * 1e-9:.1f} s within "
                                          f"{wait:g} s (wall); holding", throttle_duration_sec=5.0)
            return None
        return found

    def _collect_stats(self, episode: EpisodeLog, first: int, last: int) -> None:
        with self._cv:
            mine = [s for s in self._stats if first <= _ns(s.header.stamp) <= last]
            self._stats = [s for s in self._stats if _ns(s.header.stamp) > last]
        for s in mine:
            episode.latency_ms.append(float(s.latency_ms))
            episode.kept_tokens.append(int(s.vision_tokens_kept))
            episode.flops_ratio.append(float(s.flops_ratio))
            episode.recall.append(float(s.global_recall))
            episode.fine_mode.append(bool(s.fine_mode))

    def _report(self, episode: EpisodeLog) -> None:
        record = asdict(episode)
        text = json.dumps(record)
        self.episode_pub.publish(String(data=text))
        if self.log_path is not None:
            with self.log_path.open("a") as f:
                f.write(text + "\n")
        self.get_logger().info(f"seed {episode.seed}: {'success' if episode.success else episode.failure} "
                               f"after {episode.steps} steps ({len(self.episodes)}/{len(self.seeds)})")

    def shutdown(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(10.0)


class _DelayedDelivery:
    """The delay clock's robot side: which periods are the node's queries, and when each query's
    chunk is due at the executor (its stamp + the emulated latency its PruningStats report)."""

    def __init__(self, robot: SimRobotNode, dt_ns: int, query_ns: int) -> None:
        self.robot, self.dt_ns, self.every = robot, dt_ns, max(1, round(query_ns / dt_ns))
        self.schedule = QuerySchedule()            # the node's twin: fed the same latencies
        self.computed: dict[int, ActionChunk] = {}  # observation stamp -> the node's chunk
        self.latency_ms: dict[int, float] = {}      # observation stamp -> its step's emulated latency
        self.due: dict[int, ActionChunk] = {}       # period -> the chunk delivered then
        self.next_query = self.last_query = 0
        self.chunk_pub = robot.create_publisher(ActionChunk, robot.config.topics.action_chunk, 10)
        robot.create_subscription(ActionChunk, COMPUTED_CHUNK_TOPIC, robot._on_computed_chunk, 10)

    def start(self, t: int) -> None:
        """A new episode: the node's first query is at its first period (its clock jumped past any
        plan), and both plan afresh (the node at the episode gap)."""
        self.next_query, self.last_query, self.due, self.schedule = t, t - self.dt_ns, {}, QuerySchedule()

    def period(self, t: int, episode: EpisodeLog) -> int | None:
        """At period ``t`` (its /clock out): at a query period wait for the query's chunk and plan
        the next query; then deliver what is due now. Returns the stamp of the chunk delivered now
        (its command is the one to wait for), None when none is. A query whose chunk never comes
        counts as a timeout, and the next one is a control period on, as the node plans it."""
        if t == self.next_query:
            found = self._computed_since(self.last_query, t)
            self.last_query = t
            if found is None:
                episode.timeouts += 1
                self.next_query = t + self.every * self.dt_ns
            else:
                chunk, latency_ms = found
                lead = latency_periods(latency_ms, self.dt_ns * 1e-9)
                self.due[t + lead * self.dt_ns] = chunk
                self.next_query = self.schedule.plan(t // self.dt_ns, lead, self.every, chunk.chunk_size) * self.dt_ns
        chunk = self.due.pop(t, None)
        if chunk is None:
            return None
        self.chunk_pub.publish(chunk)
        return _ns(chunk.header.stamp)

    def _computed_since(self, after: int, t: int) -> tuple[ActionChunk, float] | None:
        """The newest chunk the node computed from an observation in (after, t], with its
        emulated latency; None if none comes within LOCKSTEP_TIMEOUT_S (wall). The node steps on
        an earlier frame when the period's own never reached it."""
        robot = self.robot

        def newest() -> int | None:
            stamps = [k for k in self.computed if after < k <= t and k in self.latency_ms]
            return max(stamps) if stamps else None

        deadline = time.monotonic() + LOCKSTEP_TIMEOUT_S
        with robot._cv:
            while newest() is None and not robot._stop.is_set() and time.monotonic() < deadline:
                robot._cv.wait(min(CLOCK_REPEAT_S, max(0.0, deadline - time.monotonic())))
                if newest() is None:
                    robot.clock_pub.publish(Clock(clock=Time(nanoseconds=t).to_msg()))
            stamp = newest()
            found = None if stamp is None else (self.computed[stamp], self.latency_ms[stamp])
            self.computed = {k: v for k, v in self.computed.items() if k > t}
            self.latency_ms = {k: v for k, v in self.latency_ms.items() if k > t}
        if found is None and not robot._stop.is_set():
            robot.get_logger().warning(f"delay clock: no chunk computed for t = {t * 1e-9:.1f} s within "
                                       f"{LOCKSTEP_TIMEOUT_S:g} s (wall); holding")
        return found


def _ns(stamp) -> int:
    return Time.from_msg(stamp).nanoseconds


def arguments(args: Sequence[str]):
    """The robot's own options (before ``--ros-args``) and the ROS arguments after them."""
    import argparse

    from ..sim import DEFAULT_LAYOUT, LAYOUTS

    args = list(args)
    ros_args = args[args.index("--ros-args"):] if "--ros-args" in args else []
    own = args[:len(args) - len(ros_args)]
    parser = argparse.ArgumentParser(prog="specprune sim robot", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, metavar="A:B", help="episodes on seeds A .. B-1")
    parser.add_argument("--clock", choices=CLOCKS, default="lockstep")
    parser.add_argument("--log", help="append each episode's outcome to this JSON-lines file")
    parser.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT)
    parser.add_argument("--max-steps", type=int, help="the task's step limit (default: the task's)")
    parser.add_argument("--delay-clock", action="store_true",
                        help="lockstep with the action node's emulated_latency: deliver each chunk when it is due")
    return parser.parse_args(own), ros_args


def main(argv: Sequence[str] | None = None) -> int:
    """``specprune sim robot --seeds A:B [--clock lockstep|realtime] [--log FILE] [--ros-args ...]``."""
    from ..common.methods import parse_seeds

    opts, ros_args = arguments(sys.argv[1:] if argv is None else argv)
    seeds = parse_seeds(opts.seeds)
    return spin(lambda: SimRobotNode(seeds, opts.clock, opts.log, opts.layout, opts.max_steps, opts.delay_clock),
                ROBOT_NODE_NAME,
                ["specprune-sim-robot", *ros_args])


if __name__ == "__main__":
    sys.exit(main())
