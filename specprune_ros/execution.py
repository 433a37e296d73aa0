"""The chunk executor's rules, without ROS: action chunks in, one command per action period out.

All times are integer nanoseconds, as header stamps are (float seconds would round a period
boundary away). A chunk predicted from an observation stamped ``s`` holds actions meant for
``s``, ``s + dt``, ``s + 2 dt``, ...: action ``k`` belongs to the period ``[s + k dt, s + (k + 1) dt)``. The executor
is asked for the command at time ``now`` and answers with the action of the period ``now`` falls
in, so a chunk that arrives late (a slow step) starts where the clock is - the actions whose time
has passed are skipped and counted, never replayed. Between overlapping chunks the newest one
wins (``replace``), or every live chunk's action for the period is averaged (``ensemble``, ACT's
temporal ensembling). With no action for the period (no chunk yet, the chunk ran out, or it is
older than ``max_chunk_age_s``) the executor holds: one hold command, then nothing until there
is an action again. Every action is clamped to the per-period translation / rotation limits and,
with a known end-effector position, to the workspace box. A stop (the e-stop, or the action node
deactivating) holds until it is released.

Actions are OpenVLA-OFT's end-effector deltas: ``dx dy dz`` (m per period), ``droll dpitch dyaw``
(rad per period), then the gripper.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .config import ExecutorConfig

TRANSLATION = slice(0, 3)
ROTATION = slice(3, 6)


@dataclass(frozen=True)
class Chunk:
    actions: np.ndarray       # (chunk_size, action_dim), un-normalized
    stamp_ns: int             # the observation's stamp
    step: int                 # the action node's step counter


@dataclass(frozen=True)
class Command:
    """One period's command: an action, or a hold (``action`` None) with its reason."""

    time_ns: int
    action: np.ndarray | None
    reason: str = ""
    chunk: Chunk | None = None        # the (newest) chunk the action came from
    index: int = 0                    # the action's index in that chunk
    skipped: int = 0                  # that chunk's actions skipped since the previous command
    clamped: bool = False

    @property
    def hold(self) -> bool:
        return self.action is None


@dataclass
class ExecutorCounters:
    commands: int = 0
    holds: int = 0
    skipped: int = 0                  # actions never executed because their time had passed
    clamped: int = 0
    chunks: int = 0
    rejected: dict[str, int] = field(default_factory=dict)   # chunks not taken, by reason


