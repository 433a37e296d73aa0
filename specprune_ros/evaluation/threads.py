"""torch's CPU threads for an offline tool, fitted to the cores the host has free."""
from __future__ import annotations

from ..common.device import free_cpus


def fit_torch_threads() -> int:
    """torch's CPU threads set to the cores free right now (an offline tool's first step, so that
    a busy host slows it in proportion instead of by an order of magnitude); the count set."""
    import torch

    threads = min(torch.get_num_threads(), free_cpus())
    torch.set_num_threads(threads)
    return threads
