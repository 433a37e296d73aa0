"""``specprune sim eval --through-ros``: the sim task's episodes through the whole ROS 2 stack.

Per robot namespace (``/robot1``, ``/robot2``, ... - the evaluation's workers) three processes,
started with the arguments ``launch/sim.launch.py`` passes (``stack_processes``; a test keeps the
two in step): the sim robot (``sim_robot``), the action node (``action_node``) and the chunk
executor (``chunk_executor``), all reading one parameter file - the method's complete
configuration, keyed ``/**``. With the lockstep clock each namespace has its own ``/clock``
(remapped to ``<namespace>/clock``) and the node and the executor run on it (``use_sim_time``).
The robots' JSON-lines logs become the same episodes ``sim eval`` summarises in process, plus
what only the stack has: the age of the observation behind each executed action, actions
skipped because their time had passed, holds, lockstep timeouts and the action node's drops.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.device import free_cpus
from ..config import Config
from ..latency import LatencyModel
from .transport_check import PROFILE, PROFILE_VARIABLES

ROBOT, NODE, EXECUTOR = "sim_robot", "action_node", "chunk_executor"
START_TIMEOUT_S = 180.0          # the slowest start (a model loading) plus the first episode's first step
EPISODE_TIMEOUT_S = 300.0        # wall clock per episode before the run is abandoned
COMPUTED_CHUNK_TOPIC = "sim/computed_chunk"    # the delay clock: the node's chunks, before they are due


def stack_processes(namespace: str, params_file: str | Path, seeds: str, clock: str, log: str | Path,
                    layout: str, max_steps: int | None = None, latency: LatencyModel | None = None
                    ) -> dict[str, list[str]]:
    """The command lines of one robot's stack (what launch/sim.launch.py starts for it); with
    ``latency`` the delay clock: the node emulates it and hands its chunks to the robot, which
    delivers them to the executor when due."""
    python = [sys.executable, "-m", "specprune_ros"]
    ros = ["--ros-args", "-r", f"__ns:={namespace}", "--params-file", str(params_file)]
    sim_time = ["-r", f"/clock:={namespace}/clock"] if clock == "lockstep" else []
    use_sim_time = ["-p", "use_sim_time:=true"] if clock == "lockstep" else []
    robot = [*python, "sim", "robot", "--seeds", seeds, "--clock", clock, "--log", str(log), "--layout", layout]
    if max_steps:
        robot += ["--max-steps", str(max_steps)]
    delay = []
    if latency is not None:
        robot.append("--delay-clock")
        delay = ["-p", f"emulated_latency:={latency.parameter}", "-p", f"topics.action_chunk:={COMPUTED_CHUNK_TOPIC}"]
    return {
        ROBOT: [*robot, *ros, *sim_time],
        NODE: [*python, "node", *ros, *sim_time, *use_sim_time, *delay],
        EXECUTOR: [*python, "executor", *ros, *sim_time, *use_sim_time],
    }


class ThroughRos:
    """``sim eval``'s runner: each method's seeds split over ``workers`` namespaced stacks."""

    name = "through-ros"

    def __init__(self, out: str | Path, workers: int = 1, clock: str = "lockstep", max_steps: int | None = None,
                 layout: str = "fixed-start", latency: LatencyModel | None = None) -> None:
        if latency is not None and clock != "lockstep":
            raise ValueError(f"an emulated latency ({latency.name}) runs on the lockstep clock, not {clock}")
        self.out, self.workers, self.clock, self.latency = Path(out), workers, clock, latency
        self.max_steps, self.layout = max_steps, layout
        self.threads = max(1, free_cpus() // workers)     # as in process: never more threads than free cores

    def __enter__(self) -> "ThroughRos":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, label: str, config: Config, seeds: list[int], done: Callable[[], None]) -> list[dict[str, Any]]:
        run_dir = self.out / "through_ros" / _safe(label)
        run_dir.mkdir(parents=True, exist_ok=True)
        params = run_dir / "params.yaml"
        if self.clock == "lockstep":             # a lost frame would only cost wall time: deliver every one
            config = config.replace(sensor_qos="reliable")
        params.write_text(config.to_ros_yaml())
        blocks = [b for b in np.array_split(np.asarray(seeds), self.workers) if b.size]
        stacks, logs = [], []
        env = {**os.environ, **dds_profile_environment(), "OMP_NUM_THREADS": str(self.threads),
               "PYTHONUNBUFFERED": "1"}
        for i, block in enumerate(blocks, start=1):
            log = run_dir / f"robot{i}.jsonl"
            log.unlink(missing_ok=True)
            logs.append(log)
            commands = stack_processes(f"/robot{i}", params, f"{block[0]}:{block[-1] + 1}", self.clock, log,
                                       self.layout, self.max_steps, self.latency)
            stacks.append({name: subprocess.Popen(cmd, env=env, stdout=(run_dir / f"{name}{i}.log").open("w"),
                                                  stderr=subprocess.STDOUT, start_new_session=True)
                           for name, cmd in commands.items()})
        try:
            self._wait(stacks, logs, len(seeds), done, run_dir)
        finally:
            for stack in stacks:
                _stop(stack.values())
        episodes = [json.loads(line) for log in logs if log.exists() for line in log.read_text().splitlines()]
        by_seed = {e["seed"]: e for e in episodes}
        missing = [s for s in seeds if s not in by_seed]
        if missing:
            raise RuntimeError(f"{label}: no outcome for seeds {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                               f"(process logs in {run_dir})")
        return [{**by_seed[s], "method": label, "snapshot": None} for s in seeds]

    def _wait(self, stacks: list[dict[str, subprocess.Popen]], logs: list[Path], total: int,
              done: Callable[[], None], run_dir: Path) -> None:
        seen, last_progress = 0, time.monotonic()
        while True:
            count = sum(len(log.read_text().splitlines()) for log in logs if log.exists())
            for _ in range(count - seen):
                done()
            if count > seen:
                seen, last_progress = count, time.monotonic()
            robots_done = all(stack[ROBOT].poll() is not None for stack in stacks)
            if robots_done or count >= total:
                return
            for stack in stacks:
                for name, proc in stack.items():
                    if name != ROBOT and proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with code {proc.returncode} (log: {run_dir})")
            limit = START_TIMEOUT_S if seen == 0 else EPISODE_TIMEOUT_S
            if time.monotonic() - last_progress > limit:
                raise RuntimeError(f"no episode finished for {limit:g} s (process logs in {run_dir})")
            time.sleep(0.5)

    def summary(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """What only the stack measures, over every executed action / episode."""
        ages = np.concatenate([np.asarray(r["chunk_age_s"], np.float64) for r in results])
        drops: dict[str, int] = {}
        for r in results:                      # cumulative per robot: the largest is its total
            for reason, count in r.get("drops", {}).items():
                drops[reason] = max(drops.get(reason, 0), count)
        delay = {} if self.latency is None else {
            # the node's PruningStats carry the emulated latency, not this host's: no measured step here
            "emulated_latency_ms_mean": float(np.mean(np.concatenate([r["latency_ms"] for r in results]))),
            "latency_ms_mean": float("nan"), "latency_ms_p95": float("nan")}
        return {"clock": self.clock if self.latency is None else f"{self.clock}, delay (emulated latency)", **delay,
                "chunk_age_s_mean": float(ages.mean()) if ages.size else float("nan"),
                "chunk_age_s_p95": float(np.percentile(ages, 95)) if ages.size else float("nan"),
                "skipped_actions_per_episode": float(np.mean([r["skipped"] for r in results])),
                "holds_per_episode": float(np.mean([r["holds"] for r in results])),
                # of those, before the first action: the arm waits at rest for the first chunk
                "start_holds_per_episode": float(np.mean([r.get("start_holds", 0) for r in results])),
                "lockstep_timeouts": int(sum(r["timeouts"] for r in results)),
                "late_periods_per_episode": float(np.mean([r.get("late_periods", 0) for r in results])),
                # the robot's achieved period (real time: a figure whose period overran the
                # action period by more than 5 % is not a real-time figure)
                "robot_period_s_mean": _weighted_period(results),
                "node_drops": drops}


def _weighted_period(results: list[dict[str, Any]]) -> float:
    steps = sum(r["steps"] for r in results)
    return sum(r.get("period_s", 0.0) * r["steps"] for r in results) / steps if steps else float("nan")


def dds_profile_environment() -> dict[str, str]:
    """The Fast DDS profile for camera frames, as the launch files give the node (the default
    shared-memory segment loses frames of this size)."""
    return {name: str(PROFILE) for name in PROFILE_VARIABLES} if PROFILE.is_file() else {}


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _stop(processes) -> None:
    """SIGINT (each node's clean shutdown), then SIGKILL after 15 s."""
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 15.0
    for proc in processes:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
