"""Emulated step latency for the delay clock: in process (``run_policy_episode(latency=...)``)
and through ROS (the action node's ``emulated_latency``, with a lockstep sim robot).

A real-time run on this host measures this host: six processes on two cores, a small model. The
question a lab asks is another one - at my model's latency on my GPU, does pruning raise
success? - so the evaluation can instead let each answer arrive after an *emulated* latency in
simulated time while the robot keeps executing what it has, as the real-time-chunking work
evaluates its policies (Black et al. 2025). The run is then deterministic and independent of the
host.

A latency is either a fixed number of milliseconds (every method the same: success against
latency) or a named target, a model of one model on one GPU: a fixed part (vision towers,
preprocessing, projector, action head, launch overheads) plus the unpruned LLM forward scaled by
the step's measured LLM FLOPs ratio (linear: the paper's RTX 3090 row, 2.09x on the LLM at 43 %
of its FLOPs, says linear is ~10 % optimistic for the pruned step). Every figure made with one
says "emulated" and names it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LatencyModel:
    name: str
    fixed_ms: float          # the part pruning does not change
    llm_ms: float            # the unpruned LLM forward; scales with the step's LLM FLOPs ratio
    source: str              # where the figures come from

    def step_ms(self, flops_ratio: float) -> float:
        return self.fixed_ms + self.llm_ms * flops_ratio

    @property
    def parameter(self) -> str:
        """The text that names it again (``parse_latency``; the action node's ``emulated_latency``)."""
        return self.name if self.name in TARGETS else f"{self.fixed_ms:g}"

    def periods(self, flops_ratio: float, action_dt: float) -> int:
        return latency_periods(self.step_ms(flops_ratio), action_dt)


def latency_periods(ms: float, action_dt: float) -> int:
    """Whole action periods from a query to its answer: the answer is usable from the first period
    boundary at or after it arrives (a tiny tolerance keeps 100 ms at 0.1 s one period)."""
    return max(0, math.ceil(ms / 1000 / action_dt - 1e-9))


# The 7B OpenVLA-OFT. The A800 split reproduces the paper's own end-to-end figures: 109 ms unpruned
# and 1.46x (74.7 ms) at 43 % of the LLM FLOPs give an LLM part of (109 - 74.7) / (1 - 0.43) =
# 60.2 ms and 48.8 ms of the rest. The H100 figure is the ~90 ms per step OFT users report with
# the reference code, split in the same proportion.
_A800_LLM_SHARE = (109 - 109 / 1.46) / (1 - 0.43) / 109
TARGETS = {
    "7b-a800": LatencyModel("7b-a800", 109 * (1 - _A800_LLM_SHARE), 109 * _A800_LLM_SHARE,
                            "SpecPrune-VLA paper, LIBERO on an A800: 109 ms unpruned, 1.46x at 43 % LLM FLOPs"),
    "7b-h100": LatencyModel("7b-h100", 90 * (1 - _A800_LLM_SHARE), 90 * _A800_LLM_SHARE,
                            "OpenVLA-OFT users' ~90 ms per step on an H100 (reference code), the A800's LLM share"),
}


def parse_latency(text: str) -> LatencyModel:
    """``"250"`` (ms, the same for every method) or a target's name (``TARGETS``)."""
    if text in TARGETS:
        return TARGETS[text]
    try:
        ms = float(text)
    except ValueError:
        raise ValueError(f"latency {text!r}: milliseconds (e.g. 250) or one of {', '.join(TARGETS)}") from None
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"latency {text!r}: milliseconds must be finite and >= 0")
    return LatencyModel(f"{ms:g} ms", ms, 0.0, "fixed")
