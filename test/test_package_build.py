"""The ROS-machine route: CMakeLists.txt installs one complete `specprune_ros` package.

Runs the same CMake build colcon runs (against the Jazzy wheels in the venv) with the Python
sources installed, and checks the install tree a `ros2 run` / `ros2 launch` user gets.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


@pytest.mark.skipif(not (VENV / "share" / "rosidl_default_generators").is_dir() or not shutil.which("cmake"),
                    reason="needs the ROS 2 build tools from `make setup` and cmake")
def test_cmake_install_tree_has_messages_code_launch_and_config(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CMakeLists.txt", "package.xml", "msg", "launch", "config", "specprune_ros", "scripts"):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "msg", "*.so")
                            if name == "specprune_ros" else None)
        else:
            shutil.copy(path, src / name)
    prefix = tmp_path / "install"
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PATH=f"{VENV / 'bin'}:{os.environ['PATH']}")
    cmds = [["cmake", "-S", str(src), "-B", str(tmp_path / "build"), f"-DCMAKE_INSTALL_PREFIX={prefix}",
             f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
            ["cmake", "--build", str(tmp_path / "build"), f"-j{os.cpu_count() or 2}"],
            ["cmake", "--install", str(tmp_path / "build")]]
    for cmd in cmds:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    pkg = next(prefix.glob("lib/python3*/site-packages/specprune_ros"))
    assert (pkg / "msg" / "_action_chunk.py").is_file()
    assert (pkg / "pruning" / "engine.py").is_file() and (pkg / "config.py").is_file()
    share = prefix / "share" / "specprune_ros"
    assert (share / "launch" / "rizon4.launch.py").is_file()
    assert (share / "config" / "rizon4.yaml").is_file()
    assert (share / "msg" / "PruningStats.msg").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "specprune_ros").is_file()
    executable = prefix / "lib" / "specprune_ros" / "action_node"      # what `ros2 run` starts
    assert executable.is_file() and os.access(executable, os.X_OK)

    # The installed tree imports on its own: hand-written code and generated messages together.
    check = ("import specprune_ros, specprune_ros.pruning; from specprune_ros.msg import ActionChunk; "
             "print(specprune_ros.__file__)")
    env = dict(os.environ, PYTHONPATH=str(pkg.parent),
               LD_LIBRARY_PATH=f"{prefix / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(pkg))
