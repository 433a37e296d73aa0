"""The ROS 2 side: the action node and its parameters/messages. Imports rclpy; nothing else does."""
