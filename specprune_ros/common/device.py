"""The name of the machine a figure was measured on (every result names its device)."""
from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def host_load() -> dict:
    """The host's 1-minute load against its CPUs: more runnable work than cores means latencies
    measured now are a busy host's, not comparable with an idle one's."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    return {"cpus": cpus, "load_avg_1m": round(load, 2), "loaded": load > cpus}


def free_cpus() -> int:
    """Cores not already busy with other work (at least 1). A CPU tool that runs more torch
    threads than this oversubscribes: on a 2-core host with one core busy, a tiny-random step
    took ~1000 ms with 2 threads against ~56 ms with 1 (OpenMP workers wait on a descheduled
    thread at every barrier)."""
    cpus = os.cpu_count() or 1
    return max(1, cpus - int(os.getloadavg()[0] + 0.5))

