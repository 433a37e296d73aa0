"""The simulated tabletop testbed: a MuJoCo scene behind the Gymnasium API and a scripted expert.

MuJoCo chooses its OpenGL backend when it is first imported: headless EGL unless the caller chose
another (``MUJOCO_GL=osmesa`` for software rendering without EGL).
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

# The task layouts (``env.py`` says what each is), here so the CLI can offer them without MuJoCo.
LAYOUTS = ("fixed-start", "fixed", "shuffled", "scattered")
DEFAULT_LAYOUT = "fixed-start"
# The task's cameras, in the model's image order.
CAMERAS = ("primary", "wrist")
