"""Flexiv Rizon4: OpenVLA-OFT action node with SpecPrune-VLA.

    ros2 launch specprune_ros rizon4.launch.py model_path:=/models/openvla-oft-rizon4 \
        unnorm_key:=rizon4_pick_place instruction:="put the cup on the plate"

Parameters: what the model brings (its directory's specprune.yaml, else the paper's layer knobs
mapped to its depth), then config/rizon4.yaml (robot facts: topics, rates, rotations; or
params_file), then extra_params_file (e.g. config/pruning-paper.yaml), then the launch arguments
(model, statistics key, instruction, use_sim_time). ``namespace:=/robot1`` runs the node as
/robot1/action_node (the parameter files are keyed /** so they still apply). A node that
cannot configure exits 1 and takes the launch down with a non-zero exit code.

The topics are that file's `topics.*` parameters (node input
-> Rizon4 topic): the node subscribes and publishes on them, and `specprune replay --params`
reads recordings by the same names, so the mapping lives in one place.

The node process gets the Fast DDS profile for camera traffic (config/fastdds_large_data.xml: a
32 MiB shared-memory segment; the default 512 KiB one is smaller than one 640x480 frame and loses
frames); the camera drivers need the same profile (docs/node.md, "DDS for camera traffic").
"""
import signal

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
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
        DeclareLaunchArgument("extra_params_file", default_value="",
                              description="a second parameter file layered on params_file"),
        DeclareLaunchArgument("namespace", default_value="", description="the node's namespace (e.g. /robot1)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="run on /clock"),
        DeclareLaunchArgument("dds_profile", default_value=dds_profile,
                              description="Fast DDS XML profile of the node process (large camera frames)"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])


def _node(context):
    value = {name: LaunchConfiguration(name).perform(context)
             for name in ("model_path", "unnorm_key", "instruction", "params_file", "extra_params_file", "namespace",
                          "use_sim_time", "dds_profile")}
    files = [value["params_file"]] + ([value["extra_params_file"]] if value["extra_params_file"] else [])
    node = Node(
        package="specprune_ros",
        executable="action_node",
        name="action_node",
        namespace=value["namespace"],
        output="screen",
        emulate_tty=True,
        # Fast DDS 3 (Jazzy) reads the first, Fast DDS 2 (Humble) the second.
        additional_env={"FASTDDS_DEFAULT_PROFILES_FILE": value["dds_profile"],
                        "FASTRTPS_DEFAULT_PROFILES_FILE": value["dds_profile"]},
        parameters=[*files, {"model_path": value["model_path"], "unnorm_key": value["unnorm_key"],
                             "instruction": value["instruction"],
                             "use_sim_time": value["use_sim_time"].lower() in ("true", "1")}],
    )
    # The node's exit ends the launch; a non-zero exit (it could not configure) fails it.
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_on_node_exit))]


def _on_node_exit(event, context):
    # 0: the node's own signal handling (a Ctrl-C at any phase exits 0); -SIGINT: one that came
    # before the interpreter had started - both are the user's Ctrl-C, not a failure.
    if event.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"action_node exited with code {event.returncode}")   # ros2 launch exits 1
    return [EmitEvent(event=Shutdown(reason="action_node exited"))]
