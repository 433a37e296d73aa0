"""Flexiv Rizon4: OpenVLA-OFT action node with SpecPrune-VLA.

    ros2 launch specprune_ros rizon4.launch.py model_path:=/models/openvla-oft-rizon4 \
        unnorm_key:=rizon4_pick_place instruction:="put the cup on the plate"

Parameters come from config/rizon4.yaml; the launch arguments override the model, the
statistics key and the instruction. Topics are remapped to the Rizon4 setup below.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# Robot-side topic names (third-person camera, wrist camera, Flexiv driver joint states).
REMAPPINGS = [
    ("image_primary", "/camera/third_person/color/image_raw"),
    ("image_wrist", "/camera/wrist/color/image_raw"),
    ("joint_states", "/joint_states"),
    ("instruction", "/task/instruction"),
    ("joint_trajectory", "/rizon_arm_controller/joint_trajectory"),
]


def generate_launch_description() -> LaunchDescription:
    params_file = PathJoinSubstitution([FindPackageShare("specprune_ros"), "config", "rizon4.yaml"])
    arguments = [
        DeclareLaunchArgument("model_path", default_value="tiny-random",
                              description="OpenVLA-OFT checkpoint directory (released layout)"),
        DeclareLaunchArgument("unnorm_key", default_value="",
                              description="dataset_statistics.json key used to un-normalize actions"),
        DeclareLaunchArgument("instruction", default_value="", description="task instruction"),
        DeclareLaunchArgument("params_file", default_value=params_file,
                              description="ROS parameter file (same file specprune replay --params reads)"),
    ]
    node = Node(
        package="specprune_ros",
        executable="action_node",
        name="action_node",
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model_path": LaunchConfiguration("model_path"),
                "unnorm_key": LaunchConfiguration("unnorm_key"),
                "instruction": LaunchConfiguration("instruction"),
            },
        ],
        remappings=REMAPPINGS,
    )
    return LaunchDescription([*arguments, node])
