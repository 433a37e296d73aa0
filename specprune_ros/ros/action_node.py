"""The action node: camera + joint-state streams in, OpenVLA-OFT action chunks out.

Threads: the executor thread only stores incoming messages and answers parameter requests;
a worker thread runs the control loop at ``control_rate_hz`` (assemble the freshest complete
observation, run the policy, publish). Spin the node with one executor thread, as main() does
(``spin.make_executor``): rclpy's MultiThreadedExecutor busy-loops in Python and starves the
inference thread of the GIL (measured here: occasional 1-7 s steps, all then dropped as stale). Nothing is queued
beyond small bounded buffers, and nothing is published from a malformed, stale or incomplete
observation: the reason is logged (throttled) and counted in /diagnostics.

    ros2 run specprune_ros action_node --ros-args --params-file config/rizon4.yaml
    specprune node --ros-args -p model_path:=tiny-random      # without the ros2 CLI
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.subscription import Subscription
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..config import NODE_NAME, ConfigError
from ..control import ControlTick, TickResult
from ..model.checkpoint import CheckpointError, LoadedPolicyModel
from ..msg import ActionChunk, PruningStats
from ..policy import PolicyOutput, SpecPrunePolicy, load_model, make_policy
from ..sensing.assembly import ObservationAssembler, stamp_nanoseconds
from ..sensing.transport import LOSS_WARN, TransportMonitor
from .parameters import KNOWN, declare_all, from_ros, model_defaults, unmatched_params_files
from .spin import StartupError, spin

LOCKSTEP_WAIT_S = 2.0       # simulated clock: the longest wall-clock wait for a tick's inputs


class ActionNode(LifecycleNode):
    """A managed node: ``configure`` loads the model and opens the topics, ``activate`` starts
    acting, ``deactivate`` stops publishing actions within one tick, ``cleanup`` frees the model.
    With ``autostart`` (default) it configures and activates itself at start, as a plain node would.
    """

    def __init__(self, loaded: LoadedPolicyModel | None = None, **node_kwargs) -> None:
        """``loaded``: an already loaded model (tests); by default ``model_path`` is loaded at configure."""
        super().__init__(NODE_NAME, **node_kwargs)
        # The model directory's own knobs (its specprune.yaml) under --params-file and -p.
        self.config = declare_all(self, model_defaults(getattr(self, "_parameter_overrides", {})))
        self._preloaded = loaded
        self._lock = threading.Lock()            # guards self.config between callback and worker
        self.policy: SpecPrunePolicy | None = None
        self.assembler = ObservationAssembler.for_node(self.config)
        self._endpoints: list = []               # subscriptions and publishers made at configure
        self.chunk_pub = self.stats_pub = self.trajectory_pub = self.debug_pub = None
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.lifecycle_state = "unconfigured"
        self._active = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._acting = False                     # the last tick published an action
        self._last_sim_tick: int | None = None
        self._publishing = threading.Lock()      # an action and the "stop" trajectory never interleave
        self._latencies: deque[float] = deque(maxlen=100)
        self._end_to_end: deque[float] = deque(maxlen=100)
        self._published: deque[float] = deque(maxlen=100)
        self._last_reason = ""
        self._startup_error = ""
        self._errors = 0
        self.transport = TransportMonitor()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(1.0, self._publish_diagnostics)
        self._starting = self.config.node.autostart
        if self.config.node.autostart:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise StartupError(self._startup_error)
            self.trigger_activate()
        self._starting = False

    # ---- lifecycle ----------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        node = self.config.node
        try:
            loaded = self._preloaded
            if loaded is None:
                self.get_logger().info(f"loading {node.model_path} on {node.device} ...")
                loaded = load_model(self.config)
            action_dim = loaded.model.config.action_dim
            if node.publish_trajectory and not 0 < len(node.trajectory_joints) <= action_dim:
                raise ValueError(f"publish_trajectory needs trajectory_joints with 1 to {action_dim} joints (the "
                                 f"first action dimensions must be joint targets); got {list(node.trajectory_joints)}")
            policy = make_policy(self.config, loaded)
        except (CheckpointError, ConfigError, ValueError, OSError) as exc:
            return self._configure_failed(str(exc))
        except Exception as exc:   # rclpy's lifecycle code would swallow it silently
            return self._configure_failed(f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.policy = policy
            self.assembler = ObservationAssembler.for_node(self.config, policy.model.proprio_projector is not None)
            # late-bound: the tick always steps the current policy
            self._control = ControlTick(self.assembler, lambda obs: self.policy.step(obs))
        self._open_endpoints()
        self._stop.clear()
        self._worker = threading.Thread(target=self._control_loop, name="specprune-inference", daemon=True)
        self._worker.start()
        self.lifecycle_state = "inactive"
        self.get_logger().info(f"action_node configured: model {node.model_path}, {node.num_images} camera(s), "
                               f"{node.control_rate_hz:g} Hz, pruning {'on' if self.config.pruning.enabled else 'off'}")
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        """FATAL when the process is about to exit for it (autostart), else ERROR: the node stays
        unconfigured and a later ``configure`` may succeed."""
        self._startup_error = reason
        (self.get_logger().fatal if self._starting else self.get_logger().error)(f"cannot configure: {reason}")
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active.set()
        self.lifecycle_state = "active"
        self.get_logger().info("action_node active: acting on observations")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_acting()
        self.lifecycle_state = "inactive"
        self.get_logger().info("action_node inactive: no actions are published")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._close_endpoints()
        with self._lock:
            self.policy = None                   # the model goes with it
        _free_device_memory()
        self.lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shutdown()
        self.lifecycle_state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def _open_endpoints(self) -> None:
        node, topics = self.config.node, self.config.topics
        sensor_qos = qos_profile_sensor_data if node.sensor_qos == "sensor_data" else QoSProfile(
            depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        image_type = CompressedImage if node.compressed_images else Image
        inputs = MutuallyExclusiveCallbackGroup()
        subs = [self.create_subscription(image_type, topic, self._image_callback(camera, topic), sensor_qos,
                                         callback_group=inputs)
                for camera, topic in enumerate(topics.cameras(node.num_images))]
        subs.append(self.create_subscription(JointState, topics.joint_states, self._on_joint_state, sensor_qos,
                                             callback_group=inputs))
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        subs.append(self.create_subscription(String, topics.instruction, self._on_instruction, latched,
                                             callback_group=inputs))
        self.chunk_pub = self.create_publisher(ActionChunk, topics.action_chunk, 10)
        self.stats_pub = self.create_publisher(PruningStats, topics.pruning_stats, 10)
        self.trajectory_pub = (self.create_publisher(JointTrajectory, topics.joint_trajectory, 10)
                               if node.publish_trajectory else None)
        self.debug_pub = self.create_publisher(Image, topics.kept_tokens_image, 2) if node.debug_image else None
        self._endpoints = subs + [p for p in (self.chunk_pub, self.stats_pub, self.trajectory_pub, self.debug_pub)
                                  if p is not None]

    def _close_endpoints(self) -> None:
        for endpoint in self._endpoints:
            if isinstance(endpoint, Subscription):
                self.destroy_subscription(endpoint)
            else:
                self.destroy_publisher(endpoint)
        self._endpoints = []
        self.chunk_pub = self.stats_pub = self.trajectory_pub = self.debug_pub = None

    def _stop_acting(self) -> None:
        """No more actions: with publish_trajectory, one empty JointTrajectory ("cancel and hold"
        for ros2_control's joint_trajectory_controller), once per stop, after any action in flight."""
        self._active.clear()
        self._send_stop()

    def _send_stop(self) -> None:
        with self._publishing:
            acting, self._acting = self._acting, False
            if acting and self.trajectory_pub is not None and rclpy.ok(context=self.context):
                self.trajectory_pub.publish(empty_trajectory(self.config.node.trajectory_joints,
                                                             self.get_clock().now().to_msg()))

    # ---- inputs (executor thread: store only) ------------------------------------------------------
    def _image_callback(self, camera: int, topic: str):
        def callback(msg) -> None:
            stamp = stamp_nanoseconds(msg.header)
            self.transport.add(topic, stamp, time.monotonic())
            self.assembler.add_image(camera, stamp, msg)
        return callback

    def _on_joint_state(self, msg: JointState) -> None:
        stamp = stamp_nanoseconds(msg.header)
        self.transport.add(self.config.topics.joint_states, stamp, time.monotonic())
        self.assembler.add_joint_state(stamp, list(msg.name), list(msg.position))

    def _on_instruction(self, msg: String) -> None:
        """The topic's instruction is acted on, and becomes the ``instruction`` parameter too, so
        ``ros2 param get`` shows what the node acts on."""
        text = msg.data.strip()
        if text != self.assembler.instruction:
            self.get_logger().info(f"instruction: {text!r}")
        self.assembler.set_instruction(msg.data)
        if text and text != self.config.node.instruction:
            self.set_parameters([Parameter("instruction", Parameter.Type.STRING, text)])

    # ---- live parameters -------------------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        """Validate through the configuration object; apply atomically from the next step.
        rclpy's own parameters (use_sim_time, ...) pass through to rclpy."""
        params = [p for p in params if p.name in KNOWN]
        with self._lock:
            try:
                new = self.config.replace(**{p.name: from_ros(p) for p in params})
                if self.policy is not None:       # unconfigured: checked against the model at configure
                    self.policy.set_config(new)
            except (ConfigError, ValueError) as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            self.config = new
            node = new.node
            self.assembler.set_limits(node.match_tolerance_s, node.max_observation_age_s, node.action_dt)
            if any(p.name == "instruction" for p in params):
                self.assembler.set_instruction(node.instruction)
        return SetParametersResult(successful=True)

    # ---- the control loop (worker thread) ---------------------------------------------------------------
    def _control_loop(self) -> None:
        _name_os_thread("sp-inference")
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if self.get_clock().ros_time_is_active:   # use_sim_time with a /clock
                self._guarded(self._sim_clock_tick)
                next_tick = time.monotonic()
                continue
            with self._lock:
                period = 1.0 / self.config.node.control_rate_hz
            next_tick += period
            if self._active.is_set():
                self._guarded(self._tick)
            delay = next_tick - time.monotonic()
            if delay < 0:                        # overrun: skip ticks instead of bursting
                next_tick = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)

    def _guarded(self, step) -> None:
        try:
            step()
        except Exception as exc:  # never let one bad step kill the robot's node
            if self._stop.is_set():
                return            # shutting down: whatever failed no longer matters
            self._errors += 1
            self.get_logger().error(f"inference step failed: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=5.0)
            self._last_reason = f"step failed: {type(exc).__name__}"
            self._send_stop()

    def _sim_clock_tick(self) -> None:
        """With a simulated clock the ticks are the clock's multiples of the control period, and
        each waits (up to LOCKSTEP_WAIT_S of wall time) for the inputs stamped at it: a simulator
        that holds its clock while the policy runs (lockstep) gets exactly one step per tick, on
        that tick's observation, whatever the wall-clock speed of either side."""
        with self._lock:
            period = round(1e9 / self.config.node.control_rate_hz)
        if self._now() == 0:                     # no /clock message yet: no time to act at
            self._stop.wait(0.01)
            return
        tick = -(-self._now() // period) * period
        if self._last_sim_tick is not None and tick <= self._last_sim_tick:
            tick = self._last_sim_tick + period
        while self._now() < tick:
            if self._stop.wait(0.001):
                return
        tick = max(tick, self._now() // period * period)   # the clock jumped past ticks: the latest one
        self._last_sim_tick = tick
        # The tick's inputs, then its step; an observation still waiting for a partner is tried
        # again (the simulator holds its clock until this tick's chunk: a later tick never comes).
        deadline = time.monotonic() + LOCKSTEP_WAIT_S
        while self._active.is_set():
            late = time.monotonic() >= deadline
            if self.assembler.has_inputs_at(tick) or late:
                result = self._tick(tick)
                if result.output is not None or result.dropped or late:
                    return
            if self._stop.wait(0.002):
                return

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _tick(self, now_ns: int | None = None) -> TickResult:
        result = self._control.run(self._now() if now_ns is None else now_ns, lambda out: self._now())
        if result.output is None:
            if result.dropped:
                self._note_drop(result.reason)
            return result
        with self._publishing:
            if self._stop.is_set() or not self._active.is_set():
                return result                     # stopping or deactivated meanwhile: publish nothing
            self._publish(result.output, result.observation.stamp_ns)
            self._acting = True
        self._latencies.append(result.output.stats.latency_ms)
        self._end_to_end.append(result.age_s * 1e3)
        self._published.append(time.monotonic())
        return result

    def _note_drop(self, reason: str) -> None:
        self._last_reason = reason
        self.get_logger().warning(f"no action: {reason}", throttle_duration_sec=2.0)
        self._send_stop()                        # the robot must not keep executing old actions

    # ---- outputs ---------------------------------------------------------------------------------
    def _publish(self, out: PolicyOutput, stamp_ns: int) -> None:
        node = self.config.node
        header_stamp = Time(nanoseconds=stamp_ns).to_msg()
        chunk = ActionChunk(**_ros_values(out.chunk_fields(node.action_dt)))
        chunk.header.stamp, chunk.header.frame_id = header_stamp, "camera_primary"
        self.chunk_pub.publish(chunk)
        self.stats_pub.publish(stats_message(out, header_stamp))
        if self.trajectory_pub is not None:
            self.trajectory_pub.publish(trajectory_message(out.actions, node.trajectory_joints, node.action_dt,
                                                           header_stamp))
        if self.debug_pub is not None and out.kept_mask is not None and out.frames is not None:
            self.debug_pub.publish(overlay_message(out, header_stamp))

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        recent = [t for t in list(self._published) if now - t <= 5.0]      # copies: the worker appends
        rate = len(recent) / 5.0
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: inference",
                                  hardware_id=self.config.node.model_path)
        if self.lifecycle_state != "active":
            status.level = DiagnosticStatus.OK
            status.message = f"{self.lifecycle_state}: not acting"
        elif not recent:
            status.level = DiagnosticStatus.WARN
            status.message = f"not publishing: {self._last_reason or 'waiting for inputs'}"
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"publishing at {rate:.1f} Hz"
        values = {
            "lifecycle_state": self.lifecycle_state,
            "rate_hz": f"{rate:.2f}",
            "policy_latency_ms_median": _median(self._latencies),
            "end_to_end_latency_ms_median": _median(self._end_to_end),
            "step_errors": str(self._errors),
            "last_drop_reason": self._last_reason,
        }
        values.update({f"dropped_{k}": str(v) for k, v in sorted(dict(self.assembler.drops).items())})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status, *self._transport_statuses(now)])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)

    def _transport_statuses(self, now: float) -> list[DiagnosticStatus]:
        """One status per input topic: receive rate and the loss estimated from header-stamp gaps."""
        statuses = []
        for topic in self.transport.topics():
            health = self.transport.health(topic, now)
            status = DiagnosticStatus(name=f"{self.get_name()}: input {topic}", hardware_id=topic)
            loss = "n/a" if health.loss != health.loss else f"{100 * health.loss:.1f} %"
            if health.lossy:
                status.level = DiagnosticStatus.WARN
                status.message = (f"~{loss} of messages lost in transport (> {100 * LOSS_WARN:.0f} %): large images "
                                  f"need the Fast DDS profile config/fastdds_large_data.xml on both sides "
                                  f"(docs/node.md, 'DDS for camera traffic')")
            else:
                status.level = DiagnosticStatus.OK
                status.message = f"{health.rate_hz:.1f} Hz, est. loss {loss}"
            status.values = [KeyValue(key="rate_hz", value=f"{health.rate_hz:.2f}"),
                             KeyValue(key="estimated_loss", value=loss),
                             KeyValue(key="period_ms", value="" if health.period_s != health.period_s
                                      else f"{1e3 * health.period_s:.1f}")]
            statuses.append(status)
        return statuses

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop acting and the control loop, waiting for the step in flight (before the context goes)."""
        if self._active.is_set():
            self._stop_acting()
        self._stop_worker(timeout)

    def _stop_worker(self, timeout: float = 30.0) -> None:
        self._active.clear()
        self._stop.set()
        worker = self._worker
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout)


def _name_os_thread(name: str) -> None:
    """Give the calling thread an OS-level name (Linux), so `top -H` and soak reports tell the
    inference thread from the executor and torch's pool. A no-op where prctl is unavailable."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)     # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _median(values: deque) -> str:
    snapshot = list(values)
    return f"{np.median(snapshot):.1f}" if snapshot else ""


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


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    """The model-resolution frames side by side, pruned patches darkened."""
    image = out.overlay()
    msg = Image(height=image.shape[0], width=image.shape[1], encoding="rgb8", is_bigendian=0,
                step=image.shape[1] * 3)
    msg.header.stamp, msg.header.frame_id = header_stamp, "camera_primary"
    msg.data = image.tobytes()
    return msg


def main(argv: Sequence[str] | None = None) -> int:
    """``ros2 run specprune_ros action_node``: SIGINT / SIGTERM stop the worker, then ROS; exit
    code 1 when the node cannot configure at start (autostart)."""
    args = list(sys.argv if argv is None else argv)

    def make() -> ActionNode:
        node = ActionNode()
        for warning in unmatched_params_files(args, node.get_fully_qualified_name()):
            node.get_logger().warning(warning)
        return node

    return spin(make, NODE_NAME, args, (CheckpointError, ConfigError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
