"""Timing of the pruning work inside a step, without a sync of its own."""
from __future__ import annotations

import time

import torch


class Stopwatch:
    """Sums the time of pruning work. On CUDA it records events, read after the step's one sync."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._cpu = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._start: float | torch.cuda.Event | None = None

    def __enter__(self) -> "Stopwatch":
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start, end))
        else:
            self._cpu += time.perf_counter() - self._start

    def total_ms(self) -> float:
        """Call after the device is synchronized."""
        return self._cpu * 1e3 + sum(a.elapsed_time(b) for a, b in self._events)