class ChunkExecutor:
    def __init__(self, config: ExecutorConfig, action_dt: float) -> None:
        self.config = config
        self.dt_ns = round(action_dt * 1e9)
        self.max_age_ns = round(config.max_chunk_age_s * 1e9)
        self.chunks: list[Chunk] = []                 # live chunks, oldest first
        self.counters = ExecutorCounters()
        self._stopped: dict[str, str] = {}            # source -> why (e-stop, action node inactive)
        self._held = False                            # the last answer was a hold (one hold per stop)
        self._executed: dict[int, int] = {}           # chunk step -> last index executed

    # ---- inputs ----------------------------------------------------------------------------------
    def submit(self, chunk: Chunk) -> bool:
        """Take a new chunk; a chunk not newer than the newest one (reordered, replayed) is refused,
        and so is every chunk while stopped (planned before or during the stop)."""
        if self.stopped:
            return self._reject("stopped")
        actions = np.asarray(chunk.actions, np.float64)
        if actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] < 7 or not np.isfinite(actions).all():
            return self._reject(f"malformed: actions of shape {actions.shape} (need chunk_size x >= 7, finite)")
        if self.chunks and chunk.stamp_ns <= self.chunks[-1].stamp_ns:
            return self._reject("not newer than the chunk in use")
        self.chunks.append(Chunk(actions, chunk.stamp_ns, chunk.step))
        self.counters.chunks += 1
        return True

    def _reject(self, reason: str) -> bool:
        key = reason.split(":")[0]
        self.counters.rejected[key] = self.counters.rejected.get(key, 0) + 1
        return False

    def stop(self, source: str, reason: str) -> None:
        """Hold until ``release(source)``; the chunks in hand are dropped (they are old by then)."""
        self._stopped[source] = reason
        self.chunks.clear()

    def release(self, source: str) -> None:
        self._stopped.pop(source, None)

    def stopped_by(self, source: str) -> bool:
        return source in self._stopped

    @property
    def stopped(self) -> str:
        return "; ".join(self._stopped.values())

    # ---- the command for a period -------------------------------------------------------------------
    def command(self, now_ns: int, position: np.ndarray | None = None) -> Command | None:
        """The command for the period ``now_ns`` falls in, or None while holding (the hold was sent)."""
        if self.stopped:
            return self._hold(now_ns, f"stopped: {self.stopped}")
        self.chunks = [c for c in self.chunks if now_ns - c.stamp_ns <= self.max_age_ns]
        live = [(c, max(0, (now_ns - c.stamp_ns) // self.dt_ns)) for c in self.chunks]
        live = [(c, k) for c, k in live if k < len(c.actions)]
        if not live:
            return self._hold(now_ns, self._why_no_action())
        newest, index = live[-1]
        if self.config.handover == "ensemble" and len(live) > 1:
            weights = np.exp(-self.config.ensemble_decay * np.arange(len(live)))     # i = 0: the oldest
            action = np.average([c.actions[k] for c, k in live], axis=0, weights=weights)
        else:
            action = newest.actions[index].copy()
        previous = self._executed.get(newest.step, -1)
        skipped = max(0, index - previous - 1) if previous >= 0 else index
        self._executed = {c.step: self._executed.get(c.step, -1) for c, _ in live}
        self._executed[newest.step] = index
        action, clamped = self.limit(action, position)
        self._held = False
        self.counters.commands += 1
        self.counters.skipped += skipped
        self.counters.clamped += int(clamped)
        return Command(now_ns, action, "", newest, index, skipped, clamped)

    def _why_no_action(self) -> str:
        if self.chunks:
            return "the chunk ran out (no fresher chunk yet)"
        if self.counters.chunks == 0:
            return "no chunk yet"
        return f"no chunk newer than max_chunk_age_s {self.config.max_chunk_age_s:g} s"

    def _hold(self, now_ns: int, reason: str) -> Command | None:
        if self._held:
            return None
        self._held = True
        self.counters.holds += 1
        return Command(now_ns, None, reason)

    def limit(self, action: np.ndarray, position: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """The per-period translation / rotation limits, then the workspace box (with a position)."""
        out = np.array(action, np.float64)
        clamped = False
        for part, most in ((TRANSLATION, self.config.max_translation), (ROTATION, self.config.max_rotation)):
            norm = float(np.linalg.norm(out[part]))
            if norm > most:
                out[part] *= most / norm
                clamped = True
        if position is not None and self.config.workspace_min:
            low, high = np.asarray(self.config.workspace_min), np.asarray(self.config.workspace_max)
            here = np.asarray(position, np.float64)[:3]
            target = np.clip(here + out[TRANSLATION], np.minimum(low, here), np.maximum(high, here))
            if not np.allclose(target - here, out[TRANSLATION], rtol=0.0, atol=1e-12):
                out[TRANSLATION] = target - here
                clamped = True
        return out, clamped


class QuerySchedule:
    """When to ask for the next chunk, so that it lands while the chunk in use still has actions.

    A query asked every ``every_s`` (the control period) is answered ``lead`` later - the query's
    latency from the observation's stamp to the chunk in the executor's hands. A chunk covers its
    ``horizon_s`` (chunk size x action_dt) from its stamp, so the next query must go out within
    ``horizon - lead`` of the current one or the arm holds until the answer: the interval is
    ``min(every_s, horizon - lead)``, never below ``lead`` (one query in flight, as on one GPU;
    with a latency over half the horizon holds cannot be avoided). A re-planning rate with slack
    (every 4 of 8 actions at 0.1 s latency) is not moved. ``lead`` is a robust running estimate:
    the ``quantile`` (p95) of the last ``window`` latencies, so a steady latency is always covered
    and one slow step costs at most a short hold.

    The node's worker schedules its wall-clock ticks with it (latencies measured); the delay clock
    plans its queries with ``plan`` (latencies emulated, in whole periods) - in process, in the
    node on a simulated clock, and in the lockstep sim robot, which must know the node's queries.
    """

    def __init__(self, quantile: float = 0.95, window: int = 50) -> None:
        if not 0 < quantile <= 1 or window < 1:
            raise ValueError(f"QuerySchedule: quantile {quantile} must be in (0, 1], window {window} >= 1")
        self.quantile = quantile
        self.latencies: deque[float] = deque(maxlen=window)

    def observe(self, latency_s: float) -> None:
        """One query's latency: its observation's stamp to its chunk being in hand (s; in action
        periods where the schedule is asked to ``plan``)."""
        if math.isfinite(latency_s) and latency_s >= 0:
            self.latencies.append(float(latency_s))

    @property
    def lead_s(self) -> float:
        """The latency the schedule plans for (0 before the first answer)."""
        if not self.latencies:
            return 0.0
        return float(np.quantile(np.fromiter(self.latencies, np.float64), self.quantile, method="higher"))

    def interval_s(self, every_s: float, horizon_s: float) -> float:
        """Seconds from this query to the next."""
        lead = self.lead_s
        return max(min(every_s, horizon_s - lead), lead)

    def plan(self, period: int, lead: int, every_periods: int, horizon_periods: int) -> int:
        """The delay clock's next query, on a clock counted in action periods: one asked at
        ``period`` is answered ``lead`` periods later; the next goes out ``interval_s`` after it,
        not before the answer (one query in flight). The in-process delay clock, the action node
        and the lockstep robot all plan with this, fed the same emulated latencies, so they agree
        on every query."""
        self.observe(lead)
        return max(period + lead, period + max(1, round(self.interval_s(every_periods, horizon_periods))))
