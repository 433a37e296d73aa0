"""Closed-loop episodes of a policy in the tabletop environment, as OpenVLA-OFT runs on LIBERO.

The policy is queried, the whole action chunk (8 actions, one per 0.1 s period) is executed open
loop, and the frames seen while executing reach the policy's frame history with the next query
(``Observation.history``), so SpecPrune's velocity-adaptive history works as on a robot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..latency import LatencyModel
from ..observation import HistoryFrame, Observation
from ..policy import SpecPrunePolicy
from . import CAMERAS
from .env import ACTION_DT, CHUNK_EXECUTED, TabletopEnv
from .scene import OBJECTS

LIFTED_M = 0.03                          # an object this far above its resting height was picked up


@dataclass
class EpisodeResult:
    seed: int
    instruction: str
    success: bool
    steps: int
    latency_ms: list[float] = field(default_factory=list)     # per policy query
    kept_tokens: list[int] = field(default_factory=list)
    flops_ratio: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    fine_mode: list[bool] = field(default_factory=list)
    lifted: dict[str, float] = field(default_factory=dict)    # object -> highest rise above rest (m)
    target: str = ""
    snapshot: np.ndarray | None = None                        # overlay of the kept patches at one query
    # the delay clock only (``latency``): periods held, actions skipped as too late, and the age of
    # the observation behind each executed action (s)
    holds: int = 0
    skipped: int = 0
    chunk_age_s: list[float] = field(default_factory=list)
    # how far the commanded translation changes from one period to the next (m), where a new
    # chunk takes over and within one chunk: a hand-over that jerks shows as larger steps
    handover_step_m: list[float] = field(default_factory=list)
    within_step_m: list[float] = field(default_factory=list)

    @property
    def failure(self) -> str:
        """"" (success), "wrong object" (another object was picked up), "missed grasp" (the target
        never was), "not placed" (picked up, not resting on / in the receptacle by the step limit)."""
        if self.success:
            return ""
        if any(rise > LIFTED_M for name, rise in self.lifted.items() if name != self.target):
            return "wrong object"
        return "not placed" if self.lifted.get(self.target, 0.0) > LIFTED_M else "missed grasp"


def object_heights(env: TabletopEnv) -> dict[str, float]:
    """Every graspable object's height (m): against its height at reset, what was picked up."""
    return {name: float(env.object_position(name)[2]) for name in OBJECTS}


def run_policy_episode(env: TabletopEnv, policy: SpecPrunePolicy, seed: int, execute: int = CHUNK_EXECUTED,
                       on_step: Callable[[float, dict, np.ndarray, str], None] | None = None,
                       snapshot_query: int | None = None, frozen: tuple[str, ...] = (),
                       latency: LatencyModel | None = None) -> EpisodeResult:
    """``on_step(stamp, observation, action, instruction)`` sees every executed action (recording);
    ``snapshot_query``: keep the kept-patch overlay of that query (0-based); ``frozen``: cameras
    (``CAMERAS``) whose image stays the episode's first frame - what the policy reads from each
    camera: a camera it never needed costs nothing frozen, one it tracks progress or finds the
    target with does. ``latency``: the delay clock (``_DelayClock``) instead of lockstep."""
    unknown = set(frozen) - set(CAMERAS)
    if unknown:
        raise ValueError(f"frozen camera {sorted(unknown)[0]!r}: not one of {', '.join(CAMERAS)}")
    obs, info = env.reset(seed=seed)
    policy.reset()
    first = {camera: obs[camera] for camera in frozen}

    def images(obs: dict) -> list[np.ndarray]:
        return [first.get(camera, obs[camera]) for camera in CAMERAS]

    result = EpisodeResult(seed, info["instruction"], False, 0, target=env.task.target)
    rest = object_heights(env)
    clock = None if latency is None else _DelayClock(policy.config.executor, latency, execute,
                                                      policy.model.config.chunk_size)
    history: list[HistoryFrame] = []     # the frames since the last query's, the current one last
    while True:
        if clock is None or clock.query_due(env.steps):
            out = policy.step(Observation(images(obs), obs["proprio"], info["instruction"],
                                          stamp=env.steps * ACTION_DT, history=history[:-1]))
            _record_query(result, out, snapshot_query)
            history = []
            if clock is not None:
                clock.asked(env.steps, out)
        for action in out.actions[:execute] if clock is None else [clock.action(env.steps, result)]:
            if on_step is not None:
                on_step(env.steps * ACTION_DT, obs, action, info["instruction"])
            obs, _, success, truncated, info = env.step(action)
            for name, height in object_heights(env).items():
                result.lifted[name] = max(result.lifted.get(name, 0.0), height - rest[name])
            if success or truncated:
                result.success, result.steps = bool(success), env.steps
                return result
            history.append(HistoryFrame(env.steps * ACTION_DT, images(obs)))


def _record_query(result: EpisodeResult, out, snapshot_query: int | None) -> None:
    if snapshot_query is not None and len(result.latency_ms) == snapshot_query:
        result.snapshot = out.overlay()
    stats = out.stats
    result.latency_ms.append(stats.latency_ms)
    result.kept_tokens.append(stats.vision_tokens_kept)
    result.flops_ratio.append(stats.flops_ratio)
    result.recall.append(stats.global_recall)
    result.fine_mode.append(stats.fine_mode)


