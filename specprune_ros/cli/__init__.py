"""The `specprune` command line (also `python -m specprune_ros`).

Errors print one line on stderr and exit non-zero; `--debug` shows the traceback instead.
`--json` prints exactly one JSON object on stdout. One module per command group: `offline`
(bags, replay, bench, flops, proxy, calibrate, parameter files), `robot` (the ROS 2 processes and
DDS diagnostics), `simulation` (`sim ...` and the demo); `shared` holds what they all use.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..config import ConfigError
from . import offline, robot, simulation
from .shared import CliError, Result, adder

# The ROS processes own their arguments (--ros-args ...), which argparse would reject.
PASSTHROUGH = {("node",): lambda rest: robot.cmd_node(argparse.Namespace(ros_args=rest)),
               ("executor",): lambda rest: robot.cmd_executor(argparse.Namespace(ros_args=rest)),
               ("sim", "robot"): lambda rest: simulation.cmd_sim_robot(argparse.Namespace(robot_args=rest))}


class _OneLineErrors(argparse.ArgumentParser):
    """A bad argument is one line, as every other error is, not the usage block; subcommand
    parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="specprune", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = adder(sub)
    for group in (simulation, offline, robot):
        group.register(sub, add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for prefix, command in PASSTHROUGH.items():
        rest = argv[len(prefix):]
        if tuple(argv[:len(prefix)]) == prefix and "--help" not in rest[:1] and "-h" not in rest[:1]:
            from ..ros import signals

            signals.install("_".join(prefix))   # before the heavy imports: Ctrl-C at any time exits 0
            return command(rest)
    args = build_parser().parse_args(argv)
    try:
        outcome = args.func(args)
    except (CliError, ConfigError, FileNotFoundError, ValueError, OSError, ImportError) as exc:
        if args.debug:
            raise
        print(f"specprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"specprune {args.command}: interrupted", file=sys.stderr)
        return 130
    if isinstance(outcome, Result):
        try:
            outcome.print(args.json)
            sys.stdout.flush()
        except BrokenPipeError:                # `specprune params --json | head`: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return outcome
