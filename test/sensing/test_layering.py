"""Light modules (observation types, sensing, configuration) import no model code and no torch.

The configuration holds the pruning engine's own sections (``pruning/config.py``, plain
dataclasses): that module, and the package that names it lazily, are the only pruning code a
light module may load."""
import subprocess
import sys

LIGHT_PRUNING = {"specprune_ros.pruning", "specprune_ros.pruning.config"}


def test_sensing_imports_neither_the_model_nor_torch():
    code = ("import sys, specprune_ros.observation, specprune_ros.config, specprune_ros.sensing.assembly, "
            "specprune_ros.sensing.images, specprune_ros.execution; "
            "print('\\n'.join(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('specprune_ros.model', "
            "'specprune_ros.policy', 'specprune_ros.pruning', 'rclpy')))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert loaded <= LIGHT_PRUNING, sorted(loaded - LIGHT_PRUNING)
    assert "specprune_ros.pruning.config" in loaded          # the configuration's pruning sections
