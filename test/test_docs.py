"""Every relative link in the README and docs/ resolves to a file of the checkout."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "models" / "sim-tabletop" / "README.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in local if t and not (page.parent / t).exists()]
    assert not missing, f"{page.name}: links to missing {missing}"


# ---- command lines: every one the pages print parses with the real CLI --------------------------

SYNOPSIS = re.compile(r"\[|\]|\.\.\.|\||\(|<")      # usage notation, not a command to copy


def printed_commands(page: Path) -> list[str]:
    """The command lines of a page: each line of its shell blocks (continuations joined, prompts
    and comments dropped, split at ;, &&, | and &) and inline code that is a whole command line
    (a program and at least one option or argument, no usage notation)."""
    text = page.read_text()
    lines = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"(^|\s)#.*$", "", re.sub(r"^\s*\$\s+", "", line)).strip()
            lines += [p for p in re.split(r"\s*(?:&&|;|\|\||\||&)\s*", line) if p]
    lines += [span for span in re.findall(r"`([^`\n]+)`", text)
              if re.match(r"(\.venv/bin/)?specprune \S+ -", span) and len(span.split()) > 3]
    return [line for line in lines if re.match(r"(\.venv/bin/)?specprune |ros2 ", line) and not SYNOPSIS.search(line)]


COMMANDS = [(page, line) for page in PAGES for line in printed_commands(page)]


def _launch_arguments(path: Path) -> set[str]:
    import ast
    return {call.args[0].value for call in ast.walk(ast.parse(path.read_text()))
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DeclareLaunchArgument"}


def _check_ros_args(args: list[str]) -> None:
    """``--ros-args`` and what follows: parameter files that load, ``-p`` knobs that exist."""
    import yaml

    from specprune_ros.config import Config
    assert not args or args[0] == "--ros-args", f"expected --ros-args, got {args}"
    for flag, value in zip(args, args[1:]):
        if flag == "--params-file":
            Config.from_yaml(ROOT / value)
        elif flag == "-p" and not value.startswith("use_sim_time"):
            name, _, text = value.partition(":=")
            Config().replace(**{name: yaml.safe_load(text)})


def _check_ros2(words: list[str]) -> None:
    """What a ROS 2 command line names exists: launch files and their arguments, executables,
    parameter files and knobs with valid values, lifecycle transitions."""
    import yaml

    from specprune_ros.config import Config
    verb, rest = words[1], words[2:]
    if verb == "launch":
        assert rest[0] == "specprune_ros" and (ROOT / "launch" / rest[1]).is_file(), rest[:2]
        unknown = {a.split(":=")[0] for a in rest[2:]} - _launch_arguments(ROOT / "launch" / rest[1])
        assert not unknown, f"{rest[1]} declares no {sorted(unknown)}"
    elif verb == "run":
        assert rest[0] == "specprune_ros" and (ROOT / "scripts" / rest[1]).is_file(), rest[:2]
        _check_ros_args(rest[2:])
    elif verb == "param" and rest[0] == "set":
        Config().replace(**{rest[2]: yaml.safe_load(rest[3])})
    elif verb == "lifecycle" and rest[0] == "set":
        assert rest[2] in {"configure", "activate", "deactivate", "cleanup", "shutdown"}, rest


CHEAP = {"params", "flops"}          # run, not only parsed: they take seconds and write nothing


@pytest.mark.parametrize("page, line", COMMANDS, ids=[f"{p.name}: {c[:60]}" for p, c in COMMANDS])
def test_printed_commands_parse(page, line, capsys, monkeypatch):
    import shlex

    from specprune_ros.cli import build_parser, main
    words = shlex.split(line)
    if words[0] == "ros2":
        _check_ros2(words)
        return
    argv = words[1:]
    if argv[:1] in (["node"], ["executor"]):                  # everything after is the node's ROS arguments
        _check_ros_args(argv[1:])
        return
    if argv[:2] == ["sim", "robot"]:
        from specprune_ros.ros.sim_robot import arguments
        _check_ros_args(arguments(argv[2:])[1])
        return
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and ("--help" in argv or "-h" in argv):
            return
        pytest.fail(f"{page.name}: `{line}` does not parse: {capsys.readouterr().err.strip()} (exit {exc.code})")
    if argv[0] in CHEAP:
        monkeypatch.chdir(ROOT)
        assert main(argv) == 0, capsys.readouterr().err


def test_the_pages_print_commands():
    """The extraction above finds what it should (a test that could not fail on an empty list)."""
    found = {re.sub(r"^\.venv/bin/", "", line).split()[1] for _, line in COMMANDS if "specprune" in line.split()[0]}
    assert {"sim", "calibrate", "executor"} <= found, found
