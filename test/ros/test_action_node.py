"""The action node over real DDS: topics, live parameters, bad input, staleness, start-up."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import rgb_image, wait_for

rclpy = pytest.importorskip("rclpy")
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from specprune_ros.config import Config, iter_specs  # noqa: E402
from specprune_ros.msg import ActionChunk, PruningStats  # noqa: E402
from specprune_ros.ros.action_node import ActionNode, StartupError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class Driver(Node):
    """Plays the robot: cameras, joint states, instruction; records what the node publishes."""

    def __init__(self, context, stamp_offset_s=0.0, encoding="rgb8", truncated=False):
        super().__init__("test_driver", context=context)
        self.stamp_offset_ns = int(stamp_offset_s * 1e9)
        self.encoding, self.truncated = encoding, truncated
        self.chunks, self.stats, self.sent = [], [], []
        self.pub_primary = self.create_publisher(type(rgb_image(0, 0)), "image_primary", 10)
        self.pub_wrist = self.create_publisher(type(rgb_image(0, 0)), "image_wrist", 10)
        self.pub_joints = self.create_publisher(JointState, "joint_states", 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pub_instruction = self.create_publisher(String, "instruction", latched)
        self.pub_instruction.publish(String(data="pick up the red block"))
        self.create_subscription(ActionChunk, "action_chunk", self.chunks.append, 10)
        self.create_subscription(PruningStats, "pruning_stats", self.stats.append, 10)
        self.trajectories = []
        self.create_subscription(JointTrajectory, "joint_trajectory", self.trajectories.append, 10)
        self.step = 0
        self.timer = self.create_timer(0.05, self.publish_observation)

    def publish_observation(self):
        now = self.get_clock().now().nanoseconds + self.stamp_offset_ns
        self.step += 1
        primary = rgb_image(40 + self.step % 50, now, encoding=self.encoding)
        wrist = rgb_image(90, now, encoding=self.encoding)
        if self.truncated:
            primary.data = bytes(primary.data)[:100]
        joints = JointState(name=[f"j{i}" for i in range(8)], position=[0.1 * i for i in range(8)])
        joints.header.stamp = primary.header.stamp
        self.pub_primary.publish(primary)
        self.pub_wrist.publish(wrist)
        self.pub_joints.publish(joints)
        self.sent.append(now)


def start(ros, loaded, overrides=(), **driver_kwargs):
    context, spinner = ros
    params = [Parameter("control_rate_hz", value=10.0), *overrides]
    node = spinner.add(ActionNode(loaded=loaded, context=context, parameter_overrides=params))
    driver = spinner.add(Driver(context, **driver_kwargs))
    return node, driver


def stamp_ns(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_chunks_arrive_with_the_observation_stamp(ros, loaded_tiny):
    node, driver = start(ros, loaded_tiny)
    try:
        assert wait_for(lambda: len(driver.chunks) >= 3 and len(driver.stats) >= 3), "no action chunks"
        chunk = driver.chunks[-1]
        assert (chunk.chunk_size, chunk.action_dim) == (8, 7) and len(chunk.actions) == 56
        assert list(chunk.dimension_names) == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
        assert chunk.dt == pytest.approx(0.1)
        assert stamp_ns(chunk) in driver.sent                     # the observation's own stamp
        by_step = {s.step: s for s in driver.stats}
        assert stamp_ns(by_step[chunk.step]) == stamp_ns(chunk)
        assert by_step[chunk.step].vision_tokens_total == 512 and len(by_step[chunk.step].tokens_per_layer) == 32
        steps = [s.step for s in driver.stats]          # the very first may precede DDS matching
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
        assert all(s.fallback_reason.startswith("no prior") for s in driver.stats if s.step == 0)
        assert all(s.fallback_reason == "" for s in driver.stats if s.step > 0)
        later = [s for s in driver.stats if s.step > 0]
        assert later and all(s.history_frames >= 1 and s.history_age_s > 0 for s in later)   # a compared frame
    finally:
        node.shutdown()


def call(driver, service_type, name, request, timeout=10.0):
    client = driver.create_client(service_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"{name} not available"
    # A request sent right after discovery can be lost before the response route is matched
    # (a known DDS service race): ask again if there is no answer.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        future = client.call_async(request)
        if wait_for(future.done, min(3.0, max(0.1, deadline - time.monotonic()))):
            return future.result()
        client.remove_pending_request(future)
    raise AssertionError(f"{name} did not answer within {timeout} s")


def set_params(driver, **values):
    msgs = []
    for name, value in values.items():
        v = ParameterValue()
        if isinstance(value, bool):
            v.type, v.bool_value = ParameterType.PARAMETER_BOOL, value
        elif isinstance(value, int):
            v.type, v.integer_value = ParameterType.PARAMETER_INTEGER, value
        elif isinstance(value, float):
            v.type, v.double_value = ParameterType.PARAMETER_DOUBLE, value
        else:
            v.type, v.string_value = ParameterType.PARAMETER_STRING, value
        msgs.append(ParameterMsg(name=name, value=v))
    # What `ros2 param set /action_node NAME VALUE` sends.
    return call(driver, SetParameters, "/action_node/set_parameters", SetParameters.Request(parameters=msgs)).results


def test_live_parameters_apply_to_the_next_step_and_bad_values_are_rejected(ros, loaded_tiny):
    node, driver = start(ros, loaded_tiny)
    try:
        assert wait_for(lambda: len(driver.stats) >= 2)
        result, = set_params(driver, **{"pruning.alpha": 0.5})
        assert result.successful, result.reason
        mark = len(driver.stats)
        assert wait_for(lambda: len(driver.stats) >= mark + 2)
        assert driver.stats[-1].alpha == pytest.approx(0.5)

        result, = set_params(driver, **{"pruning.k_global": 10})
        assert result.successful
        mark = len(driver.stats)
        assert wait_for(lambda: len(driver.stats) >= mark + 3)
        pruned = [s for s in driver.stats[mark + 1:] if not s.fallback_reason]   # the first may predate it
        assert pruned and all(s.global_selected <= 2 * 2 * 5 for s in pruned), \
            [(s.step, s.global_selected, s.alpha) for s in driver.stats]   # 0.5 * 10 per camera, 2 layers

        bad, = set_params(driver, **{"pruning.alpha": 9.0})
        assert not bad.successful and "pruning.alpha" in bad.reason and "4" in bad.reason
        # `ros2 param set /action_node pruning.alpha 1` sends an integer: accepted as 1.0 ...
        whole, = set_params(driver, **{"pruning.alpha": 1})
        assert whole.successful, whole.reason
        assert node.get_parameter("pruning.alpha").value == 1.0 and node.config.pruning.alpha == 1.0
        # ... and an integer out of range is refused (the descriptor's range), naming the range.
        bad, = set_params(driver, **{"pruning.alpha": 5})
        assert not bad.successful and "pruning.alpha" in bad.reason and "4.0" in bad.reason, bad.reason
        whole, = set_params(driver, **{"pruning.alpha": 0.5})
        assert whole.successful
        bad, = set_params(driver, **{"pruning.confidence": "max"})
        assert not bad.successful and "one of 'entropy', 'mean_std'" in bad.reason
        read_only, = set_params(driver, model_path="/elsewhere")
        assert not read_only.successful and "read-only" in read_only.reason.lower()
        assert node.config.pruning.alpha == 0.5 and node.config.node.model_path == "tiny-random"
    finally:
        node.shutdown()


@pytest.mark.parametrize("kwargs", [{"encoding": "yuv422"}, {"truncated": True}])
def test_malformed_images_are_dropped_without_a_crash(ros, loaded_tiny, kwargs):
    node, driver = start(ros, loaded_tiny, **kwargs)
    try:
        assert wait_for(lambda: node.assembler.drops["malformed"] >= 3)
        assert driver.chunks == [] and node._worker.is_alive()
    finally:
        node.shutdown()


def test_stale_inputs_produce_no_action(ros, loaded_tiny):
    node, driver = start(ros, loaded_tiny, stamp_offset_s=-2.0)      # data 2 s old on arrival
    try:
        assert wait_for(lambda: node.assembler.drops["stale"] >= 3)
        assert driver.chunks == []
    finally:
        node.shutdown()


def test_output_stops_when_inputs_stop(ros, loaded_tiny):
    node, driver = start(ros, loaded_tiny)
    try:
        assert wait_for(lambda: len(driver.chunks) >= 2)
        driver.timer.cancel()
        time.sleep(0.6)                              # max_observation_age_s 0.5 + one step
        count = len(driver.chunks)
        time.sleep(1.0)
        assert len(driver.chunks) == count
    finally:
        node.shutdown()


def test_partners_in_random_order_with_jitter_are_not_drops_and_lost_ones_are(ros, loaded_tiny):
    """The three inputs of a frame share a stamp but arrive in any order, up to 30 ms apart."""
    import random
    import threading

    context, spinner = ros
    node = spinner.add(ActionNode(loaded=loaded_tiny, context=context,
                                  parameter_overrides=[Parameter("control_rate_hz", value=20.0),
                                                       Parameter("max_observation_age_s", value=2.0)]))
    driver = spinner.add(Driver(context))
    driver.timer.cancel()                      # published from a thread below instead
    rng = random.Random(0)
    stop, lose_wrist = threading.Event(), threading.Event()

    def robot():
        step = 0
        while not stop.is_set():
            step += 1
            now = driver.get_clock().now().nanoseconds
            primary, wrist = rgb_image(40 + step % 50, now), rgb_image(90, now)
            joints = JointState(name=[f"j{i}" for i in range(8)], position=[0.1 * i for i in range(8)])
            joints.header.stamp = primary.header.stamp
            sends = [(driver.pub_primary, primary), (driver.pub_joints, joints)]
            if not lose_wrist.is_set():
                sends.append((driver.pub_wrist, wrist))
            rng.shuffle(sends)
            for pub, msg in sends:
                pub.publish(msg)
                time.sleep(rng.uniform(0.0, 0.015))
            stop.wait(0.1)

    thread = threading.Thread(target=robot, daemon=True)
    try:
        assert wait_for(lambda: node.assembler.instruction != "", 10)
        thread.start()
        assert wait_for(lambda: len(driver.chunks) >= 30, 30), "the node did not act"
        assert node.assembler.drops["incomplete"] == 0, dict(node.assembler.drops)
        lose_wrist.set()
        assert wait_for(lambda: node.assembler.drops["incomplete"] >= 3, 10), dict(node.assembler.drops)
    finally:
        stop.set()
        thread.join(5)
        node.shutdown()


def test_lifecycle_through_the_services_ros2_lifecycle_calls(ros, loaded_tiny):
    """unconfigured -> configure -> activate (acts) -> deactivate (stops within a tick, sends one
    empty trajectory) -> cleanup (model freed) -> configure -> activate (acts again)."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    context, spinner = ros
    joints = [f"j{i}" for i in range(7)]
    node = spinner.add(ActionNode(loaded=loaded_tiny, context=context, parameter_overrides=[
        Parameter("autostart", value=False), Parameter("publish_trajectory", value=True),
        Parameter("trajectory_joints", value=joints), Parameter("max_observation_age_s", value=2.0)]))
    driver = spinner.add(Driver(context))

    def state():
        return call(driver, GetState, "/action_node/get_state", GetState.Request()).current_state.label

    def change(transition):
        reply = call(driver, ChangeState, "/action_node/change_state",
                     ChangeState.Request(transition=Transition(id=transition)))
        assert reply.success

    try:
        assert state() == "unconfigured" and node.policy is None
        time.sleep(0.5)
        assert not driver.chunks                                    # nothing acts unconfigured
        change(Transition.TRANSITION_CONFIGURE)
        assert state() == "inactive" and node.policy is not None
        time.sleep(0.5)
        assert not driver.chunks                                    # nor inactive
        change(Transition.TRANSITION_ACTIVATE)
        assert state() == "active"
        assert wait_for(lambda: len(driver.chunks) >= 3 and len(driver.trajectories) >= 3), "not acting"
        assert all(len(t.points) == 8 for t in driver.trajectories)

        change(Transition.TRANSITION_DEACTIVATE)
        assert state() == "inactive" and node.lifecycle_state == "inactive"
        time.sleep(0.2)                                             # one tick at 10 Hz, plus delivery
        count = len(driver.chunks)
        time.sleep(0.8)
        assert len(driver.chunks) == count                          # stopped within a tick
        empty = [t for t in driver.trajectories if not t.points]
        assert len(empty) == 1 and list(empty[0].joint_names) == joints   # "cancel and hold", once

        change(Transition.TRANSITION_CLEANUP)
        assert state() == "unconfigured" and node.policy is None
        change(Transition.TRANSITION_CONFIGURE)
        change(Transition.TRANSITION_ACTIVATE)
        count = len(driver.chunks)
        assert wait_for(lambda: len(driver.chunks) >= count + 3), "not acting after a second configure"
    finally:
        node.shutdown()