class _DelayClock:
    """Real time in simulated time: a query's answer arrives ``latency`` (emulated, from the step's
    LLM FLOPs) after its observation while the arm goes on executing what it has, through the
    node's own chunk executor (time alignment: a chunk observed at s starts at the action for the
    period it arrives in, the earlier ones skipped and counted; the old chunk's actions run while
    the query is on its way; clamps; a hold when no action is left). One query in flight at a time,
    as on one GPU; the next is asked every ``execute`` periods, sooner when the chunk in use would
    run out before its answer lands - the node's ``QuerySchedule``, fed the emulated latencies.
    Deterministic: nothing depends on this host's speed."""

    def __init__(self, executor_config, latency: LatencyModel, execute: int, chunk_size: int) -> None:
        from ..execution import Chunk, ChunkExecutor, QuerySchedule
        self.executor, self.chunk_type = ChunkExecutor(executor_config, ACTION_DT), Chunk
        self.schedule, self.horizon = QuerySchedule(), chunk_size
        self.latency, self.execute = latency, execute
        self.dt_ns = self.executor.dt_ns
        self.pending: tuple[int, object] | None = None      # (arrival period, chunk)
        self.next_query, self.queries, self.gripper = 0, 0, -1.0
        self.last: tuple[int, np.ndarray] | None = None     # (chunk step, action) of the previous command

    def query_due(self, period: int) -> bool:
        """Whether a query goes out at the start of this period (an answer arriving now frees
        the GPU for it)."""
        self._deliver(period)
        return self.pending is None and period >= self.next_query

    def _deliver(self, period: int) -> None:
        if self.pending is not None and period >= self.pending[0]:
            self.executor.submit(self.pending[1])
            self.pending = None

    def asked(self, period: int, out) -> None:
        lead = self.latency.periods(out.stats.flops_ratio, ACTION_DT)
        chunk = self.chunk_type(np.asarray(out.actions), period * self.dt_ns, self.queries)
        self.pending, self.queries = (period + lead, chunk), self.queries + 1
        self.next_query = self.schedule.plan(period, lead, self.execute, self.horizon)

    def action(self, period: int, result: EpisodeResult) -> np.ndarray:
        """The command of this period: the executor's, or a hold (no translation or rotation, the
        gripper as last commanded)."""
        self._deliver(period)                 # an answer with no delay is in hand at once
        command = self.executor.command(period * self.dt_ns)
        if command is None or command.hold:
            result.holds += 1
            self.last = None
            return np.array([0, 0, 0, 0, 0, 0, self.gripper], np.float32)
        result.skipped += command.skipped
        result.chunk_age_s.append((period * self.dt_ns - command.chunk.stamp_ns) * 1e-9)
        action = np.asarray(command.action, np.float32)
        if self.last is not None:
            step = float(np.linalg.norm(action[:3] - self.last[1][:3]))
            (result.handover_step_m if command.chunk.step != self.last[0] else result.within_step_m).append(step)
        self.last = (command.chunk.step, action)
        self.gripper = float(command.action[6])
        return action


class _Recording:
    """A policy that also keeps every observation it is shown (the proxy's episodes)."""

    def __init__(self, policy: SpecPrunePolicy) -> None:
        self.policy, self.observations = policy, []

    def reset(self) -> None:
        self.policy.reset()

    def step(self, obs: Observation):
        self.observations.append(obs)
        return self.policy.step(obs)


def recorded_observations(env: TabletopEnv, policy: SpecPrunePolicy, seeds: list[int],
                          progress: Callable[[int, int], None] | None = None) -> list[list[Observation]]:
    """Closed-loop episodes of ``policy`` (the unpruned one, for the proxy): per seed, the
    observations it was queried with, frames in between included."""
    episodes = []
    for i, seed in enumerate(seeds):
        recording = _Recording(policy)
        run_policy_episode(env, recording, seed)
        episodes.append(recording.observations)
        if progress:
            progress(i + 1, len(seeds))
    return episodes


def run_labeled_episode(env: TabletopEnv, policy: SpecPrunePolicy, seed: int) -> dict:
    """DAgger's data: the policy drives (its chunks executed open loop, as in evaluation) and the
    scripted expert, noise-free, labels every state the policy visits with the action it would
    take there - the recoveries from the policy's own mistakes, which expert-driven demonstrations
    never show. Returns ``run_expert_episode``'s record (the actions are the expert's labels)."""
    from .expert import EXPERT_SEED_OFFSET, RECORDED, ScriptedExpert, record_step

    frames: dict[str, list] = {key: [] for key in RECORDED}
    expert: list[ScriptedExpert] = []

    def label(stamp: float, obs: dict, action: np.ndarray, instruction: str) -> None:
        if not expert:                           # made after the episode's reset
            expert.append(ScriptedExpert(env, seed=seed + EXPERT_SEED_OFFSET, noise=0.0))
        record_step(frames, env, obs, expert[0].act())

    result = run_policy_episode(env, policy, seed, on_step=label)
    return {"seed": seed, "success": result.success, "steps": result.steps, "instruction": result.instruction,
            "retries": expert[0].retries if expert else 0, **{k: np.asarray(v) for k, v in frames.items()}}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # The interval contains p; clamped so rounding (e.g. 0 successes: 1e-17 - 0) cannot say otherwise.
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))
