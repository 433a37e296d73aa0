"""Offline evaluation on the policy: bag replay and its report, latency and FLOPs benchmarks,
the offline proxy of closed-loop success, and calibration of a model's pruning knobs. No ROS."""
