#!/usr/bin/env bash
# The sim model's recipe on a GPU machine (16 cores, one GPU): expert demonstrations collected in
# PROCS processes at once (disjoint seed ranges of the train split), then training on the GPU with
# the whole dataset in GPU memory, then (optionally) the unpruned closed-loop success on the test
# seeds. Every step is resumable: rerun the same command to continue.
#
#   [INIT=other_run/train_state.pt] [LAYOUT=fixed-start|fixed|shuffled] bash models/sim-tabletop/train_gpu.sh DATA RUN EPISODES STEPS BATCH LR [EVAL_EPISODES]
#
# Run from the repository root with the package importable (PYTHONPATH=. on a machine without an
# install) and MuJoCo rendering headless (MUJOCO_GL=egl).
set -euo pipefail
data=$1 run=$2 episodes=$3 steps=$4 batch=$5 lr=$6 eval_episodes=${7:-0}
procs=${PROCS:-16} device=${DEVICE:-cuda} init=${INIT:+--init $INIT} layout=${LAYOUT:-fixed-start}
per=$(( (episodes + procs - 1) / procs ))
spare=$(( per / 4 + 10 ))                   # seeds left between parts for the expert's rare failures
mkdir -p "$data"
start=$SECONDS
for k in $(seq 0 $((procs - 1))); do
    python3 -m specprune_ros sim collect "$data/part$k" --episodes "$per" --start $((k * (per + spare))) \
        --layout "$layout" > "$data/collect$k.log" 2>&1 &
done
wait
echo "collected $((procs * per)) demonstrations in $((SECONDS - start)) s"
python3 -m specprune_ros sim train "$data"/part*/ --out "$run" --steps "$steps" --batch "$batch" --lr "$lr" \
    --device "$device" $init
if [ "$eval_episodes" -gt 0 ]; then
    python3 -m specprune_ros sim eval --model "$run/model" --params "$run/model/specprune.yaml" \
        --episodes "$eval_episodes" --methods none --workers "$procs" -p device:="$device" --layout "$layout" \
        --out "$run/eval"
fi
