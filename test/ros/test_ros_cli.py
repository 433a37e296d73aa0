"""What the ros2 CLI does to the node, through the same rclpy services: rclpy's own parameters,
namespaces with the shipped params file, a model's own knobs, a failing configure, `ros2 run`
from the venv, Ctrl-C while importing."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import wait_for
from .test_action_node import ROOT, call, node_process, start

rclpy = pytest.importorskip("rclpy")
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from specprune_ros.ros.action_node import ActionNode  # noqa: E402
from specprune_ros.ros.parameters import node_key_matches, unmatched_params_files  # noqa: E402

VENV = Path(sys.executable).parent.parent


def get(probe, node, *names):
    reply = call(probe, GetParameters, f"{node}/get_parameters", GetParameters.Request(names=list(names)),
                 timeout=60.0)
    return [Parameter.from_parameter_msg(ParameterMsg(name=n, value=v)).value for n, v in zip(names, reply.values)]


def test_use_sim_time_is_set_as_ros2_param_set_sends_it(ros, loaded_tiny):
    context, spinner = ros
    node = spinner.add(ActionNode(loaded=loaded_tiny, context=context))
    probe = spinner.add(Node("probe", context=context))
    request = SetParameters.Request(parameters=[ParameterMsg(
        name="use_sim_time", value=ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=True))])
    result = call(probe, SetParameters, "/action_node/set_parameters", request).results[0]
    assert result.successful, result.reason
    assert node.get_parameter("use_sim_time").value is True
    assert node.get_clock().ros_time_is_active
    # ... and `ros2 param load` of a dump (rclpy's parameters next to ours) goes through
    dump = [ParameterMsg(name="use_sim_time", value=ParameterValue(type=ParameterType.PARAMETER_BOOL,
                                                                   bool_value=False)),
            ParameterMsg(name="pruning.alpha", value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                                    double_value=0.9))]
    results = call(probe, SetParameters, "/action_node/set_parameters", SetParameters.Request(parameters=dump))
    assert all(r.successful for r in results.results)
    assert node.config.pruning.alpha == pytest.approx(0.9)


def test_the_instruction_parameter_shows_what_the_node_acts_on(ros, loaded_tiny):
    node, driver = start(ros, loaded_tiny, [Parameter("instruction", value="launch value")])
    assert wait_for(lambda: node.get_parameter("instruction").value == "pick up the red block")
    assert node.assembler.instruction == "pick up the red block"


def test_a_namespaced_node_reads_the_shipped_params_file(ros):
    context, spinner = ros
    proc = node_process("-r", "__ns:=/robot1", "--params-file", str(ROOT / "config" / "rizon4.yaml"),
                        "-p", "device:=cpu")
    try:
        probe = spinner.add(Node("probe", context=context))
        joints, coverage, estop = get(probe, "/robot1/action_node", "topics.joint_states", "pruning.coverage_grid",
                                      "topics.estop")
        assert (joints, coverage, estop) == ("/joint_states", 8, "/estop")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "matches this node" not in out


def test_a_params_file_matching_no_node_is_named_in_a_warning(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("action_node:\n  ros__parameters:\n    pruning.alpha: 0.5\n")
    args = ["x", "--ros-args", "-r", "__ns:=/robot1", "--params-file", str(old),
            "--params-file", str(ROOT / "config" / "rizon4.yaml")]
    warnings = unmatched_params_files(args, "/robot1/action_node")
    assert len(warnings) == 1 and str(old) in warnings[0] and "/**" in warnings[0]
    assert unmatched_params_files(args, "/action_node") == []
    assert node_key_matches("/**", "/a/b/action_node") and node_key_matches("/*/action_node", "/a/action_node")
    assert not node_key_matches("/*/action_node", "/a/b/action_node")
    assert node_key_matches("/**/action_node", "/action_node") and not node_key_matches("other", "/action_node")


def test_a_models_own_knobs_apply_under_the_users(ros):
    """models/sim-tabletop ships its 16-layer knobs; -p overrides them; nothing else is needed."""
    context, spinner = ros
    proc = node_process("-p", f"model_path:={ROOT / 'models' / 'sim-tabletop'}", "-p", "device:=cpu",
                        "-p", "pruning.dynamic_layers:=[4, 8]")
    try:
        probe = spinner.add(Node("probe", context=context))
        local, global_layers, dynamic = get(probe, "/action_node", "pruning.local_layers", "pruning.global_layers",
                                            "pruning.dynamic_layers")
        assert local == 1 and list(global_layers) == [8, 16] and list(dynamic) == [4, 8]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def test_a_failing_configure_exits_non_zero(tmp_path):
    """What makes `ros2 launch` fail: the layer knobs of the 32-layer release on the 16-layer model."""
    proc = node_process("-p", f"model_path:={ROOT / 'models' / 'sim-tabletop'}", "-p", "device:=cpu",
                        "-p", "pruning.global_layers:=[15, 32]")
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, out
    assert sum("FATAL" in line for line in out.splitlines()) == 1 and "Traceback" not in out, out


@pytest.mark.skipif(not (VENV / "lib" / "specprune_ros" / "action_node").exists(),
                    reason="the executables are installed into the venv by `make setup`")
def test_ros2_run_finds_the_executables_in_the_venv_prefix():
    """`ros2 run specprune_ros X` runs <prefix>/lib/specprune_ros/X for the prefix the ament index
    registers: the venv."""
    assert (VENV / "share" / "ament_index" / "resource_index" / "packages" / "specprune_ros").exists()
    for name in ("action_node", "chunk_executor", "sim_robot"):
        exe = VENV / "lib" / "specprune_ros" / name
        assert os.access(exe, os.X_OK), exe
        assert exe.read_text().splitlines()[0] == f"#!{VENV / 'bin' / 'python'}"
    proc = subprocess.run([str(VENV / "lib" / "specprune_ros" / "action_node"), "--ros-args", "-p",
                           "model_path:=/nonexistent"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "checkpoint directory not found" in proc.stdout + proc.stderr


def test_ctrl_c_while_importing_exits_cleanly():
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "action_node")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)                                # torch is still importing
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in out and "KeyboardInterrupt" not in out, out
