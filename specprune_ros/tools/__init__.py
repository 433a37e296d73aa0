"""Offline tools: benchmarks, replay, synthetic bags (they use the policy; no ROS node)."""
