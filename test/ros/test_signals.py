"""Ctrl-C as a terminal and ``ros2 launch`` deliver it: twice (the terminal's process group and
launch), at start-up, in steady state and during the shutdown the first one started. Each of the
three ROS processes, started as ``ros2 run`` starts it, exits 0 without a traceback or an abort.

``SPECPRUNE_SIGNAL_REPEATS=20 pytest test/ros/test_signals.py`` runs each case 20 times."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rcl_interfaces.srv import ListParameters
from rclpy.node import Node

ROOT = Path(__file__).resolve().parents[2]
REPEATS = int(os.environ.get("SPECPRUNE_SIGNAL_REPEATS", "1"))
PROCESSES = {"action_node": ["--ros-args", "-p", "device:=cpu"],
             "chunk_executor": ["--ros-args"],
             "sim_robot": ["--seeds", "1:2", "--clock", "realtime", "--ros-args"]}
# Seconds between the signals: two 50 ms apart, or the second one well into the shutdown.
PATTERNS = {"steady": (0.05,), "shutdown": (0.3, 0.3)}


def start(name, namespace="/signals"):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / name), *PROCESSES[name], "-r",
                             f"__ns:={namespace}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def interrupt(proc, gaps):
    proc.send_signal(signal.SIGINT)
    for gap in gaps:
        time.sleep(gap)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return out


def assert_clean_exit(proc, out):
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{out}"
    assert "Traceback" not in out and "terminate called" not in out and "KeyboardInterrupt" not in out, out


def wait_until_spinning(probe, name, proc, timeout=90.0):
    """A node answers a service only from its spin loop: once it does, the process is running."""
    client = probe.create_client(ListParameters, f"{name}/list_parameters")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if client.wait_for_service(timeout_sec=0.5):
            future = client.call_async(ListParameters.Request())
            end = time.monotonic() + 2.0
            while time.monotonic() < end and not future.done():
                time.sleep(0.02)
            if future.done():
                probe.destroy_client(client)
                return
            client.remove_pending_request(future)
    raise AssertionError(f"{name} never answered (exit code {proc.poll()})")


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_a_double_ctrl_c_while_starting_exits_0(name):
    rng = random.Random(name)
    for _ in range(REPEATS):
        proc = start(name)
        time.sleep(rng.uniform(0.1, 1.5))          # imports, the model's load, configure
        assert_clean_exit(proc, interrupt(proc, (0.05,)))


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_a_double_ctrl_c_while_running_exits_0(ros, name, pattern):
    context, spinner = ros
    probe = spinner.add(Node("signal_probe", context=context))
    for run in range(REPEATS):
        namespace = f"/signals_{os.getpid()}_{run}"          # never a node left from another test
        proc = start(name, namespace)
        wait_until_spinning(probe, f"{namespace}/{name}", proc)
        out = interrupt(proc, PATTERNS[pattern])
        assert_clean_exit(proc, out)
        assert "while starting" not in out, out    # it did stop the running way
