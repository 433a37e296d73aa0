"""The sim task through the ROS 2 stack: the launch file and the evaluation start the same three
processes, and a lockstep episode through DDS runs like the in-process one."""
import ast
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("specprune_ros.sim.env")      # sets MUJOCO_GL before MuJoCo loads

from specprune_ros.common.methods import parse_methods  # noqa: E402
from specprune_ros.ros.sim_stack import stack_processes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "sim-tabletop"


def test_the_launch_file_starts_what_the_evaluation_starts():
    commands = stack_processes("/robot1", "p.yaml", "1:3", "lockstep", "log.jsonl", "fixed-start")
    tree = ast.parse((ROOT / "launch" / "sim.launch.py").read_text())
    launched = {kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                for kw in node.keywords if kw.arg == "executable"}
    assert launched == set(commands)
    text = (ROOT / "launch" / "sim.launch.py").read_text()
    robot = commands["sim_robot"]
    robot_options = [a for a in robot[:robot.index("--ros-args")] if a.startswith("--")]
    assert robot_options == ["--seeds", "--clock", "--log", "--layout"]
    assert all(f'"{option}"' in text for option in robot_options), robot_options
    for name in ("action_node", "chunk_executor"):       # both on the robot's clock
        assert "use_sim_time:=true" in commands[name] and "/clock:=/robot1/clock" in commands[name]
    assert '"use_sim_time": lockstep' in text and '("/clock", f"{value[\'namespace\'].rstrip(\'/\')}/clock")' in text
    realtime = stack_processes("/robot1", "p.yaml", "1:3", "realtime", "log.jsonl", "fixed-start")
    assert not any("use_sim_time" in arg for cmd in realtime.values() for arg in cmd)


