"""What every command shares: its knobs the node's way, its result, its progress bars, its errors."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from ..common.jsonout import finite
from ..common.progress import progress_bar
from ..config import Config, ConfigError, model_config


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


@dataclass
class Result:
    """What a command produced: its data (``--json`` prints exactly this object) and the summary
    a person reads."""

    data: dict[str, Any]
    summary: str

    def print(self, as_json: bool) -> None:
        print(json.dumps(finite(self.data), sort_keys=True, allow_nan=False, default=str) if as_json else self.summary)


class Progress:
    """The one progress helper: bars on stderr while a person watches (a terminal, no ``--json``),
    none otherwise; the bar's line is ended when the block ends.

        with Progress(args) as progress:
            result = evaluate(..., progress.bar("eval", "episodes"))
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.shown = not getattr(args, "json", False) and sys.stderr.isatty()
        self._drawn = False

    def bar(self, label: str, unit: str = "") -> Callable[..., None] | None:
        if not self.shown:
            return None
        self._drawn = True
        return progress_bar(label, unit)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._drawn:
            print(file=sys.stderr)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:                      # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def config_from_args(args: argparse.Namespace, model: str | None = None) -> Config:
    """What the model brings (the paper's layer choices mapped to its depth, then its directory's
    own ``specprune.yaml``), then ``--params YAML`` (in order), then every ``-p name:=value`` (YAML
    values, as ``--ros-args -p`` reads them), then ``model`` - the layers the node applies."""
    params = getattr(args, "params", None) or []
    params = [params] if isinstance(params, str) else params       # `specprune params FILE` takes one
    overrides = {}
    for item in getattr(args, "param", None) or ():
        name, sep, text = item.partition(":=")
        if not sep or not name:
            raise ConfigError(f"-p {item!r}: expected name:=value, e.g. -p pruning.alpha:=0.6")
        try:
            overrides[name] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            overrides[name] = text
    if model is not None:
        overrides["model_path"] = model
    given = (Config.from_yaml_files(params) if params else Config()).replace(**overrides)
    return Config.from_yaml_files(params, base=model_config(given.node.model_path)).replace(**overrides)


def source_args(p: argparse.ArgumentParser) -> None:
    """Where the proxy's observation sequences come from."""
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--bag", help="a rosbag2 with the node's topics (cameras, joint states, instruction)")
    group.add_argument("--sim-seeds", metavar="A:B", help="closed-loop sim episodes of the unpruned model on seeds "
                                                         "A .. B-1 (validation: 100000:101000)")
    layout_arg(p)


def config_args(p: argparse.ArgumentParser) -> None:
    """The one way every subcommand takes its knobs: the node's parameter file, then overrides."""
    p.add_argument("--params", action="append", help="the node's ROS parameter file (config/*.yaml); repeat to "
                                                      "layer files, later ones overriding earlier ones")
    p.add_argument("-p", "--param", action="append", metavar="NAME:=VALUE",
                   help="override one parameter after --params (repeatable), as --ros-args -p does, "
                        "e.g. -p pruning.alpha:=0.6")


def layout_arg(p: argparse.ArgumentParser) -> None:
    """The sim task's layout (``sim.LAYOUTS``: the package's constants, no MuJoCo import)."""
    from ..sim import DEFAULT_LAYOUT, LAYOUTS

    p.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT,
                   help="fixed-start: every shape at its own slot, the gripper starting at its home pose (the "
                        "default, the shipped model's); fixed: the same with the start jittered +-3 cm; shuffled: "
                        "shapes shuffled among the slots, the target found by colour and shape in the image; "
                        "scattered: objects anywhere in the area, the target's place only in the image")


def adder(subparsers) -> Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]:
    """Subcommands all take --json and run ``func``."""
    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.set_defaults(func=func)
        return p
    return add