def test_stale_inputs_stop_a_trajectory_once(ros, loaded_tiny):
    joints = [f"j{i}" for i in range(7)]
    node, driver = start(ros, loaded_tiny, [Parameter("publish_trajectory", value=True),
                                            Parameter("trajectory_joints", value=joints)])
    try:
        assert wait_for(lambda: len(driver.trajectories) >= 2)
        driver.stamp_offset_ns = -int(5e9)                           # the camera's clock falls behind
        assert wait_for(lambda: any(not t.points for t in driver.trajectories)), "no stop on stale inputs"
        time.sleep(0.5)
        assert sum(1 for t in driver.trajectories if not t.points) == 1
    finally:
        node.shutdown()


# ---- the node as a process, like `ros2 run` -------------------------------------------------------

def node_process(*ros_args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "specprune_ros", "node", "--ros-args", *ros_args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_params_file_and_clean_sigint(ros):
    context, spinner = ros
    proc = node_process("--params-file", str(ROOT / "config" / "rizon4.yaml"), "-p", "device:=cpu",
                        "-p", "control_rate_hz:=5")      # an integer for a double parameter
    try:
        probe = spinner.add(Node("param_probe", context=context))
        # What `ros2 param dump` does: list every name, then get them all in one request.
        listed = call(probe, ListParameters, "/action_node/list_parameters", ListParameters.Request(),
                      timeout=60.0).result.names
        assert set(listed) >= {name for name, _ in iter_specs()}
        dump = call(probe, GetParameters, "/action_node/get_parameters", GetParameters.Request(names=listed))
        assert len(dump.values) == len(listed)
        dumped = {n: Parameter.from_parameter_msg(ParameterMsg(name=n, value=v)) for n, v in zip(listed, dump.values)}
        assert all(p.type_ != Parameter.Type.NOT_SET for p in dumped.values())
        assert dumped["joint_names"].type_ == Parameter.Type.STRING_ARRAY and list(dumped["joint_names"].value) == []
        assert dumped["control_rate_hz"].type_ == Parameter.Type.DOUBLE and dumped["control_rate_hz"].value == 5.0
        names = ["max_observation_age_s", "pruning.alpha", "pruning.global_layers", "controller.fine_k_scale"]
        reply = call(probe, GetParameters, "/action_node/get_parameters", GetParameters.Request(names=names),
                     timeout=60.0)
        values = [Parameter.from_parameter_msg(ParameterMsg(name=n, value=v)).value
                  for n, v in zip(names, reply.values)]
        assert values[0] == pytest.approx(0.3) and values[1] == pytest.approx(1.6)
        assert list(values[2]) == [15, 32] and values[3] == pytest.approx(1.6666667)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_steps_stops_cleanly(ros, sig):
    """Stop while the worker is stepping: the worker is joined before ROS shuts down, so no
    step fails to publish on a dead context (no ERROR line), and the exit code is 0."""
    context, spinner = ros
    proc = node_process("-p", "device:=cpu", "-p", "control_rate_hz:=20.0", "-p", "max_observation_age_s:=5.0")
    try:
        driver = spinner.add(Driver(context))
        assert wait_for(lambda: len(driver.chunks) >= 3, 90), "the node never acted"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate(timeout=5)
    assert "ERROR" not in out and "Traceback" not in out, out


def test_model_load_failure_exits_non_zero_with_one_clear_error(tmp_path):
    proc = node_process("-p", f"model_path:={tmp_path / 'missing'}")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    errors = [line for line in out.splitlines() if "FATAL" in line or "ERROR" in line]
    assert len(errors) == 1 and "checkpoint directory not found" in errors[0], out
    assert "Traceback" not in out


def test_launch_description():
    launch_ros = pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI; runs on ROS machines")
    import importlib.util
    spec = importlib.util.spec_from_file_location("rizon4_launch", ROOT / "launch" / "rizon4.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from launch import LaunchContext
    description = module.generate_launch_description()
    context = LaunchContext()
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            context.launch_configurations[entity.name] = "" if entity.name != "use_sim_time" else "true"
    context.launch_configurations.update(namespace="/robot1", params_file="config/rizon4.yaml")
    made = [e for entity in description.entities if isinstance(entity, OpaqueFunction)
            for e in entity.execute(context)]
    nodes = [e for e in made if isinstance(e, launch_ros.actions.Node)]
    assert len(nodes) == 1 and nodes[0].node_executable == "action_node"


SIM_MODEL = ROOT / "models" / "sim-tabletop"


def launch_default_params_file():
    """The default ``params_file`` of launch/rizon4.launch.py, read from the file itself (its
    ``PathJoinSubstitution([FindPackageShare(...), "config", ...])``; launch_ros is not on PyPI):
    the package share is this checkout."""
    import ast
    tree = ast.parse((ROOT / "launch" / "rizon4.launch.py").read_text())
    assigned = {t.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    declared = next(call for call in ast.walk(tree) if isinstance(call, ast.Call)
                    and getattr(call.func, "id", "") == "DeclareLaunchArgument"
                    and isinstance(call.args[0], ast.Constant) and call.args[0].value == "params_file")
    default = next(k.value for k in declared.keywords if k.arg == "default_value")
    join = assigned[default.id] if isinstance(default, ast.Name) else default
    parts = [e.value for e in join.args[0].elts if isinstance(e, ast.Constant)]
    return ROOT.joinpath(*parts)


def launch_parameters(*extra):
    """The launch's layering: its default params_file, then its launch arguments (``extra``)."""
    return ["--ros-args", "--params-file", str(launch_default_params_file()), *extra]


def test_the_robot_file_leaves_the_layer_knobs_to_the_model(ros):
    """config/rizon4.yaml under `model_path:=models/sim-tabletop` (16 layers): the model's own
    layer knobs apply and the node configures; a knob the user names still wins."""
    context, spinner = ros
    node = spinner.add(ActionNode(context=context, cli_args=launch_parameters(
        "-p", f"model_path:={SIM_MODEL}", "-p", "device:=cpu", "-p", "pruning.local_layers:=2")))
    try:
        assert node.policy is not None and node.lifecycle_state == "active"
        pruning = node.config.pruning
        assert (list(pruning.global_layers), list(pruning.dynamic_layers)) == ([8, 16], [3, 5, 8, 10])
        assert pruning.local_layers == 2                                    # -p over the model's 1
        assert launch_default_params_file() == ROOT / "config" / "rizon4.yaml"
        assert node.config.topics == Config.from_yaml(ROOT / "config" / "rizon4.yaml").topics   # the robot's
    finally:
        node.shutdown()


def test_a_model_file_that_appears_before_configure_gives_the_unset_knobs(ros, tmp_path):
    """A model directory without specprune.yaml at start gets the paper's knobs mapped to its
    depth; a specprune.yaml written before `configure` then applies to every knob nobody set, and
    a knob set live in between keeps the user's value."""
    import shutil
    context, spinner = ros
    model = tmp_path / "model"
    shutil.copytree(SIM_MODEL, model)
    (model / "specprune.yaml").unlink()
    node = spinner.add(ActionNode(context=context, parameter_overrides=[
        Parameter("model_path", value=str(model)), Parameter("device", value="cpu"),
        Parameter("autostart", value=False)]))
    try:
        assert list(node.config.pruning.global_layers) == [8, 16]          # from the depth: 16 layers
        assert node.set_parameters([Parameter("pruning.dynamic_layers", value=[4, 6])])[0].successful
        (model / "specprune.yaml").write_text("/**:\n  ros__parameters:\n    pruning.global_layers: [6, 16]\n"
                                              "    pruning.dynamic_layers: [3, 9]\n    pruning.k_local: 12\n")
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        pruning = node.config.pruning
        assert (list(pruning.global_layers), pruning.k_local) == ([6, 16], 12)
        assert list(pruning.dynamic_layers) == [4, 6]                       # set live: the user's
        assert list(node.get_parameter("pruning.global_layers").value) == [6, 16]   # what `ros2 param get` says
        assert node.policy.config.pruning.global_layers == pruning.global_layers
    finally:
        node.shutdown()


def test_parameter_descriptors_carry_ranges_and_read_only(ros, loaded_tiny):
    from rcl_interfaces.srv import DescribeParameters
    node, driver = start(ros, loaded_tiny)
    try:
        names = ["pruning.alpha", "pruning.k_global", "model_path", "pruning.confidence", "pruning.dynamic_layers"]
        reply = call(driver, DescribeParameters, "/action_node/describe_parameters",
                     DescribeParameters.Request(names=names))
        alpha, k_global, model_path, confidence, layers = reply.descriptors
        assert alpha.floating_point_range[0].from_value == pytest.approx(0.05)
        assert alpha.floating_point_range[0].to_value == pytest.approx(4.0) and not alpha.read_only
        assert "K_G" in k_global.description and k_global.integer_range[0].to_value == 4096
        assert model_path.read_only and "tiny-random" in model_path.description
        assert "entropy" in confidence.additional_constraints
        assert layers.type == ParameterType.PARAMETER_INTEGER_ARRAY
    finally:
        node.shutdown()


def test_node_latency_tool_reports_a_consistent_breakdown():
    from specprune_ros.ros.node_latency import measure
    r = measure(chunks=4, camera_hz=20.0, control_hz=5.0, warmup=1)
    assert r["chunks"] >= 4
    parts = r["observation_age_at_step_ms"]["p50"] + r["policy_step_ms"]["p50"] + r["node_overhead_ms"]["p50"]
    assert r["end_to_end_ms"]["p50"] == pytest.approx(parts)
    assert 0 < r["policy_step_ms"]["p50"] < r["end_to_end_ms"]["p50"] < 5000


def test_trajectory_and_kept_patch_overlay(ros, loaded_tiny):
    from sensor_msgs.msg import Image
    from trajectory_msgs.msg import JointTrajectory
    names = [f"j{i}" for i in range(7)]
    node, driver = start(ros, loaded_tiny, overrides=[
        Parameter("publish_trajectory", value=True), Parameter("debug_image", value=True),
        Parameter("trajectory_joints", value=names), Parameter("action_dt", value=0.05)])
    trajectories, overlays = [], []
    driver.create_subscription(JointTrajectory, "joint_trajectory", trajectories.append, 10)
    driver.create_subscription(Image, "kept_tokens_image", overlays.append, 10)
    try:
        assert wait_for(lambda: trajectories and overlays and driver.chunks)
        traj = trajectories[-1]
        assert list(traj.joint_names) == names and len(traj.points) == 8
        last = traj.points[-1].time_from_start
        assert last.sec + last.nanosec * 1e-9 == pytest.approx(8 * 0.05)
        chunk = next(c for c in reversed(driver.chunks) if stamp_ns(c) == stamp_ns(traj))
        assert list(traj.points[0].positions) == pytest.approx(list(chunk.actions[:7]))
        image = overlays[-1]
        assert (image.height, image.width, image.encoding) == (224, 448, "rgb8")
    finally:
        node.shutdown()


def test_trajectory_without_joint_names_is_refused_at_start(ros, loaded_tiny):
    context, _ = ros
    with pytest.raises(StartupError, match="publish_trajectory needs trajectory_joints"):
        ActionNode(loaded=loaded_tiny, context=context, parameter_overrides=[Parameter("publish_trajectory",
                                                                                       value=True)])


def test_an_emulated_latency_is_refused_on_the_wall_clock(ros, loaded_tiny):
    """The delay clock needs a simulator's /clock: on a robot's wall clock an emulated latency
    would only report figures the robot never sees."""
    context, _ = ros
    with pytest.raises(StartupError, match="emulated_latency '90' needs a simulated clock"):
        ActionNode(loaded=loaded_tiny, context=context, parameter_overrides=[Parameter("emulated_latency",
                                                                                       value="90")])


class LossyWristDriver(Driver):
    """Every third wrist frame never arrives, as with an undersized shared-memory segment."""

    def __init__(self, context):
        super().__init__(context)
        from diagnostic_msgs.msg import DiagnosticArray
        self.diagnostics = []
        self.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        publish = self.pub_wrist.publish
        self.pub_wrist.publish = lambda msg: None if self.step % 3 == 0 else publish(msg)


def test_transport_health_per_input_topic_in_diagnostics(ros, loaded_tiny):
    context, spinner = ros
    node = spinner.add(ActionNode(loaded=loaded_tiny, context=context,
                                  parameter_overrides=[Parameter("control_rate_hz", value=5.0)]))
    driver = spinner.add(LossyWristDriver(context))

    def statuses():
        for array in reversed(driver.diagnostics):
            found = {s.name.split("input ")[-1]: s for s in array.status if "input " in s.name}
            if len(found) == 3 and all(dict((v.key, v.value) for v in s.values)["estimated_loss"] != "n/a"
                                       for s in found.values()):
                return found
        return None
    try:
        assert wait_for(lambda: statuses() is not None, 20), "no transport health in /diagnostics"
        found = statuses()
        wrist, primary = found["image_wrist"], found["image_primary"]
        loss = float(dict((v.key, v.value) for v in wrist.values)["estimated_loss"].rstrip(" %"))
        from diagnostic_msgs.msg import DiagnosticStatus
        assert wrist.level == DiagnosticStatus.WARN, wrist
        assert 25 <= loss <= 40 and "config/fastdds_large_data.xml" in wrist.message
        assert primary.level == found["joint_states"].level == DiagnosticStatus.OK
        rate = float(dict((v.key, v.value) for v in primary.values)["rate_hz"])
        assert 15 <= rate <= 21                                                 # published at 20 Hz
    finally:
        node.shutdown()


def test_a_query_per_chunk_goes_out_early_by_the_measured_p95_latency(ros, loaded_tiny):
    """At 1.25 Hz (one query per 8-action chunk) the worker's next tick comes the p95 of the
    measured end-to-end latency before the chunk in use runs out, not a full period later."""
    import numpy as np
    node, driver = start(ros, loaded_tiny, [Parameter("control_rate_hz", value=1.25),
                                            Parameter("max_observation_age_s", value=5.0)])
    try:
        assert wait_for(lambda: len(driver.chunks) >= 2, timeout=20.0), "no action chunks"
        worker = node.worker

        def measured():   # between two ticks: the schedule holds every published step's latency
            held, ages = list(worker.schedule.latencies), [ms / 1e3 for ms in worker.end_to_end]
            return len(held) == len(ages) and np.allclose(held, ages, rtol=1e-12, atol=0)
        assert wait_for(measured, timeout=5.0)
        lead = float(np.quantile(np.array(list(worker.end_to_end)) / 1e3, 0.95, method="higher"))
        assert worker.schedule.lead_s == pytest.approx(lead) and lead > 0
        assert worker.interval_s() == pytest.approx(max(0.8 - lead, lead)) and worker.interval_s() < 0.8
    finally:
        node.shutdown()
