"""The action node: camera + joint-state streams in, OpenVLA-OFT action chunks out.

A lifecycle shell around four parts: the inference worker (``inference.py``: the control loop on
its own thread, on the ``ControlTick`` replay shares), the parameter bridge (``parameters.py``:
validate on set, apply after set), the diagnostics (``diagnostics.py``) and the outgoing messages
(``messages.py``). The executor thread only stores incoming messages and answers parameter
requests. Spin the node with one executor thread, as main() does (``spin.make_executor``):
rclpy's MultiThreadedExecutor busy-loops in Python and starves the inference thread of the GIL
(measured here: occasional 1-7 s steps, all then dropped as stale). Nothing is queued beyond small
bounded buffers, and nothing is published from a malformed, stale or incomplete observation: the
reason is logged (throttled) and counted in /diagnostics.

    ros2 run specprune_ros action_node --ros-args --params-file config/rizon4.yaml
    specprune node --ros-args -p model_path:=tiny-random      # without the ros2 CLI
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Sequence

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.subscription import Subscription
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from ..config import NODE_NAME, Config, ConfigError, spec_of
from ..control import ControlTick, TickResult
from ..latency import parse_latency
from ..model.checkpoint import CheckpointError, LoadedPolicyModel
from ..msg import ActionChunk, PruningStats
from ..policy import SpecPrunePolicy, load_model, make_policy
from ..sensing.assembly import ObservationAssembler, stamp_nanoseconds
from ..sensing.transport import TransportMonitor
from .diagnostics import inference_status, transport_statuses
from .inference import InferenceWorker
from .messages import chunk_message, empty_trajectory, overlay_message, stats_message, trajectory_message
from .parameters import ParameterBridge, as_parameter, declare_all, model_defaults, unmatched_params_files
from .qos import LATCHED
from .spin import StartupError, spin


class ActionNode(LifecycleNode):
    """A managed node: ``configure`` loads the model and opens the topics, ``activate`` starts
    acting, ``deactivate`` stops publishing actions within one tick, ``cleanup`` frees the model.
    With ``autostart`` (default) it configures and activates itself at start, as a plain node would.
    """

    def __init__(self, loaded: LoadedPolicyModel | None = None, **node_kwargs) -> None:
        """``loaded``: an already loaded model (tests); by default ``model_path`` is loaded at configure."""
        super().__init__(NODE_NAME, **node_kwargs)
        # What the model brings (its depth's layer knobs, its specprune.yaml) under --params-file and -p.
        self._model_defaults = model_defaults(getattr(self, "_parameter_overrides", {}))
        self.config = declare_all(self, self._model_defaults)
        self._set_live: set[str] = set()         # knobs set while running: a model's defaults never override them
        self._preloaded = loaded
        self._lock = threading.Lock()            # guards self.config between callback and worker
        self.policy: SpecPrunePolicy | None = None
        self.assembler = ObservationAssembler.for_node(self.config)
        self._worker: InferenceWorker | None = None
        self._endpoints: list = []               # subscriptions and publishers made at configure
        self.chunk_pub = self.stats_pub = self.trajectory_pub = self.debug_pub = None
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._acting = False                     # the last tick published an action
        self._publishing = threading.Lock()      # an action and the "stop" trajectory never interleave
        self._startup_error = ""
        self.transport = TransportMonitor()
        ParameterBridge(self, lambda: self.config, self._validate, self._apply)
        self.create_timer(1.0, self._publish_diagnostics)
        self._starting = self.config.node.autostart
        if self.config.node.autostart:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise StartupError(self._startup_error)
            self.trigger_activate()
        self._starting = False

    @property
    def worker(self) -> InferenceWorker | None:
        """The inference worker (from configure to cleanup): its latencies, drops and errors."""
        return self._worker

    @property
    def lifecycle_state(self) -> str:
        """rclpy's own state machine's state (a transition's label while it runs)."""
        return self._state_machine.current_state[1]

    # ---- lifecycle ----------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._adopt_model_defaults()
        except ConfigError as exc:
            return self._configure_failed(str(exc))
        node = self.config.node
        try:
            loaded = self._preloaded
            if loaded is None:
                self.get_logger().info(f"loading {node.model_path} on {node.device} ...")
                loaded = load_model(self.config)
            action_dim, chunk_size = loaded.model.config.action_dim, loaded.model.config.chunk_size
            if node.publish_trajectory and not 0 < len(node.trajectory_joints) <= action_dim:
                raise ValueError(f"publish_trajectory needs trajectory_joints with 1 to {action_dim} joints (the "
                                 f"first action dimensions must be joint targets); got {list(node.trajectory_joints)}")
            if node.emulated_latency and not self.get_parameter("use_sim_time").value:
                raise ValueError(f"emulated_latency {node.emulated_latency!r} needs a simulated clock "
                                 "(use_sim_time:=true and a lockstep simulator's /clock)")
            policy = make_policy(self.config, loaded)
        except (CheckpointError, ConfigError, ValueError, OSError) as exc:
            return self._configure_failed(str(exc))
        except Exception as exc:   # rclpy's lifecycle code would swallow it silently
            return self._configure_failed(f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.policy = policy
            self.assembler = ObservationAssembler.for_node(self.config, policy.model.proprio_projector is not None)
            # late-bound: the tick always steps the current policy
            control = ControlTick(self.assembler, lambda obs: self.policy.step(obs))
        self._open_endpoints()
        self._worker = InferenceWorker(control, self.get_clock(), self.get_logger(),
                                       lambda: 1.0 / self.config.node.control_rate_hz, self._publish,
                                       self._send_stop, lambda: chunk_size * self.config.node.action_dt,
                                       parse_latency(node.emulated_latency) if node.emulated_latency else None,
                                       node.action_dt, node.episode_gap_s)
        self._worker.start()
        self.get_logger().info(f"action_node configured: model {node.model_path}, {node.num_images} camera(s), "
                               f"{node.control_rate_hz:g} Hz, pruning {'on' if self.config.pruning.enabled else 'off'}")
        return TransitionCallbackReturn.SUCCESS

    def _adopt_model_defaults(self) -> None:
        """The model directory as it is now: a ``specprune.yaml`` (or weights of another depth)
        that appeared since the process started gives its knobs to every knob nobody set - not in
        a parameter file, not -p, not ``ros2 param set`` - as a fresh start would."""
        fresh = model_defaults(getattr(self, "_parameter_overrides", {}))
        given = set(getattr(self, "_parameter_overrides", {})) | self._set_live
        old, new = self._model_defaults.flat(), fresh.flat()
        changed = [n for n in new if new[n] != old[n] and n not in given]
        frozen = [n for n in changed if spec_of(n).read_only]
        if frozen:
            self.get_logger().warning(f"model {self.config.node.model_path} now brings read-only "
                                      f"{', '.join(frozen)}: they apply at the next start")
        live = [n for n in changed if n not in frozen]
        if live:
            result = self.set_parameters_atomically([as_parameter(n, new[n]) for n in live])
            if not result.successful:
                raise ConfigError(f"the knobs model {self.config.node.model_path} brings: {result.reason}")
            self._set_live.difference_update(live)   # the model's values, not the user's
            self.get_logger().info("the model's own knobs: " + ", ".join(f"{n} = {new[n]}" for n in live))
        self._model_defaults = fresh

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        """FATAL when the process is about to exit for it (autostart), else ERROR: the node stays
        unconfigured and a later ``configure`` may succeed."""
        self._startup_error = reason
        (self.get_logger().fatal if self._starting else self.get_logger().error)(f"cannot configure: {reason}")
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._worker.active.set()
        self.get_logger().info("action_node active: acting on observations")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_acting()
        self.get_logger().info("action_node inactive: no actions are published")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._close_endpoints()
        with self._lock:
            self.policy = None                   # the model goes with it
        _free_device_memory()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shutdown()
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
        subs.append(self.create_subscription(String, topics.instruction, self._on_instruction, LATCHED,
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
        if self._worker is not None:
            self._worker.active.clear()
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

    # ---- live parameters (through the bridge) --------------------------------------------------------
    def _validate(self, new: Config) -> None:
        """Refuse what the running policy cannot take (read-only knobs, layers beyond the model)."""
        if self.policy is not None:       # unconfigured: checked against the model at configure
            self.policy.check_config(new)

    def _apply(self, new: Config, names: list[str]) -> None:
        """From the next step on."""
        self._set_live.update(names)
        with self._lock:
            if self.policy is not None:
                self.policy.set_config(new)
            self.config = new
            node = new.node
            self.assembler.set_limits(node.match_tolerance_s, node.max_observation_age_s, node.action_dt)
            if "instruction" in names:
                self.assembler.set_instruction(node.instruction)

    # ---- outputs ---------------------------------------------------------------------------------
    def _publish(self, result: TickResult) -> bool:
        """One step's action; False (nothing published) when stopping or deactivated meanwhile."""
        with self._publishing:
            if self._worker is None or self._worker.stopping or not self._worker.active.is_set():
                return False
            out, node = result.output, self.config.node
            header_stamp = Time(nanoseconds=result.observation.stamp_ns).to_msg()
            self.chunk_pub.publish(chunk_message(out, node.action_dt, result.observation.stamp_ns))
            self.stats_pub.publish(stats_message(out, header_stamp))
            if self.trajectory_pub is not None:
                self.trajectory_pub.publish(trajectory_message(out.actions, node.trajectory_joints, node.action_dt,
                                                               header_stamp))
            if self.debug_pub is not None and out.kept_mask is not None and out.frames is not None:
                self.debug_pub.publish(overlay_message(out, header_stamp))
            self._acting = True
        return True

    def _publish_diagnostics(self) -> None:
        name = self.get_fully_qualified_name()
        statuses = [inference_status(name, self.config.node.model_path, self.lifecycle_state, self._worker,
                                     self.assembler.drops), *transport_statuses(name, self.transport)]
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop acting and the control loop, waiting for the step in flight (before the context goes)."""
        if self._worker is not None and self._worker.active.is_set():
            self._stop_acting()
        self._stop_worker(timeout)

    def _stop_worker(self, timeout: float = 30.0) -> None:
        if self._worker is not None:
            self._worker.stop(timeout)


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
