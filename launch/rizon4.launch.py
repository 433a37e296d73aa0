"""Flexiv Rizon4: OpenVLA-OFT action node with SpecPrune-VLA.

    ros2 launch specprune_ros rizon4.launch.py model_path:=/models/openvla-oft-rizon4 \
        unnorm_key:=rizon4_pick_place instruction:="put the cup on the plate"

Parameters come from config/rizon4.yaml; the launch arguments override the model, the
statistics key and the instruction. The topics are that file's `topics.*` parameters (node input
-> Rizon4 topic): the node subscribes and publishes on them, and `specprune replay --params`
reads recordings by the same names, so the mapping lives in one place.

The node process gets the Fast DDS profile for camera traffic (config/fastdds_large_data.xml: a
32 MiB shared-memory segment; the default 512 KiB one is smaller than one 640x480 frame and loses
frames); the camera drivers need the same profile (README, "DDS for camera traffic").
"""
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    params_file = PathJoinSubstitution([FindPackageShare("specprune_ros"), "config", "rizon4.yaml"])
    dds_profile = PathJoinSubstitution([FindPackageShare("specprune_ros"), "config", "fastdds_large_data.xml"])
    arguments = [
        DeclareLaunchArgument("model_path", default_value="tiny-random",
                              description="OpenVLA-OFT checkpoint directory (released layout)"),
        DeclareLaunchArgument("unnorm_key", default_value="",
                              description="dataset_statistics.json key used to un-normalize actions"),
        DeclareLaunchArgument("instruction", default_value="", description="task instruction"),
        DeclareLaunchArgument("params_file", default_value=params_file,
                              description="ROS parameter file (same file specprune replay --params reads)"),
        DeclareLaunchArgument("dds_profile", default_value=dds_profile,
                              description="Fast DDS XML profile of the node process (large camera frames)"),
    ]
    profile = LaunchConfiguration("dds_profile")
    node = Node(
        package="specprune_ros",
        executable="action_node",
        name="action_node",
        output="screen",
        emulate_tty=True,
        # Fast DDS 3 (Jazzy) reads the first, Fast DDS 2 (Humble) the second.
        additional_env={"FASTDDS_DEFAULT_PROFILES_FILE": profile, "FASTRTPS_DEFAULT_PROFILES_FILE": profile},
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model_path": LaunchConfiguration("model_path"),
                "unnorm_key": LaunchConfiguration("unnorm_key"),
                "instruction": LaunchConfiguration("instruction"),
            },
        ],
    )
    return LaunchDescription([*arguments, node])
