"""The `specprune` command line (also `python -m specprune_ros`).

Errors print one line on stderr and exit non-zero; `--debug` shows the traceback instead.
`--json` prints exactly one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from .config import Config, ConfigError


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload, sort_keys=True) if args.json else text)


def cmd_demo(args: argparse.Namespace) -> int:
    # The replay issue turns this into: make-bag -> replay (tiny-random, pruned vs unpruned) -> table.
    plan = [
        "write a synthetic, seeded episode bag (specprune make-bag)",
        "replay it with the built-in tiny model, pruned and unpruned (specprune replay)",
        "print speedup, kept tokens, FLOPs ratio, fine-mode share and action deviation",
    ]
    cfg = Config()
    text = ("specprune demo: not available yet - it will\n" + "\n".join(f"  {i + 1}. {s}" for i, s in enumerate(plan))
            + f"\nThe pruning engine is installed; defaults: alpha={cfg.pruning.alpha}, "
            f"K_G/K_L/K_D={cfg.pruning.k_global}/{cfg.pruning.k_local}/{cfg.pruning.k_dynamic}.")
    _emit(args, {"status": "placeholder", "plan": plan}, text)
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    """Validate a parameter file (or the defaults) and print the resolved parameters."""
    cfg = Config.from_yaml(args.params) if args.params else Config()
    if args.json:
        _emit(args, cfg.flat(), "")
    else:
        print(cfg.to_ros_yaml(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specprune", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.set_defaults(func=func)
        return p

    add("demo", cmd_demo, "the main job on the embedded default (synthetic bag, tiny model, pruned vs unpruned)")
    p = add("params", cmd_params, "validate a ROS parameter file and print every resolved knob")
    p.add_argument("params", nargs="?", help="config/*.yaml (action_node: ros__parameters: ...)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ConfigError, FileNotFoundError, ValueError) as exc:
        if args.debug:
            raise
        print(f"specprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"specprune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
