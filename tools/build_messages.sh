#!/usr/bin/env bash
# Generate msg/*.msg with rosidl (CMakeLists.txt) against the ROS 2 wheels in a venv, and
# place the results so that the editable specprune_ros package and rclpy find them:
#   * generated Python modules + typesupport extensions -> specprune_ros/ (git-ignored)
#   * typesupport shared libraries -> $VENV/lib (on LD_LIBRARY_PATH via the wheels' hook)
#   * ament index + share/specprune_ros -> $VENV/share (launch/config, message definitions)
# Usage: tools/build_messages.sh VENV_DIR
set -euo pipefail
venv=$(cd "${1:?usage: build_messages.sh VENV_DIR}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
# CMake refuses exported include paths inside the source or build tree, and the venv's numpy
# headers live in .venv/ inside this repository: build from a copy in a scratch directory.
build=$(mktemp -d "${TMPDIR:-/tmp}/specprune_msgs.XXXXXX")
trap 'rm -rf "$build"' EXIT
stage="$build/install"
mkdir -p "$root/build"
log="$root/build/messages.log"
cp -r "$root/CMakeLists.txt" "$root/package.xml" "$root/msg" "$root/launch" "$root/config" "$root/scripts" "$build/"
py="$venv/bin/python"
pyver=$("$py" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')

export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH"
cmake -S "$build" -B "$build/cmake" -DCMAKE_INSTALL_PREFIX="$stage" \
  -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF -DSPECPRUNE_INSTALL_PYTHON_SOURCES=OFF \
  >"$log" 2>&1 || { tail -30 "$log"; echo "cmake configure failed (log: $log)" >&2; exit 1; }
cmake --build "$build/cmake" -j"$(nproc)" >>"$log" 2>&1 \
  || { tail -30 "$log"; echo "message build failed (log: $log)" >&2; exit 1; }
cmake --install "$build/cmake" >>"$log" 2>&1

generated="$stage/lib/$pyver/site-packages/specprune_ros"
rm -rf "$root/specprune_ros/msg" "$root"/specprune_ros/*.so
cp -r "$generated/msg" "$root/specprune_ros/msg"
cp "$generated"/*.so "$root/specprune_ros/"
cp "$stage"/lib/libspecprune_ros__*.so "$venv/lib/"
cp -r "$stage/share/." "$venv/share/"
# The executables `ros2 run specprune_ros ...` finds in the prefix the ament index registers
# ($venv), each run by the venv's interpreter.
mkdir -p "$venv/lib/specprune_ros"
for exe in "$stage"/lib/specprune_ros/*; do
  target="$venv/lib/specprune_ros/$(basename "$exe")"
  { echo "#!$venv/bin/python"; tail -n +2 "$exe"; } >"$target"
  chmod +x "$target"
done
echo "messages built: $(ls "$root/specprune_ros/msg" | grep -c '^_[a-z].*\.py$') modules"
