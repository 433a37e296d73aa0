"""The package's layers, read from the source: which package may import which.

apps (ros/, sim/, evaluation/, cli) -> policy -> model, pruning -> common helpers and knobs.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "specprune_ros"


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def modules(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize("package, forbidden", [
    ("sim", ("specprune_ros.ros", "specprune_ros.evaluation", "rclpy")),
    ("evaluation", ("specprune_ros.ros", "rclpy")),
    ("common", ("specprune_ros.ros", "specprune_ros.evaluation", "specprune_ros.sim", "specprune_ros.policy",
                "specprune_ros.model", "rclpy", "torch")),
    ("pruning", ("specprune_ros.config", "specprune_ros.model", "specprune_ros.policy", "rclpy")),
    ("model", ("specprune_ros.policy", "rclpy")),
    ("sensing", ("specprune_ros.model", "specprune_ros.policy", "rclpy", "torch")),
])
def test_a_layer_imports_nothing_above_it(package, forbidden):
    offending = {str(path.relative_to(PACKAGE)): sorted(name for name in imports(path)
                                                        if name.startswith(forbidden))
                 for path in modules(package)}
    assert not {k: v for k, v in offending.items() if v}


def test_only_the_policy_loads_a_checkpoint():
    callers = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
               if "/msg/" not in str(path) and "load_checkpoint(" in path.read_text()
               and path.name != "checkpoint.py"]
    assert callers == ["policy.py"]
