"""One control tick, the same for the action node and for bag replay.

    tick = ControlTick(assembler, policy.step)
    result = tick.run(now_ns, after_step_ns)      # assemble -> step -> after-step age rule

The node calls it from its worker at ``control_rate_hz`` with the ROS clock; replay calls it at
the same ticks on the bag's header clock, with a declared step latency standing in for the
time the step took (never the host's measured one: replay's steps do not depend on its
speed). Both count drops in the assembler's counter by the same reasons, so replay's drop
counts are the node's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .observation import Observation, ObservationError
from .policy import PolicyOutput
from .sensing.assembly import ObservationAssembler


@dataclass
class TickResult:
    observation: Observation | None = None
    output: PolicyOutput | None = None     # set when there is an action to publish
    reason: str = ""                        # why there is none
    dropped: bool = False                   # a counted drop (stale, incomplete, malformed), not just "nothing new"
    age_s: float = 0.0                      # age of the observation once the step was done


class ControlTick:
    def __init__(self, assembler: ObservationAssembler, step: Callable[[Observation], PolicyOutput],
                 prepare: Callable[[Observation], None] | None = None) -> None:
        """``step`` runs the policy; ``prepare`` may complete the observation first (replay adds
        the recorded motion)."""
        self.assembler, self.step, self.prepare = assembler, step, prepare

    def run(self, now_ns: int, after_step_ns: Callable[[PolicyOutput], int]) -> TickResult:
        """``after_step_ns(output)``: the clock once the step is done (the node reads its clock;
        replay adds a declared step latency to the tick)."""
        assembled = self.assembler.assemble(now_ns)
        obs = assembled.observation
        if obs is None:
            return TickResult(reason=assembled.reason, dropped=assembled.dropped)
        if self.prepare is not None:
            self.prepare(obs)
        try:
            out = self.step(obs)
        except ObservationError as exc:
            return self._drop("malformed", f"malformed: {exc}", obs)
        # The step took time: never act on data that became too old meanwhile.
        after = after_step_ns(out)
        age = (after - obs.stamp_ns) * 1e-9
        if age > self.assembler.max_age_s:
            return self._drop("stale", f"stale: the action would be based on data {age:.3f} s old "
                                       f"(step {(after - now_ns) * 1e-6:.0f} ms)", obs, age)
        return TickResult(obs, out, age_s=age)

    def _drop(self, kind: str, reason: str, obs: Observation, age: float = 0.0) -> TickResult:
        self.assembler.drops[kind] += 1
        return TickResult(obs, None, reason, True, age)