@pytest.mark.skipif(not MODEL.is_dir(), reason="the shipped sim model is not in this checkout")
def test_a_lockstep_episode_through_ros_is_the_in_process_episode(tmp_path, monkeypatch):
    """Two namespaced robots side by side, each with its own node and executor: every query sees
    the frame of its own period, so the pruned episodes run as the in-process ones do."""
    from specprune_ros.config import Config, model_params_file
    from specprune_ros.ros.sim_stack import ThroughRos
    from specprune_ros.sim.evaluate import evaluate
    from specprune_ros.sim.rollout import CHUNK_EXECUTED

    monkeypatch.setenv("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    config = Config.from_yaml(model_params_file(str(MODEL))).replace(model_path=str(MODEL), device="cpu")
    config = config.replace(control_rate_hz=1.0 / (CHUNK_EXECUTED * config.node.action_dt))
    methods = parse_methods("specprune")
    seeds = [101000, 101001]
    ros = evaluate(config, methods, seeds, tmp_path / "ros", max_steps=24,
                   runner=ThroughRos(tmp_path / "ros", workers=2, max_steps=24))
    local = evaluate(config, methods, seeds, tmp_path / "local", max_steps=24)
    logs = [json.loads(line) for log in sorted((tmp_path / "ros" / "through_ros" / "specprune").glob("robot*.jsonl"))
            for line in log.read_text().splitlines()]
    assert sorted(e["seed"] for e in logs) == seeds                       # one seed per robot
    for episode in logs:
        assert episode["steps"] == 24 and episode["timeouts"] == 0 and episode["skipped"] == 0
        assert len(episode["kept_tokens"]) == 24 // CHUNK_EXECUTED
        assert max(episode["chunk_age_s"]) == pytest.approx((CHUNK_EXECUTED - 1) * config.node.action_dt)
    # The same frames and proprio reach the policy at the same periods; the processes sum in float32
    # with other thread counts, which can flip a near-threshold decision (the controller's mode, a
    # token at the K-th score), so the budgets agree to a few tokens, not bit for bit.
    ros_summary, local_summary = ros["methods"]["specprune"], local["methods"]["specprune"]
    assert ros_summary["kept_tokens_mean"] == pytest.approx(local_summary["kept_tokens_mean"], rel=0.02)
    assert ros_summary["flops_ratio_mean"] == pytest.approx(local_summary["flops_ratio_mean"], rel=0.02)
    assert ros["runner"] == "through-ros" and ros_summary["lockstep_timeouts"] == 0
    assert ros_summary["robot_period_s_mean"] == pytest.approx(0.1, abs=1e-9)     # lockstep: exactly one period


@pytest.mark.skipif(not MODEL.is_dir(), reason="the shipped sim model is not in this checkout")
def test_the_delay_clock_through_ros_is_the_in_process_delay_clock(tmp_path, monkeypatch):
    """The emulated A800 latency (109 ms unpruned: 2 periods; the pruned step's ~70 ms: 1) through
    the stack - the node scheduling its queries from it, the robot delivering each chunk when it is
    due - runs the in-process delay clock's episodes: the same holds, skipped actions and
    observation age behind every executed action, period by period - over an episode gap too
    (both plan each episode afresh)."""
    from specprune_ros.config import Config, model_params_file
    from specprune_ros.latency import parse_latency
    from specprune_ros.policy import make_policy
    from specprune_ros.ros.sim_stack import ThroughRos
    from specprune_ros.sim.env import TabletopEnv
    from specprune_ros.sim.evaluate import evaluate
    from specprune_ros.sim.rollout import CHUNK_EXECUTED, run_policy_episode

    monkeypatch.setenv("ROS_DOMAIN_ID", str(100 + os.getpid() % 50))
    config = Config.from_yaml(model_params_file(str(MODEL))).replace(model_path=str(MODEL), device="cpu")
    config = config.replace(control_rate_hz=1.0 / (CHUNK_EXECUTED * config.node.action_dt))
    methods, seeds, latency = parse_methods("specprune"), [101000, 101001], parse_latency("7b-a800")
    ros = evaluate(config, methods, seeds, tmp_path / "ros", max_steps=30, latency=latency,
                   runner=ThroughRos(tmp_path / "ros", max_steps=30, latency=latency))
    env = TabletopEnv(max_steps=30)
    try:
        expected = [run_policy_episode(env, make_policy(config), seed, latency=latency) for seed in seeds]
    finally:
        env.close()
    episodes = [json.loads(line) for line in
                (tmp_path / "ros" / "through_ros" / "specprune" / "robot1.jsonl").read_text().splitlines()]
    assert [e["seed"] for e in episodes] == seeds                            # one robot, one after the other
    for episode, local in zip(episodes, expected):
        assert episode["timeouts"] == 0 and episode["steps"] == local.steps == 30
        assert episode["latency_ms"][0] == pytest.approx(109, abs=0.01)     # the first step runs unpruned
        assert episode["holds"] == local.holds == 2                          # its 2 periods, at the start
        assert episode["skipped"] == local.skipped
        assert episode["chunk_age_s"] == pytest.approx(local.chunk_age_s, abs=1e-6)
        assert len(episode["kept_tokens"]) == len(local.kept_tokens)        # the same queries
    assert ros["methods"]["specprune"]["emulated_latency_ms_mean"] == pytest.approx(
        float(np.mean([latency.step_ms(f) for e in expected for f in e.flops_ratio])), rel=0.02)


def test_the_sim_robot_resets_on_the_service_and_reports_the_episode(tmp_path):
    """Real time, no policy: the robot holds every period, on a fixed schedule; sim/reset ends the
    episode, whose outcome arrives on sim/episode and in the log."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from specprune_ros.msg import ActionCommand
    from specprune_ros.ros.sim_robot import LATCHED, SimRobotNode

    from .conftest import Spinner, wait_for

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=150 + os.getpid() % 50)
    spinner = Spinner(context)
    try:
        stand_in = spinner.add(Node("stack_stand_in", context=context))   # what the robot waits for
        frames, outcomes = [], []
        stand_in.create_subscription(Image, "image_primary", frames.append, 5)
        stand_in.create_publisher(ActionCommand, "command", 10)
        stand_in.create_subscription(String, "sim/episode", outcomes.append, LATCHED)
        log = tmp_path / "episodes.jsonl"
        robot = spinner.add(SimRobotNode([101000], clock="realtime", log=log, context=context))
        assert wait_for(lambda: len(frames) >= 5, 60)
        client = stand_in.create_client(Trigger, "sim/reset")
        assert client.wait_for_service(timeout_sec=10)
        assert client.call_async(Trigger.Request()) is not None
        assert wait_for(robot.finished.is_set, 30)
        episode = json.loads(log.read_text())
        assert episode["seed"] == 101000 and episode["failure"] == "reset" and 0 < episode["steps"] < 160
        assert episode["holds"] == episode["start_holds"] == episode["steps"]   # no command ever came
        # A fixed schedule: the robot's own step time does not stretch the period; only a step
        # that overran a whole period (a busy host) restarts it, and is counted.
        assert episode["period_s"] >= 0.1 - 1e-9
        assert episode["period_s"] == pytest.approx(0.1, abs=1e-9) or episode["late_periods"] > 0, episode
        assert wait_for(lambda: outcomes, 10) and json.loads(outcomes[0].data)["seed"] == 101000
    finally:
        spinner.shutdown()
        rclpy.shutdown(context=context)


@pytest.mark.skipif(not MODEL.is_dir(), reason="the shipped sim model is not in this checkout")
@pytest.mark.parametrize("clock", ["lockstep", "realtime"])
def test_a_stack_resumes_after_deactivate_and_activate(ros, tmp_path, clock):
    """`ros2 lifecycle set .../action_node deactivate`, then `activate` 4 s later: the executor
    holds while no chunk can come and acts again soon after activation - not after the robot's
    60 s lockstep timeout. In lockstep the robot's clock held meanwhile and the episode is not lost."""
    import subprocess

    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.node import Node
    from rclpy.time import Time
    from rosgraph_msgs.msg import Clock

    from specprune_ros.config import Config, model_params_file
    from specprune_ros.msg import ActionCommand
    from specprune_ros.ros.sim_stack import _stop, dds_profile_environment

    from .conftest import wait_for
    from .test_action_node import call

    context, spinner = ros
    config = Config.from_yaml(model_params_file(str(MODEL))).replace(model_path=str(MODEL), device="cpu",
                                                                       sensor_qos="reliable")
    params, log = tmp_path / "params.yaml", tmp_path / "robot.jsonl"
    params.write_text(config.to_ros_yaml())
    env = {**os.environ, **dds_profile_environment(), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    lockstep = clock == "lockstep"
    seeds, max_steps = ("101000:101001", 80) if lockstep else ("101000:101004", None)   # real time: episodes go on
    commands = stack_processes("/robot1", params, seeds, clock, log, "fixed-start", max_steps=max_steps)
    procs = [subprocess.Popen(cmd, env=env, stdout=(tmp_path / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True) for name, cmd in commands.items()]
    try:
        probe = spinner.add(Node("lifecycle_probe", context=context))
        sim_clock, received = [0], []
        def tick(message):
            sim_clock.append(max(sim_clock[-1], Time.from_msg(message.clock).nanoseconds))

        probe.create_subscription(Clock, "/robot1/clock", tick, 10)
        probe.create_subscription(ActionCommand, "/robot1/command",
                                  lambda m: received.append((time.monotonic(), m.hold, m.reason)), 10)

        def change(transition):
            request = ChangeState.Request(transition=Transition(id=transition))
            assert call(probe, ChangeState, "/robot1/action_node/change_state", request, timeout=30.0).success

        def acting_since(moment):
            return any(at > moment and not hold for at, hold, _ in received)

        assert wait_for(lambda: acting_since(0.0), 180), "the stack never acted"
        deactivated = time.monotonic()
        change(Transition.TRANSITION_DEACTIVATE)
        assert wait_for(lambda: any(at > deactivated and hold and "deactivat" in reason
                                    for at, hold, reason in received), 30), received[-5:]
        time.sleep(4.0)
        held = sim_clock[-1]
        assert not acting_since(deactivated + 1.0), "acted while deactivated"
        activated = time.monotonic()
        change(Transition.TRANSITION_ACTIVATE)
        assert wait_for(lambda: acting_since(activated), 30), received[-5:]
        if lockstep:
            # the robot steps on the command and then publishes its clock: wait for it, not just the command
            assert wait_for(lambda: sim_clock[-1] > held, 30), (held, sim_clock[-1])
            assert wait_for(log.exists, 120)
            episode = json.loads(log.read_text().splitlines()[0])
            assert episode["steps"] == 80 and episode["timeouts"] == 0, episode
    finally:
        _stop(procs)


def test_an_episode_the_robot_s_stop_cuts_short_is_not_an_outcome(tmp_path):
    """Ctrl-C mid-episode: no `not placed after N steps` line, nothing in the log."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from specprune_ros.msg import ActionCommand
    from specprune_ros.ros.sim_robot import SimRobotNode

    from .conftest import Spinner, wait_for

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=150 + os.getpid() % 50)
    spinner = Spinner(context)
    try:
        stand_in = spinner.add(Node("stack_stand_in", context=context))
        frames = []
        stand_in.create_subscription(Image, "image_primary", frames.append, 5)
        stand_in.create_publisher(ActionCommand, "command", 10)
        log = tmp_path / "episodes.jsonl"
        robot = SimRobotNode([101000, 101001], clock="realtime", log=log, context=context)
        spinner.add(robot)
        assert wait_for(lambda: len(frames) >= 5, 60)
        robot.shutdown()
        assert robot.finished.is_set() and robot.episodes == [] and not log.exists()
    finally:
        spinner.shutdown()
        rclpy.shutdown(context=context)
