import os

import torch

from specprune_ros.common.device import free_cpus, host_load
from specprune_ros.evaluation.threads import fit_torch_threads


def test_threads_never_exceed_the_free_cores(monkeypatch):
    cpus = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (cpus - 0.2, 0.0, 0.0))          # all but one busy
    assert free_cpus() == 1 and host_load()["loaded"] is False
    before = torch.get_num_threads()
    try:
        assert fit_torch_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        torch.set_num_threads(before)
        assert free_cpus() == cpus and fit_torch_threads() == before          # never raised above the setting
        monkeypatch.setattr(os, "getloadavg", lambda: (3.0 * cpus, 0.0, 0.0))
        assert free_cpus() == 1 and host_load()["loaded"] is True
    finally:
        torch.set_num_threads(before)
