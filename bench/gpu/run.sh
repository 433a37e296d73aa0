#!/usr/bin/env bash
# One prepared GPU run (specprune_ros/evaluation/gpu_check.py): the 7B step, its host syncs, the
# scoring's cost and the levers, one JSON under bench/results/ naming the GPU, within --budget-s
# (default 420 s). Needs torch (+ CUDA), numpy, pyyaml, opencv; no ROS.
#   bench/gpu/run.sh              # on the GPU machine
#   bench/gpu/run.sh --dry-run    # the same sections on the CPU at the tiny geometry (CI runs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m specprune_ros.evaluation.gpu_check "$@"
