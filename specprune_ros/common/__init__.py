"""Helpers the apps share (no torch, no ROS): rosbag2 reading and writing, the compared pruning
rules, paired statistics, JSON output, progress bars, the device's name."""
