"""Transport health of the node's input streams: receive rate and estimated loss per topic.

Loss is estimated from the header stamps alone (no sequence numbers in ROS 2 headers): over a
sliding window, the lower quartile of the gaps between consecutive stamps is the stream's period
(the median is not: with every third message lost, half the gaps are two periods), and a gap
of about k periods means k - 1 messages never arrived. Bursty or jittery senders are tolerated by
rounding (a gap up to 1.5 periods counts as no loss). Pure Python, fed from the subscription
callbacks (one append each), read by the 1 Hz diagnostics timer.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

LOSS_WARN = 0.03            # above 3 % estimated loss the node warns (and points to the DDS profile)
MIN_SAMPLES = 5


@dataclass(frozen=True)
class StreamHealth:
    rate_hz: float              # messages received per second over the window (or since the first)
    loss: float                 # estimated share of messages lost (NaN: too few samples)
    period_s: float             # the stream's stamp period (NaN: too few samples)
    received: int

    @property
    def lossy(self) -> bool:
        return bool(self.loss > LOSS_WARN)


class TransportMonitor:
    """Per-topic windows of (receive time, header stamp); thread-safe."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._streams: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def add(self, topic: str, stamp_ns: int, now_s: float) -> None:
        with self._lock:
            stream = self._streams.setdefault(topic, deque())
            stream.append((now_s, stamp_ns))
            while stream and stream[0][0] < now_s - self.window_s:
                stream.popleft()

    def health(self, topic: str, now_s: float) -> StreamHealth:
        with self._lock:
            samples = [(t, s) for t, s in self._streams.get(topic, ()) if t >= now_s - self.window_s]
        # Over the window, or since the stream's first message in it (a stream that just started).
        span = min(self.window_s, now_s - samples[0][0]) if len(samples) >= 2 else self.window_s
        rate = (len(samples) - 1) / span if len(samples) >= 2 and span > 0 else len(samples) / self.window_s
        stamps = np.unique(np.array([s for _, s in samples], dtype=np.int64))   # sorted, duplicates once
        if stamps.size < MIN_SAMPLES:
            return StreamHealth(rate, float("nan"), float("nan"), len(samples))
        gaps = np.diff(stamps).astype(np.float64)
        period = float(np.percentile(gaps, 25, method="lower"))      # an observed gap, robust to heavy loss
        periods = np.maximum(np.rint(gaps / period), 1.0)
        loss = float((periods - 1).sum() / periods.sum())
        return StreamHealth(rate, loss, period * 1e-9, len(samples))

    def topics(self) -> list[str]:
        with self._lock:
            return list(self._streams)
