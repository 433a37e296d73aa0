"""The sim task's robot, the action node and the chunk executor, in one namespace.

    ros2 launch specprune_ros sim.launch.py model_path:=$PWD/models/sim-tabletop seeds:=101000:101050
    ros2 launch specprune_ros sim.launch.py namespace:=/robot2 seeds:=101050:101100 ...   # a second robot

With ``clock:=lockstep`` (default) the robot publishes ``<namespace>/clock`` and holds it until each
period's command is in; the node and the executor run on it (``use_sim_time``). ``clock:=realtime``
steps on wall time. Each episode's outcome goes to ``<namespace>/sim/episode`` and, with
``log:=FILE``, to a JSON-lines file; the launch ends when the robot has run its seeds.
``specprune sim eval --through-ros`` starts the same three processes with the same arguments
(``specprune_ros.ros.sim_stack.stack_processes``; a test keeps this file and that function in step).
"""
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def _nodes(context):
    value = {name: LaunchConfiguration(name).perform(context)
             for name in ("namespace", "model_path", "params_file", "seeds", "clock", "log", "layout", "dds_profile",
                          "control_rate_hz")}
    lockstep = value["clock"] == "lockstep"
    remap = [("/clock", f"{value['namespace'].rstrip('/')}/clock")] if lockstep else []
    given = {"model_path": value["model_path"], "control_rate_hz": float(value["control_rate_hz"])}
    params = [value["params_file"], given] if value["params_file"] else [given]
    env = {"FASTDDS_DEFAULT_PROFILES_FILE": value["dds_profile"],
           "FASTRTPS_DEFAULT_PROFILES_FILE": value["dds_profile"]}
    robot_args = ["--seeds", value["seeds"], "--clock", value["clock"], "--layout", value["layout"]]
    if value["log"]:
        robot_args += ["--log", value["log"]]
    common = dict(namespace=value["namespace"], output="screen", emulate_tty=True, additional_env=env,
                  remappings=remap)
    robot = Node(package="specprune_ros", executable="sim_robot", name="sim_robot", arguments=robot_args,
                 parameters=params, **common)
    return [
        robot,
        Node(package="specprune_ros", executable="action_node", name="action_node",
             parameters=[*params, {"use_sim_time": lockstep}], **common),
        Node(package="specprune_ros", executable="chunk_executor", name="chunk_executor",
             parameters=[*params, {"use_sim_time": lockstep}], **common),
        # The robot leaves when its seeds are done: so does the launch (the node and the executor).
        RegisterEventHandler(OnProcessExit(target_action=robot, on_exit=[
            EmitEvent(event=Shutdown(reason="the sim robot finished its seeds"))])),
    ]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("specprune_ros")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="/robot1", description="the robot's namespace"),
        DeclareLaunchArgument("model_path", description="the sim model (its specprune.yaml applies)"),
        DeclareLaunchArgument("params_file", default_value="", description="further knobs (all three nodes)"),
        DeclareLaunchArgument("seeds", default_value="101000:101050", description="episodes on seeds A .. B-1"),
        DeclareLaunchArgument("clock", default_value="lockstep", choices=["lockstep", "realtime"]),
        DeclareLaunchArgument("log", default_value="", description="JSON-lines file of episode outcomes"),
        DeclareLaunchArgument("layout", default_value="fixed-start"),
        DeclareLaunchArgument("control_rate_hz", default_value="1.25",
                              description="queries per second (1.25: once per executed 8-action chunk)"),
        DeclareLaunchArgument("dds_profile", default_value=PathJoinSubstitution(
            [share, "config", "fastdds_large_data.xml"]), description="Fast DDS profile for camera frames"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
