"""One SIGINT / SIGTERM handler for a ROS process's whole life (no rclpy, no torch: it is
installed before they import).

A terminal's Ctrl-C reaches a node twice (the terminal's process group and ``ros2 launch``), and
``ros2 launch`` follows with SIGTERM when a node is slow to leave. Python's own handler raises
``KeyboardInterrupt`` wherever the main thread happens to be: inside an import it is a traceback
and exit code -2, inside a callback that rclpy's C++ executor is running it is ``terminate
called after throwing ... KeyboardInterrupt`` and SIGABRT. So the handler never raises:

* while the process starts (imports, model load, configure) nothing has been published and
  nothing needs saving: the first signal ends the process at once with exit code 0 and one line;
* once it runs, the first signal asks the spin loop to stop (the node's own shutdown follows) and
  every later signal is ignored: the shutdown in progress finishes and the exit code stays 0.

Python's own finalization puts back the default action (terminate) of every signal that has a
Python handler, so a late second Ctrl-C while the interpreter exits would still kill the process
with -2; once its shutdown is done the process ignores the two signals instead (``exiting``).
"""
from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_stop = threading.Event()
_running = threading.Event()
_name = ["specprune_ros"]


def install(name: str) -> threading.Event:
    """Install the handler (again: only the name changes); return the event the first signal
    of a running process sets. Call it first thing in the process's main thread."""
    _name[0] = name
    for sig in SIGNALS:
        if signal.getsignal(sig) is not _handle:
            signal.signal(sig, _handle)
    return _stop


def running() -> None:
    """The process is up: from now on a signal asks for a clean stop instead of ending it."""
    _running.set()


def exiting() -> None:
    """The node is shut down and the process only exits: ignore further signals (``SIG_IGN``
    survives the interpreter's finalization, a Python handler does not)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def stop_requested() -> threading.Event:
    return _stop


def _handle(signum: int, _frame) -> None:
    if not _running.is_set():
        os.write(2, f"[{_name[0]}] {signal.Signals(signum).name} while starting: exit\n".encode())
        os._exit(0)
    _stop.set()
