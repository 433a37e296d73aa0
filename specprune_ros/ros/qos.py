"""The QoS profiles the project's nodes share."""
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

# The last message stays for late subscribers: the instruction, the e-stop, an episode's outcome.
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
