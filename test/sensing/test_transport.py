"""Receive rate and loss estimated from header stamps (sensing/transport.py)."""
import math

import numpy as np
import pytest

from specprune_ros.sensing.transport import TransportMonitor


def feed(monitor, topic, stamps_s, start=100.0):
    for s in stamps_s:
        monitor.add(topic, int(round(s * 1e9)), start + s)


def test_a_complete_stream_has_no_loss_and_its_rate():
    m = TransportMonitor(window_s=5.0)
    feed(m, "/cam", np.arange(0, 5, 1 / 30))
    h = m.health("/cam", 105.0)
    assert h.loss == 0.0 and not h.lossy
    assert h.rate_hz == pytest.approx(30, abs=0.5) and h.period_s == pytest.approx(1 / 30, rel=1e-3)


def test_lost_frames_are_counted_from_stamp_gaps():
    m = TransportMonitor(window_s=5.0)
    stamps = np.arange(0, 5, 1 / 30)
    rng = np.random.default_rng(0)
    arrived = rng.random(stamps.size) > 0.4                 # ~40 % lost, like the default shm segment
    first, last = np.nonzero(arrived)[0][[0, -1]]
    lost = 1 - arrived.sum() / (last - first + 1)            # what really went missing (0.34 here)
    kept = stamps[arrived]
    jitter = rng.normal(0, 0.002, kept.size)                # receive-side jitter in the stamps
    feed(m, "/cam", np.sort(kept + jitter))
    h = m.health("/cam", 105.0)
    assert h.loss == pytest.approx(lost, abs=0.01) and h.lossy
    assert h.rate_hz == pytest.approx(kept.size / 5.0, abs=0.5)


def test_old_samples_leave_the_window_and_few_samples_give_no_estimate():
    m = TransportMonitor(window_s=2.0)
    feed(m, "/joints", np.arange(0, 2, 0.01))
    assert m.health("/joints", 110.0).received == 0               # all older than the window
    feed(m, "/joints", [0.0, 0.01, 0.02], start=200.0)
    h = m.health("/joints", 200.02)
    assert math.isnan(h.loss) and not h.lossy and h.received == 3
    assert m.topics() == ["/joints"]
