"""Camera frames + joint states -> one time-consistent Observation per control step.

The node feeds it messages as they arrive and asks for an observation at every control tick;
bag replay feeds it the recorded messages in bag-time order and asks at the same ticks, so live
and replay see the same observations. All buffers are bounded.

Rules, in order (the first that fails names the drop reason):
* an instruction is known;
* the newest primary image exists and was not used by an earlier step;
* it is not older than ``max_age_s`` at the tick (stale data never produces an action), nor
  stamped in the future beyond ``tolerance_s`` (a wrong clock must not freeze later frames);
* every other camera has an image, and the joint states a message, within ``tolerance_s`` of
  the primary image's stamp; the newest primary image with such a complete set is used (an
  older one when a wrist frame was lost); a set whose partners may still arrive (its stamp
  within ``tolerance_s`` of the tick) is waited for, and ``incomplete`` is counted only when
  no fresh set can complete any more;
* every image decodes (malformed images never produce an action).

For frame differencing, each camera also keeps the first frame of every action period
(``floor(stamp / action_dt)``) for the last ``history_periods`` periods; an observation carries
the complete sets (primary + partners within ``tolerance_s``) that arrived since the previous
one, so the policy's history sees every period however slowly it is queried.
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..config import Config
from ..observation import HistoryFrame, Observation, ObservationError
from .images import to_rgb


@dataclass(frozen=True)
class Stamped:
    stamp: int        # nanoseconds: exact header stamps (float seconds lose ~200 ns today)
    value: Any


@dataclass(frozen=True)
class Assembled:
    observation: Observation | None
    reason: str = ""          # why there is no observation ("" when there is one)
    dropped: bool = False     # a real drop (stale, incomplete, malformed), not just "nothing new yet"


def stamp_nanoseconds(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


class ObservationAssembler:
    def __init__(self, num_images: int, tolerance_s: float = 0.05, max_age_s: float = 0.5,
                 joint_names: Sequence[str] = (), history: int = 8, action_dt: float = 0.1,
                 history_periods: int = 12, needs_joint_states: bool = True) -> None:
        """``needs_joint_states`` False (a model without proprio): joint states are not waited for."""
        self.num_images = num_images
        self.needs_joint_states = needs_joint_states
        self.tolerance_s = tolerance_s
        self.max_age_s = max_age_s
        self.action_dt = action_dt
        self.joint_names = tuple(joint_names)
        self.images: list[deque[Stamped]] = [deque(maxlen=history) for _ in range(num_images)]
        # One frame per action period per camera, for frame differencing (bounded by periods).
        self.period_frames: list[deque[Stamped]] = [deque(maxlen=history_periods) for _ in range(num_images)]
        # Joint states come fast (up to kHz): bounded by count, trimmed by time on arrival.
        self.joints: deque[Stamped] = deque(maxlen=4096)
        self._lock = threading.Lock()   # callbacks add while the control loop assembles
        self.instruction = ""
        self.drops: Counter[str] = Counter()
        self.last_used: int | None = None        # stamp (ns) of the last primary image used
        self._first_primary: int | None = None   # stamp of the first primary image (start-up grace)

    @classmethod
    def for_node(cls, config: Config, needs_joint_states: bool = True) -> "ObservationAssembler":
        """The assembler the action node uses, from the one configuration (replay uses it too)."""
        node = config.node
        assembler = cls(node.num_images, node.match_tolerance_s, node.max_observation_age_s, node.joint_names,
                        action_dt=node.action_dt, history_periods=config.pruning.history_capacity(),
                        needs_joint_states=needs_joint_states)
        assembler.set_instruction(node.instruction)
        return assembler

    def set_limits(self, tolerance_s: float, max_age_s: float, action_dt: float | None = None) -> None:
        self.tolerance_s, self.max_age_s = tolerance_s, max_age_s
        if action_dt is not None:
            self.action_dt = action_dt

    def _period(self, stamp: int) -> int:
        return int(stamp // _ns(self.action_dt))

    def add_image(self, camera: int, stamp: int, msg: Any) -> None:
        """Store the message; it is decoded only if a step uses it."""
        item = Stamped(stamp, msg)
        with self._lock:
            self.images[camera].append(item)
            if camera == 0 and self._first_primary is None:
                self._first_primary = stamp
            kept = self.period_frames[camera]
            if not kept or self._period(stamp) > self._period(kept[-1].stamp):
                kept.append(item)

    def add_joint_state(self, stamp: int, names: Sequence[str], positions: Sequence[float]) -> None:
        with self._lock:
            self.joints.append(Stamped(stamp, (tuple(names), np.asarray(positions, dtype=np.float64))))
            horizon = stamp - _ns(self.max_age_s + 2 * self.tolerance_s)
            while len(self.joints) > 1 and self.joints[0].stamp < horizon:
                self.joints.popleft()

    def has_inputs_at(self, stamp: int) -> bool:
        """Every camera and (if needed) the joint states delivered something stamped at or after
        ``stamp``: a lockstep simulator's inputs for that tick are all in."""
        with self._lock:
            streams = [*self.images] + ([self.joints] if self.needs_joint_states else [])
            return all(q and q[-1].stamp >= stamp for q in streams)

    def set_instruction(self, text: str) -> None:
        self.instruction = text.strip()

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        for q in (*self.images, *self.period_frames):
            q.clear()
        self.joints.clear()
        self.last_used = None
        self._first_primary = None

    def unuse(self, stamp_ns: int) -> None:
        """The step on the observation stamped ``stamp_ns`` published nothing (the node was
        deactivated meanwhile): that observation counts as new again, so the first tick after
        ``activate`` can act on it - a lockstep simulator sends no newer one until it has its chunk."""
        with self._lock:
            if self.last_used == stamp_ns:
                self.last_used = stamp_ns - 1

    # ---- assembly ---------------------------------------------------------------------------------
    def _drop(self, reason: str) -> Assembled:
        self.drops[reason.split(":")[0]] += 1
        return Assembled(None, reason, dropped=True)

    def assemble(self, now: int) -> Assembled:
        """The observation for a control tick at ``now`` (all stamps in nanoseconds)."""
        with self._lock:
            picked = self._pick(now)
        if not isinstance(picked, tuple):
            return picked
        frames, joint, instruction, past = picked
        try:      # decoding happens outside the lock: callbacks are never blocked by it
            images = [to_rgb(f.value) for f in frames]
            proprio = None if joint is None else self._proprio(*joint.value)
        except ObservationError as exc:
            return self._drop(f"malformed: {exc}")
        # Decoded only if the policy compares with it (a malformed one is then forgotten).
        history = [HistoryFrame(sets[0].stamp * 1e-9, lambda sets=sets: [to_rgb(f.value) for f in sets])
                   for sets in past]
        return Assembled(Observation(images, proprio, instruction, stamp=frames[0].stamp * 1e-9,
                                     stamp_ns=frames[0].stamp, history=history))

    def _past_frames(self, primary: Stamped) -> list[list[Stamped]]:
        """Complete per-period frame sets newer than the previous step's and older than ``primary``."""
        out = []
        for first in self.period_frames[0]:
            if first.stamp >= primary.stamp or self._period(first.stamp) == self._period(primary.stamp) \
                    or (self.last_used is not None and first.stamp <= self.last_used):
                continue
            sets = [first]
            for camera in range(1, self.num_images):
                match = _closest(self.period_frames[camera], first.stamp, _ns(self.tolerance_s))
                if match is None:
                    break
                sets.append(match)
            if len(sets) == self.num_images:
                out.append(sets)
        return out

    def _pick(self, now: int) -> Assembled | tuple[list[Stamped], Stamped, str, list[list[Stamped]]]:
        if not self.instruction:
            return Assembled(None, "no instruction yet (topic or parameter)")
        if not self.images[0]:
            return Assembled(None, "no primary image yet")
        # Frames stamped ahead of the clock (beyond the tolerance) are never used: a wrong clock
        # must neither produce an action nor hide the correctly stamped frames behind it.
        usable = [s for s in self.images[0] if s.stamp - now <= _ns(self.tolerance_s)]
        if not usable:
            ahead = min(s.stamp for s in self.images[0]) - now
            return self._drop(f"future stamp: primary image is {ahead * 1e-9:.3f} s ahead of the clock")
        newest = max(usable, key=lambda f: f.stamp)
        if self.last_used is not None and newest.stamp < self.last_used - _ns(self.tolerance_s):
            # The clock went back (a simulator reset, a looped bag): what is buffered belongs to
            # another time line. Start over rather than wait for the old maximum forever.
            self._clear_locked()
            self.images[0].append(newest)
            return self._drop("clock jumped back: buffers cleared (a simulator reset or a looped bag?)")
        fresh = sorted((f for f in usable if self.last_used is None or f.stamp > self.last_used),
                       key=lambda f: f.stamp, reverse=True)
        if not fresh:
            return Assembled(None, "no new primary image since the last step")
        age = now - fresh[0].stamp
        if age > _ns(self.max_age_s):
            self.last_used = fresh[0].stamp      # never reconsider it
            found = self._partners(fresh[0])
            if isinstance(found, str):           # it was waiting for a partner that never came
                return self._drop(f"incomplete: {found} (waited {age * 1e-9:.3f} s)")
            return self._drop(f"stale: primary image is {age * 1e-9:.3f} s old (max_observation_age_s "
                              f"{self.max_age_s:g})")
        # The newest primary image with a complete set of partners. A set whose partners may still
        # arrive (no later message on that stream yet: streams arrive in order) is waited for, not
        # dropped; an older complete set is used meanwhile.
        missing = ""
        pending = False
        for primary in fresh:
            if now - primary.stamp > _ns(self.max_age_s):
                break
            found = self._partners(primary)
            if isinstance(found, str):
                missing = missing or found
                pending = pending or self._may_complete(primary)
                continue
            frames, joint = found
            past = self._past_frames(primary)
            self.last_used = primary.stamp
            return frames, joint, self.instruction, past
        if pending:
            return Assembled(None, f"waiting for partners: {missing}")
        self.last_used = fresh[0].stamp          # none of those sets can complete any more
        return self._drop(f"incomplete: {missing}")

    def _may_complete(self, primary: Stamped) -> bool:
        """A missing partner can still come if its stream is alive (delivered within
        max_observation_age_s of the primary image) and has nothing stamped after the window yet
        (streams arrive in order). A dead or never-seen stream cannot complete a set."""
        tolerance = _ns(self.tolerance_s)
        horizon = primary.stamp + tolerance
        streams = [self.images[c] for c in range(1, self.num_images)]
        if self.needs_joint_states:
            streams.append(self.joints)
        for q in streams:
            if _closest(q, primary.stamp, tolerance) is not None:
                continue
            if not q:      # never seen: only at start-up (within max_observation_age_s) can it still come
                if self._first_primary is None or primary.stamp - self._first_primary > _ns(self.max_age_s):
                    return False
            elif q[-1].stamp > horizon or q[-1].stamp < primary.stamp - _ns(self.max_age_s):
                return False
        return True

    def _partners(self, primary: Stamped) -> tuple[list[Stamped], Stamped | None] | str:
        """The other cameras' images and the joint state within tolerance of ``primary``, or what is missing."""
        frames = [primary]
        for camera in range(1, self.num_images):
            match = _closest(self.images[camera], primary.stamp, _ns(self.tolerance_s))
            if match is None:
                return f"no camera {camera} image within {self.tolerance_s:g} s of the primary image"
            frames.append(match)
        if not self.needs_joint_states:
            return frames, None
        joint = _closest(self.joints, primary.stamp, _ns(self.tolerance_s))
        if joint is None:
            return f"no joint state within {self.tolerance_s:g} s of the primary image"
        return frames, joint

    def _proprio(self, names: tuple[str, ...], positions: np.ndarray) -> np.ndarray:
        if len(names) not in (0, len(positions)):
            raise ObservationError(f"joint state has {len(names)} names for {len(positions)} positions")
        if not self.joint_names:
            return positions
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.joint_names if n not in index]
        if missing:
            raise ObservationError(f"joint state lacks joints {missing} (joint_names)")
        return positions[[index[n] for n in self.joint_names]]


def _closest(items: deque[Stamped], stamp: int, tolerance: int) -> Stamped | None:
    best = min(items, key=lambda s: abs(s.stamp - stamp), default=None)
    return best if best is not None and abs(best.stamp - stamp) <= tolerance else None
