"""The node's /diagnostics: one status for inference, one per input topic."""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from ..sensing.transport import LOSS_WARN, TransportMonitor
from .inference import InferenceWorker


def inference_status(name: str, model_path: str, state: str, worker: InferenceWorker | None,
                     drops: Counter) -> DiagnosticStatus:
    """OK while publishing or not meant to act; WARN when active and not publishing, with why."""
    now = time.monotonic()
    published = list(worker.published) if worker else []            # copies: the worker appends
    recent = [t for t in published if now - t <= 5.0]
    rate = len(recent) / 5.0
    reason = worker.last_reason if worker else ""
    status = DiagnosticStatus(name=f"{name}: inference", hardware_id=model_path)
    if state != "active":
        status.level, status.message = DiagnosticStatus.OK, f"{state}: not acting"
    elif not recent:
        status.level, status.message = DiagnosticStatus.WARN, f"not publishing: {reason or 'waiting for inputs'}"
    else:
        status.level, status.message = DiagnosticStatus.OK, f"publishing at {rate:.1f} Hz"
    values = {
        "lifecycle_state": state,
        "rate_hz": f"{rate:.2f}",
        "policy_latency_ms_median": _median(worker.latencies if worker else []),
        "end_to_end_latency_ms_median": _median(worker.end_to_end if worker else []),
        "query_lead_ms": f"{1e3 * worker.schedule.lead_s:.1f}" if worker else "",
        "query_interval_ms": f"{1e3 * worker.interval_s():.1f}" if worker else "",
        "step_errors": str(worker.errors if worker else 0),
        "last_drop_reason": reason,
    }
    values.update({f"dropped_{k}": str(v) for k, v in sorted(dict(drops).items())})
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    return status


def transport_statuses(name: str, transport: TransportMonitor) -> list[DiagnosticStatus]:
    """One status per input topic: receive rate and the loss estimated from header-stamp gaps."""
    now = time.monotonic()
    statuses = []
    for topic in transport.topics():
        health = transport.health(topic, now)
        status = DiagnosticStatus(name=f"{name}: input {topic}", hardware_id=topic)
        loss = "n/a" if health.loss != health.loss else f"{100 * health.loss:.1f} %"
        if health.lossy:
            status.level = DiagnosticStatus.WARN
            status.message = (f"~{loss} of messages lost in transport (> {100 * LOSS_WARN:.0f} %): large images "
                              f"need the Fast DDS profile config/fastdds_large_data.xml on both sides "
                              f"(docs/node.md, 'DDS for camera traffic')")
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"{health.rate_hz:.1f} Hz, est. loss {loss}"
        status.values = [KeyValue(key="rate_hz", value=f"{health.rate_hz:.2f}"),
                         KeyValue(key="estimated_loss", value=loss),
                         KeyValue(key="period_ms", value="" if health.period_s != health.period_s
                                  else f"{1e3 * health.period_s:.1f}")]
        statuses.append(status)
    return statuses


def _median(values) -> str:
    snapshot = list(values)
    return f"{np.median(snapshot):.1f}" if snapshot else ""
