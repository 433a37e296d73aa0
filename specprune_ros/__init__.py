"""specprune_ros: OpenVLA-OFT + SpecPrune-VLA on ROS 2."""
__version__ = "0.1.0"
