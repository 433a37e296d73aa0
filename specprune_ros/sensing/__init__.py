"""Turning sensor messages into policy observations, shared by the live node and bag replay.

Nothing here imports rclpy: messages are read by their fields, so rclpy messages and
rosbags-deserialized ones go through the same code.
"""
