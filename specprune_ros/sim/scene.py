"""The tabletop scene as MJCF: a table, four graspable objects, a plate and a bowl, a parallel
gripper moved as an end effector (a mocap target it is welded to), a fixed third-person camera
and a wrist camera on the gripper. Object colours, positions and the receptacles' places are set
per episode by the environment; the model itself never changes.
"""
from __future__ import annotations

# Shapes of the four graspable objects (MJCF geom type, size) - all 4.4 cm across the grasp axis,
# so the 6.6 cm finger opening leaves +-11 mm: a finger further off lands on the object. (A first
# opening of 5.4 cm, +-5 mm, was beyond what the model trained here learned: its grasps missed by
# 2-6 cm at step 1800, see models/sim-tabletop/README.md.)
OBJECTS = {
    "cube": ("box", "0.022 0.022 0.022"),
    "cylinder": ("cylinder", "0.022 0.026"),
    "block": ("box", "0.045 0.022 0.02"),
    "box": ("box", "0.022 0.022 0.03"),
}
OBJECT_HALF_HEIGHT = {"cube": 0.022, "cylinder": 0.026, "block": 0.02, "box": 0.03}
COLORS = {"red": (0.85, 0.12, 0.1), "green": (0.15, 0.65, 0.2), "blue": (0.15, 0.3, 0.85),
          "yellow": (0.9, 0.8, 0.1)}
PLATE_RADIUS = 0.075
BOWL_RADIUS = 0.065           # inner radius of the wall ring
BOWL_WALLS = 12
FINGER_OPEN = 0.033           # per finger: 6.6 cm opening, 11 mm either side of a 4.4 cm object
GRIPPER_HOME = (0.45, 0.0, 0.25)


def _bowl_walls() -> str:
    import math

    walls = []
    for k in range(BOWL_WALLS):
        a = 2 * math.pi * k / BOWL_WALLS
        x, y = (BOWL_RADIUS + 0.006) * math.cos(a), (BOWL_RADIUS + 0.006) * math.sin(a)
        walls.append(f'<geom type="box" size="0.006 0.02 0.025" pos="{x:.4f} {y:.4f} 0.025" '
                     f'euler="0 0 {a:.4f}" rgba="0.75 0.75 0.8 1" contype="1" conaffinity="1"/>')
    return "\n          ".join(walls)


def scene_xml(size: int = 224) -> str:
    objects = []
    for name, (kind, dims) in OBJECTS.items():
        objects.append(f'''
        <body name="{name}" pos="0 0 0.1">
          <freejoint name="{name}_joint"/>
          <geom name="{name}_geom" type="{kind}" size="{dims}" rgba="0.5 0.5 0.5 1" mass="0.08"
                friction="1.2 0.01 0.001" condim="4" solref="0.01 1"/>
        </body>''')
    return f'''
<mujoco model="specprune_tabletop">
  <option timestep="0.002" cone="elliptic" impratio="10"/>
  <visual>
    <quality shadowsize="0"/>
    <global offwidth="{size}" offheight="{size}"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5"/>
  </visual>
  <asset>
    <texture name="wood" type="2d" builtin="checker" rgb1="0.62 0.48 0.34" rgb2="0.58 0.44 0.31"
             width="256" height="256"/>
    <material name="table" texture="wood" texrepeat="8 8"/>
  </asset>
  <worldbody>
    <light pos="0.4 -0.3 1.2" dir="0 0.2 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="table" type="plane" size="0.6 0.5 0.02" pos="0.45 0 0" material="table"
          friction="1 0.01 0.001"/>
    <camera name="primary" pos="0.92 0.0 0.5" xyaxes="0 1 0 -0.72 0 0.69" fovy="45"/>
    <body name="plate" pos="0.45 -0.15 0">
      <geom name="plate_geom" type="cylinder" size="{PLATE_RADIUS} 0.006" pos="0 0 0.006"
            rgba="0.93 0.93 0.95 1"/>
    </body>
    <body name="bowl" pos="0.45 0.15 0">
      <geom name="bowl_base" type="cylinder" size="{BOWL_RADIUS + 0.012} 0.004" pos="0 0 0.004"
            rgba="0.7 0.7 0.76 1"/>
          {_bowl_walls()}
    </body>{"".join(objects)}
    <body name="target" mocap="true" pos="{GRIPPER_HOME[0]} {GRIPPER_HOME[1]} {GRIPPER_HOME[2]}"/>
    <body name="gripper" pos="{GRIPPER_HOME[0]} {GRIPPER_HOME[1]} {GRIPPER_HOME[2]}" gravcomp="1">
      <freejoint name="gripper_joint"/>
      <geom name="palm" type="box" size="0.02 0.045 0.012" pos="0 0 0.03" rgba="0.25 0.25 0.28 1" mass="0.4"/>
      <geom name="mast" type="cylinder" size="0.012 0.06" pos="0 0 0.1" rgba="0.3 0.3 0.33 1" mass="0.1"
            contype="0" conaffinity="0"/>
      <camera name="wrist" pos="0.045 0 0.03" xyaxes="0 -1 0 0.97 0 -0.25" fovy="80"/>
      <body name="finger_left" pos="0 0.0 0" gravcomp="1">
        <joint name="finger_left_joint" type="slide" axis="0 1 0" range="0 {FINGER_OPEN}" damping="2"/>
        <geom name="finger_left_geom" type="box" size="0.012 0.005 0.025" pos="0 0.005 -0.005"
              rgba="0.35 0.35 0.4 1" friction="1.5 0.01 0.001" condim="4" mass="0.03"/>
      </body>
      <body name="finger_right" pos="0 0.0 0" gravcomp="1">
        <joint name="finger_right_joint" type="slide" axis="0 -1 0" range="0 {FINGER_OPEN}" damping="2"/>
        <geom name="finger_right_geom" type="box" size="0.012 0.005 0.025" pos="0 -0.005 -0.005"
              rgba="0.35 0.35 0.4 1" friction="1.5 0.01 0.001" condim="4" mass="0.03"/>
      </body>
    </body>
  </worldbody>
  <equality>
    <weld body1="target" body2="gripper" solref="0.02 1"/>
  </equality>
  <actuator>
    <position name="finger_left_act" joint="finger_left_joint" kp="300" ctrlrange="0 {FINGER_OPEN}"
              forcerange="-12 12"/>
    <position name="finger_right_act" joint="finger_right_joint" kp="300" ctrlrange="0 {FINGER_OPEN}"
              forcerange="-12 12"/>
  </actuator>
</mujoco>
'''
