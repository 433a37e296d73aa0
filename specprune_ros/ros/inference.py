"""The node's inference worker: the control loop on its own thread, off the executor.

It ticks at ``control_rate_hz`` of wall time - moved earlier by ``QuerySchedule`` when the chunk
in use would run out before the next answer lands (a query per 8-action chunk at 1.25 Hz goes
out the p95 of the measured latency before the chunk's end) - or, with a simulated clock
(``use_sim_time``), at
the clock's multiples of the control period, each tick waiting (up to ``LOCKSTEP_WAIT_S`` of wall
time) for the inputs stamped at it, so a simulator that holds its clock while the policy runs
(lockstep) gets exactly one step per tick, on that tick's observation. With an emulated latency
(``emulated_latency``, the delay clock through ROS) each step's answer is due that latency after
its observation and the next tick is planned from it in whole action periods
(``QuerySchedule.plan``, as the in-process delay clock and the lockstep robot plan theirs); the
step's PruningStats report the emulated latency and the robot delivers the chunk when due. Each tick runs the shared
``ControlTick`` (assemble -> step -> after-step age rule) and hands an action to ``publish``;
a drop or a failed step goes to ``stop_motion`` (the robot must not keep executing old actions).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from ..control import ControlTick, TickResult
from ..execution import QuerySchedule
from ..latency import LatencyModel, latency_periods

LOCKSTEP_WAIT_S = 2.0       # simulated clock: the longest wall-clock wait for a tick's inputs


class InferenceWorker:
    def __init__(self, control: ControlTick, clock, logger, period_s: Callable[[], float],
                 publish: Callable[[TickResult], bool], stop_motion: Callable[[], None],
                 horizon_s: Callable[[], float] | None = None, emulated: LatencyModel | None = None,
                 action_dt: float = 0.1, episode_gap_s: float = 1.0) -> None:
        """``publish(result)`` returns whether it published (False: stopping or inactive meanwhile);
        ``horizon_s()``: the time a chunk covers (chunk size x action_dt; None: ticks never move);
        ``emulated``: the latency each step reports and is scheduled by (simulated clock only)."""
        self.control, self.clock, self.logger = control, clock, logger
        self.period_s, self.publish, self.stop_motion = period_s, publish, stop_motion
        self.horizon_s = horizon_s or (lambda: float("inf"))
        self.schedule = QuerySchedule()         # fed the end-to-end latency of every published step
        self.active = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sim_tick: int | None = None
        self.emulated, self.action_dt, self.episode_gap_ns = emulated, action_dt, round(episode_gap_s * 1e9)
        self._planned_tick: int | None = None     # emulated latency: the next query's period (ns)
        self._emulated_plan = QuerySchedule()     # ... planned in whole periods (``schedule``: seconds)
        self.latencies: deque[float] = deque(maxlen=100)       # policy step, ms
        self.end_to_end: deque[float] = deque(maxlen=100)      # observation stamp -> action, ms
        self.published: deque[float] = deque(maxlen=100)       # monotonic times of published actions
        self.last_reason = ""
        self.errors = 0

    # ---- thread -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="specprune-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop acting and end the loop, waiting for the step in flight."""
        self.active.clear()
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _now(self) -> int:
        return self.clock.now().nanoseconds

    def _loop(self) -> None:
        _name_os_thread("sp-inference")
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if self.clock.ros_time_is_active:     # use_sim_time with a /clock
                self._guarded(self._sim_clock_tick)
                next_tick = time.monotonic()
                continue
            if self.active.is_set():
                self._guarded(self._tick)
            next_tick += self.interval_s()
            delay = next_tick - time.monotonic()
            if delay < 0:                        # overrun: skip ticks instead of bursting
                next_tick = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)

    def interval_s(self) -> float:
        """Wall time from this tick to the next: the control period, or less where the chunk in
        use would run out first (``QuerySchedule``)."""
        return self.schedule.interval_s(self.period_s(), self.horizon_s())

    def _guarded(self, step) -> None:
        try:
            step()
        except Exception as exc:  # never let one bad step kill the robot's node
            if self._stop.is_set():
                return            # shutting down: whatever failed no longer matters
            self.errors += 1
            self.logger.error(f"inference step failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
            self.last_reason = f"step failed: {type(exc).__name__}"
            self.stop_motion()

    def _sim_clock_tick(self) -> None:
        period = round(1e9 * self.period_s())
        if self._now() == 0 or not self.active.is_set():
            # No /clock message yet: no time to act at. Inactive: a tick passed now would be lost
            # - a lockstep simulator holds its clock at that tick until its chunk comes, so after
            # `activate` the node would wait for a later tick that never comes.
            self._stop.wait(0.01)
            return
        if self.emulated is not None:        # planned in action periods; a new episode's clock jumps past it
            period = round(1e9 * self.action_dt)
            tick = max(self._planned_tick or 0, -(-self._now() // period) * period)
        else:
            tick = -(-self._now() // period) * period
        if self._last_sim_tick is not None and tick <= self._last_sim_tick:
            tick = self._last_sim_tick + period
        while self._now() < tick:
            if self._stop.wait(0.001):
                return
        tick = max(tick, self._now() // period * period)   # the clock jumped past ticks: the latest one
        # The tick's inputs, then its step; an observation still waiting for a partner is tried
        # again (the simulator holds its clock until this tick's chunk: a later tick never comes).
        # A tick counts as done only once stepped: one cut short by `deactivate` is acted on
        # after `activate`.
        deadline = time.monotonic() + LOCKSTEP_WAIT_S
        while self.active.is_set():
            late = time.monotonic() >= deadline
            if self.control.assembler.has_inputs_at(tick) or late:
                result = self._tick(tick)
                if not self.active.is_set():     # deactivated meanwhile: nothing was published
                    return
                if result.output is not None or result.dropped or late:
                    if self.emulated is not None and result.output is None:
                        self._plan_after_miss(tick)
                    self._last_sim_tick = tick
                    return
            if self._stop.wait(0.002):
                return

    def _tick(self, now_ns: int | None = None) -> TickResult:
        result = self.control.run(self._now() if now_ns is None else now_ns, lambda out: self._now())
        if result.output is None:
            if result.dropped:
                self.last_reason = result.reason
                self.logger.warning(f"no action: {result.reason}", throttle_duration_sec=2.0)
                self.stop_motion()
            return result
        stats = result.output.stats
        measured_ms = stats.latency_ms
        emulated = self.emulated is not None and now_ns is not None
        if emulated:      # as PruningStats carries it (float32): the robot plans from that very value
            stats.latency_ms = float(np.float32(self.emulated.step_ms(stats.flops_ratio)))
        if self.publish(result):
            self.latencies.append(measured_ms)
            self.end_to_end.append(result.age_s * 1e3)
            if emulated:
                self._plan(now_ns, latency_periods(stats.latency_ms, self.action_dt))
            else:
                self.schedule.observe(result.age_s)
            self.published.append(time.monotonic())
        else:
            self.control.assembler.unuse(result.observation.stamp_ns)
        return result

    def _plan(self, tick_ns: int, lead: int) -> None:
        """The next query's period after a step at ``tick_ns`` answered ``lead`` periods later
        (emulated); the robot plans the same from the step's PruningStats."""
        dt = round(1e9 * self.action_dt)
        if self._last_sim_tick is not None and tick_ns - self._last_sim_tick > self.episode_gap_ns:
            self._emulated_plan = QuerySchedule()   # a new episode plans afresh, as the in-process clock does
        every = max(1, round(self.period_s() / self.action_dt))
        horizon = round(self.horizon_s() / self.action_dt)
        self._planned_tick = self._emulated_plan.plan(tick_ns // dt, lead, every, horizon) * dt

    def _plan_after_miss(self, tick_ns: int) -> None:
        """A query period with no chunk (a drop, no inputs in time): the next query is one control
        period on, as the robot, which waited for it in vain, plans."""
        self._planned_tick = tick_ns + max(1, round(self.period_s() / self.action_dt)) * round(1e9 * self.action_dt)


def _name_os_thread(name: str) -> None:
    """Give the calling thread an OS-level name (Linux), so `top -H` and soak reports tell the
    inference thread from the executor and torch's pool. A no-op where prctl is unavailable."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)     # PR_SET_NAME
    except (OSError, AttributeError):
        pass
