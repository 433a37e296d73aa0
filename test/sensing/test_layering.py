"""Light modules (observation types, sensing, configuration) import no model code and no torch."""
import subprocess
import sys


def test_sensing_imports_neither_the_model_nor_torch():
    code = ("import sys, specprune_ros.observation, specprune_ros.config, specprune_ros.sensing.assembly, "
            "specprune_ros.sensing.images; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('specprune_ros.model', "
            "'specprune_ros.policy', 'specprune_ros.pruning', 'rclpy'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
