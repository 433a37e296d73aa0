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

from ..observation import HistoryFrame, Observation
from ..policy import SpecPrunePolicy
from .env import ACTION_DT, TabletopEnv


@dataclass
class EpisodeResult:
    seed: int
    instruction: str
    success: bool
    steps: int
    latency_ms: list[float] = field(default_factory=list)
    kept_tokens: list[int] = field(default_factory=list)
    flops_ratio: list[float] = field(default_factory=list)


def run_policy_episode(env: TabletopEnv, policy: SpecPrunePolicy, seed: int, execute: int = 8,
                       on_step: Callable[[float, dict, np.ndarray, str], None] | None = None) -> EpisodeResult:
    """``on_step(stamp, observation, action, instruction)`` sees every executed action (recording)."""
    obs, info = env.reset(seed=seed)
    policy.reset()
    result = EpisodeResult(seed, info["instruction"], False, 0)
    history: list[HistoryFrame] = []
    while True:
        out = policy.step(Observation([obs["primary"], obs["wrist"]], obs["proprio"], info["instruction"],
                                      stamp=env.steps * ACTION_DT, history=history))
        result.latency_ms.append(out.stats.latency_ms)
        result.kept_tokens.append(out.stats.vision_tokens_kept)
        result.flops_ratio.append(out.stats.flops_ratio)
        history = []
        for action in out.actions[:execute]:
            if on_step is not None:
                on_step(env.steps * ACTION_DT, obs, action, info["instruction"])
            obs, _, success, truncated, info = env.step(action)
            if success or truncated:
                result.success, result.steps = bool(success), env.steps
                return result
            history.append(HistoryFrame(env.steps * ACTION_DT, [obs["primary"], obs["wrist"]]))
        history = history[:-1]           # the last frame is the next query's own observation


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def evaluate(policy: SpecPrunePolicy, seeds: list[int], progress: Callable[[int, int], None] | None = None
             ) -> dict:
    env = TabletopEnv()
    episodes = []
    try:
        for i, seed in enumerate(seeds, start=1):
            episodes.append(run_policy_episode(env, policy, seed))
            if progress:
                progress(i, len(seeds))
    finally:
        env.close()
    wins = sum(e.success for e in episodes)
    latency = [v for e in episodes for v in e.latency_ms]
    return {"episodes": len(episodes), "successes": wins, "success_rate": wins / max(1, len(episodes)),
            "success_ci95": wilson_interval(wins, len(episodes)),
            "latency_ms_mean": float(np.mean(latency)) if latency else math.nan,
            "kept_tokens_mean": float(np.mean([v for e in episodes for v in e.kept_tokens])) if latency else math.nan,
            "flops_ratio_mean": float(np.mean([v for e in episodes for v in e.flops_ratio])) if latency else math.nan,
            "per_episode": [{"seed": e.seed, "success": e.success, "steps": e.steps, "instruction": e.instruction}
                            for e in episodes]}
