"""Running one node in its own process: signals, executor, clean shutdown, exit code."""
from __future__ import annotations

import faulthandler
import signal
import sys
from typing import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from . import signals


class StartupError(RuntimeError):
    """A node could not start; the reason was logged once."""


def make_executor():
    """rclpy's EventsExecutor where it exists (Jazzy: an event queue in C++), else the
    SingleThreadedExecutor (Humble). Each spin of the SingleThreadedExecutor rebuilds its wait
    set in Python while holding the GIL - with two 30 Hz cameras and 100 Hz joint states that is
    a quarter of the executor thread's time, taken from the inference thread. Measured with
    `specprune node-soak --minutes 1` on this project's 2-core CPU machine: 9.1 vs 8.2 chunks/s,
    policy step p50 108 vs 118 ms."""
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:
        return SingleThreadedExecutor()
    return EventsExecutor()


def spin(make_node: Callable[[], Node], name: str, argv: Sequence[str] | None = None,
         startup_errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> int:
    """``ros2 run``'s entry point: SIGINT / SIGTERM end the spin loop, then the node's
    ``shutdown()`` (if it has one) runs, the node is destroyed, and only then the context goes.

    rclpy's own signal handler would shut the context down first, while a worker thread may be in
    the middle of a step that then fails to publish ("publisher's context is invalid"); the
    process's one handler (``signals``) is used instead, for its whole life. Exit code 0 on a
    signal, at any phase (SIGUSR1 prints every thread's stack to stderr and goes on), 1 when the
    node cannot start (``StartupError`` or one of ``startup_errors``: one FATAL line, no traceback).
    """
    from rclpy.signals import SignalHandlerOptions

    stop = signals.install(name)             # already installed by the entry point: only the name
    args = list(sys.argv if argv is None else argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)   # `kill -USR1 <pid>`: every thread's stack
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        try:
            node = make_node()
        except StartupError:
            return 1
        except startup_errors as exc:
            rclpy.logging.get_logger(name).fatal(f"cannot start: {exc}")
            return 1
        executor = make_executor()
        executor.add_node(node)
        signals.running()
        finished = getattr(node, "finished", None)      # a node that ends by itself (the sim robot)
        while not stop.is_set() and rclpy.ok() and not (finished is not None and finished.is_set()):
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        if node is not None:
            if hasattr(node, "shutdown"):
                node.shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        signals.exiting()
    return 0
