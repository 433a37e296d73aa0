"""One validated configuration for every knob, shared by the node, replay, bench and flops.

Each field carries its own spec (description, type, allowed range or choices, whether it may
change while the node runs), so the ROS parameter descriptors, the on-set validation, the
YAML loader and the error messages all come from one place.

Names are dotted as the node's ROS parameters are (``pruning.alpha``); nested dicts
(``{"pruning": {"alpha": 0.8}}``) and dotted keys are both accepted.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from .knobs import ConfigError, Spec, coerce, knob, validate_section
from .pruning.config import ControllerConfig, PruningConfig, PruningSettings

__all__ = ["Config", "ConfigError", "ControllerConfig", "ExecutorConfig", "NodeConfig", "PruningConfig",
           "PruningSettings", "Spec", "TopicsConfig", "iter_specs", "layer_knobs", "model_config", "model_depth",
           "model_params_file", "parameter_table"]

NODE_NAME = "action_node"
MODEL_PARAMS_FILE = "specprune.yaml"      # a checkpoint directory's own knobs (e.g. its layer choices)
RELEASED_LLM_LAYERS = 32                  # the depth the paper's layer knobs were chosen for (Llama-2-7B)


@dataclass(frozen=True)
class NodeConfig:
    """Deployment settings of the action node (model, device, rates, inputs)."""

    model_path: str = knob("tiny-random", "Checkpoint directory in the released OpenVLA-OFT layout, or "
                           "'tiny-random' for the built-in small random model.", read_only=True)
    device: str = knob("auto", "Inference device.", choices=("auto", "cuda", "cpu"), read_only=True)
    dtype: str = knob("bfloat16", "Weights dtype on CUDA (CPU always runs float32).",
                      choices=("bfloat16", "float16", "float32"), read_only=True)
    unnorm_key: str = knob("", "dataset_statistics.json key for un-normalization ('' = the only key).",
                           read_only=True)
    num_images: int = knob(2, "Cameras fed to the model: 1 = primary only, 2 = primary + wrist.",
                           low=1, high=3, read_only=True)
    compressed_images: bool = knob(False, "Subscribe to sensor_msgs/CompressedImage instead of Image.",
                                   read_only=True)
    image_resize: str = knob("reference", "Resize of frames that are not 224x224: 'reference' = the OpenVLA-OFT "
                             "deploy path (JPEG q95 round trip + lanczos3, what released models were trained "
                             "on); 'bicubic' for models trained with an antialiased bicubic resize.",
                             choices=("reference", "bicubic"), read_only=True)
    instruction: str = knob("", "Task instruction (the instruction topic overrides it when it publishes).")
    control_rate_hz: float = knob(10.0, "Inference steps per second.", low=0.1, high=1000.0)
    max_observation_age_s: float = knob(0.5, "Observations older than this are dropped, never acted on.",
                                        low=0.001, high=60.0)
    match_tolerance_s: float = knob(0.05, "Largest stamp difference between the primary image and the wrist "
                                    "image / joint state of one observation.", low=0.0, high=5.0)
    action_dt: float = knob(0.1, "Seconds between consecutive actions of a chunk (ActionChunk.dt, trajectory "
                            "timing).", low=0.001, high=10.0)
    episode_gap_s: float = knob(1.0, "No step for longer than this: the next one starts afresh (prior, frame "
                                "history and controller reset; runs unpruned, fallback_reason 'input gap').",
                                low=0.05, high=3600.0)
    sensor_qos: str = knob("sensor_data", "QoS of the camera and joint-state subscriptions.",
                           choices=("sensor_data", "reliable"), read_only=True)
    joint_names: tuple[str, ...] = knob((), "Joints read from joint_states for proprio, in order (empty: the "
                                        "message's order).", read_only=True, max_len=64)
    trajectory_joints: tuple[str, ...] = knob((), "Joint names of joint_trajectory; the first that many action "
                                              "dimensions must be joint targets (publish_trajectory).",
                                              read_only=True, max_len=64)
    rotation_primary: int = knob(0, "Rotation applied to the primary image, degrees.", choices=(0, 90, 180, 270),
                                 read_only=True)
    rotation_wrist: int = knob(0, "Rotation applied to the wrist image, degrees.", choices=(0, 90, 180, 270),
                               read_only=True)
    publish_trajectory: bool = knob(False, "Also publish joint_trajectory (joint-space action models).",
                                    read_only=True)
    debug_image: bool = knob(False, "Publish kept_tokens_image, an overlay of the kept patches.", read_only=True)
    autostart: bool = knob(True, "Lifecycle: configure (load the model) and activate at start; false waits for "
                           "`ros2 lifecycle set /action_node configure` / `activate`.", read_only=True)
    emulated_latency: str = knob(
        "", "Simulated clock only (use_sim_time, a lockstep simulator): each step's answer is due this emulated "
        "latency after its observation - milliseconds, or a model on a GPU whose LLM part scales with the step's "
        "FLOPs (7b-a800, 7b-h100) - and PruningStats.latency_ms reports it; queries are scheduled from it. The "
        "simulator delivers the chunk when its clock gets there ('' = off: the measured latency). The simulator plans "
        "with the control_rate_hz it started with: leave it as set.", read_only=True)

    def __post_init__(self) -> None:
        validate_section(self, "")
        if self.emulated_latency:
            from .latency import parse_latency
            try:
                parse_latency(self.emulated_latency)
            except ValueError as exc:
                raise ConfigError(f"emulated_latency: {exc}") from None
        if self.episode_gap_s <= 1.0 / self.control_rate_hz:
            raise ConfigError(f"episode_gap_s = {self.episode_gap_s:g} must exceed the control period "
                              f"1/control_rate_hz = {1.0 / self.control_rate_hz:g} s (else every step is a gap)")


@dataclass(frozen=True)
class ExecutorConfig:
    """The chunk executor: ActionChunks -> one command per action period, on the robot side.

    Actions are end-effector deltas in OpenVLA-OFT's order (dx dy dz droll dpitch dyaw gripper),
    per action period ``action_dt``; action k of a chunk is meant for its observation stamp + k * action_dt.
    """

    handover: str = knob("replace", "Between overlapping chunks: replace (the newest chunk's action for the "
                         "period) or ensemble (the average of every live chunk's action for the period, weighted "
                         "exp(-ensemble_decay * i), i = 0 for the oldest: ACT's temporal ensembling).",
                         choices=("replace", "ensemble"))
    ensemble_decay: float = knob(0.1, "handover ensemble: m of the weights exp(-m * i), i = 0 for the oldest "
                                 "chunk's action for the period (m > 0 favours older chunks, as ACT's m = 0.01 does; "
                                 "0: plain average).", low=0.0, high=10.0)
    max_chunk_age_s: float = knob(1.5, "A chunk whose observation is older than this is never executed: with no "
                                  "fresher one the executor holds (one hold command) and says why.",
                                  low=0.01, high=60.0)
    max_translation: float = knob(0.05, "Largest translation of one command (m per action period); longer ones are "
                                  "scaled down.", low=0.0001, high=1.0)
    max_rotation: float = knob(0.3, "Largest rotation of one command (rad per action period, the norm of "
                               "droll dpitch dyaw).", low=0.0001, high=3.2)
    workspace_min: tuple[float, ...] = knob((), "Workspace box, lower corner (x y z, m, the eef pose's frame); with "
                                            "workspace_max a command never moves the target outside it ([]: no "
                                            "box; fixed at start).", low=-100.0, high=100.0, max_len=3,
                                            read_only=True)
    workspace_max: tuple[float, ...] = knob((), "Workspace box, upper corner (x y z, m).", low=-100.0, high=100.0,
                                            max_len=3, read_only=True)
    gripper_threshold: float = knob(0.0, "The gripper action at or above this closes the gripper (OFT: +1 close, "
                                    "-1 open).", low=-10.0, high=10.0)

    def __post_init__(self) -> None:
        validate_section(self, "executor")
        if len(self.workspace_min) != len(self.workspace_max) or len(self.workspace_min) not in (0, 3):
            raise ConfigError(f"executor.workspace_min = {list(self.workspace_min)}, executor.workspace_max = "
                              f"{list(self.workspace_max)}: give both as [x, y, z], or neither")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ConfigError(f"executor.workspace_min = {list(self.workspace_min)} must be below "
                              f"executor.workspace_max = {list(self.workspace_max)} on every axis")


def _topic(default: str, what: str) -> Any:
    return knob(default, f"Topic of {what} (relative names resolve in the node's namespace; replay reads "
                f"'/' + a relative name).", read_only=True)


@dataclass(frozen=True)
class TopicsConfig:
    """Node topic -> robot topic: the one mapping the node, the launch file and replay use.

    The node subscribes and publishes on these names (ROS remapping still applies on top), and
    ``specprune replay --params`` reads the same names from a recording.
    """

    image_primary: str = _topic("image_primary", "the primary (third-person) camera")
    image_wrist: str = _topic("image_wrist", "the wrist camera")
    image_extra: str = _topic("image_extra", "a third camera (num_images 3)")
    joint_states: str = _topic("joint_states", "the joint states (proprio)")
    instruction: str = _topic("instruction", "the task instruction (std_msgs/String, transient local)")
    action_chunk: str = _topic("action_chunk", "the published action chunks")
    pruning_stats: str = _topic("pruning_stats", "the published pruning statistics")
    joint_trajectory: str = _topic("joint_trajectory", "the published joint trajectory (publish_trajectory)")
    kept_tokens_image: str = _topic("kept_tokens_image", "the kept-patch overlay (debug_image)")
    command: str = _topic("command", "the chunk executor's commands (ActionCommand, one per action period)")
    target_pose: str = _topic("target_pose", "the chunk executor's end-effector targets (geometry_msgs/PoseStamped, "
                              "Cartesian impedance controllers)")
    target_twist: str = _topic("target_twist", "the chunk executor's end-effector velocities "
                               "(geometry_msgs/TwistStamped, MoveIt Servo)")
    eef_pose: str = _topic("eef_pose", "the robot's end-effector pose (geometry_msgs/PoseStamped) the executor's "
                           "targets and workspace box start from")
    estop: str = _topic("estop", "the e-stop (std_msgs/Bool, latched): true stops the executor until false")

    def __post_init__(self) -> None:
        validate_section(self, "topics")
        for f in dataclasses.fields(self):
            name = getattr(self, f.name)
            if not name or any(c.isspace() for c in name) or name.endswith("/") or "//" in name:
                raise ConfigError(f"topics.{f.name} = {name!r} is not a valid topic name")

    def cameras(self, count: int) -> tuple[str, ...]:
        return (self.image_primary, self.image_wrist, self.image_extra)[:count]


SECTIONS: dict[str, type] = {"": NodeConfig, "pruning": PruningConfig, "controller": ControllerConfig,
                             "executor": ExecutorConfig, "topics": TopicsConfig}


@dataclass(frozen=True)
class Config:
    """Every knob of specprune_ros. Immutable: changes make a new, validated object."""

    node: NodeConfig = field(default_factory=NodeConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None) -> "Config":
        """Build from nested and/or dotted keys; unknown names are errors (typos must not pass)."""
        return cls().replace(**flatten(values or {}))

    @classmethod
    def from_yaml(cls, path: str | Path, node_name: str = NODE_NAME) -> "Config":
        """Read a ROS 2 parameter file (``action_node: ros__parameters: ...``) or a plain mapping."""
        return cls.from_yaml_files([path], node_name)

    @classmethod
    def from_yaml_files(cls, paths: Sequence[str | Path], node_name: str = NODE_NAME,
                        base: "Config | None" = None) -> "Config":
        """Several parameter files, later ones overriding earlier ones knob by knob (as the node's
        repeated ``--params-file``): e.g. a model's layer knobs, then config/pruning-paper.yaml.
        Knobs no file names keep ``base``'s values (the built-in defaults if none). The
        cross-field rules apply to the merged result."""
        merged: dict[str, Any] = base.flat() if base is not None else {}
        for path in map(Path, paths):
            merged.update(flatten(_read_parameters(path, node_name)))
        try:
            return cls.from_dict(merged)
        except ConfigError as exc:
            raise ConfigError(f"{', '.join(map(str, paths))}: {exc}" if paths else str(exc)) from None

    def replace(self, **dotted: Any) -> "Config":
        """A new config with ``{"pruning.alpha": 0.5, ...}`` applied; all or nothing."""
        updates: dict[str, dict[str, Any]] = {}
        for name, value in dotted.items():
            section, key = split_name(name)
            spec = spec_of(name)
            updates.setdefault(section, {})[key] = coerce(name, value, spec, SECTIONS[section])
        kwargs = {}
        for section, attr in (("", "node"), ("pruning", "pruning"), ("controller", "controller"),
                              ("executor", "executor"), ("topics", "topics")):
            current = getattr(self, attr)
            kwargs[attr] = dataclasses.replace(current, **updates[section]) if section in updates else current
        return Config(**kwargs)

    # ---- views ----------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """``{"pruning.alpha": 0.8, ...}`` for every knob (lists as lists)."""
        out = {}
        for name, _spec in iter_specs():
            section, key = split_name(name)
            value = getattr(self._section(section), key)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_ros_yaml(self, node_name: str = "/**") -> str:
        """A ROS 2 parameter file, keyed ``/**`` (any node name, any namespace) unless told."""
        return yaml.safe_dump({node_name: {"ros__parameters": self.flat()}}, sort_keys=False)

    def pruning_settings(self) -> PruningSettings:
        """What the pruning engine reads (it never sees the node's other knobs)."""
        return PruningSettings(self.pruning, self.controller, self.node.action_dt)

    def _section(self, section: str) -> Any:
        return {"": self.node, "pruning": self.pruning, "controller": self.controller, "executor": self.executor,
                "topics": self.topics}[section]


# ---- helpers ----------------------------------------------------------------------------------

def model_params_file(model_path: str) -> Path | None:
    """The knobs a checkpoint directory ships (``specprune.yaml``), if it does. They apply under the
    user's parameter files and ``-p`` overrides, wherever a model is loaded from its directory."""
    path = Path(model_path) / MODEL_PARAMS_FILE if model_path else None
    return path if path is not None and path.is_file() else None


def model_depth(model_path: str) -> int | None:
    """The LLM depth of a checkpoint directory (``text_config.num_hidden_layers`` of its
    config.json), or None where ``model_path`` is no such directory (the built-in ``tiny-random``
    has the release's 32 layers). Read here, not through the model package, so that choosing
    knobs never loads torch."""
    path = Path(model_path) / "config.json" if model_path else None
    if path is None or not path.is_file():
        return None
    try:
        text = json.loads(path.read_text()).get("text_config") or {}
        return int(text.get("num_hidden_layers", RELEASED_LLM_LAYERS))
    except (OSError, ValueError, AttributeError, TypeError):
        return None                          # the checkpoint loader names what is wrong with it


def layer_knobs(layers: int) -> dict[str, Any]:
    """The paper's layer knobs (chosen for the release's 32 layers) mapped in proportion to a
    model with ``layers`` LLM layers: layer l becomes ceil(l * layers / 32), so 16 layers score
    the local set with layer 1, keep the prior from layers 8 and 16 and drop at 3, 5, 8 and 10."""
    def scale(layer: int) -> int:
        return max(1, math.ceil(layer * layers / RELEASED_LLM_LAYERS))

    paper = PruningConfig()
    return {"pruning.local_layers": scale(paper.local_layers),
            "pruning.global_layers": sorted({scale(n) for n in paper.global_layers}),
            "pruning.dynamic_layers": sorted({scale(n) for n in paper.dynamic_layers})}


def model_config(model_path: str) -> Config:
    """The defaults a model brings before anyone's parameter files: the paper's layer choices
    mapped to its depth, then its directory's own ``specprune.yaml``. Every tool and the node
    start from this, so a layer knob nobody set always fits the model."""
    depth, base = model_depth(model_path), Config()
    if depth not in (None, RELEASED_LLM_LAYERS):
        try:
            base = base.replace(**layer_knobs(depth))
        except ConfigError:
            pass          # too shallow for the paper's rule: the policy refuses pruning with the layer ranges
    own = model_params_file(model_path)
    return Config.from_yaml_files([own], base=base) if own is not None else base


def iter_specs() -> Iterator[tuple[str, Spec]]:
    """(dotted name, Spec) of every knob, in declaration order."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield (f"{section}.{f.name}" if section else f.name), f.metadata["spec"]


def parameter_table() -> str:
    """The markdown table of every knob (docs/parameters.md is this, kept in sync by a test)."""
    defaults = Config().flat()
    lines = ["| parameter | default | allowed | | meaning |", "|---|---|---|---|---|"]
    for name, spec in iter_specs():
        default = defaults[name]
        default = list(default) if isinstance(default, tuple) else default
        bounded = spec.choices is not None or spec.low is not None or spec.high is not None
        allowed = spec.allowed().removeprefix("range ") if bounded else ""
        lines.append(f"| `{name}` | {default!r} | {allowed} | {'read-only' if spec.read_only else 'live'} | "
                     f"{spec.description} |")
    return "\n".join(lines) + "\n"


def field_type(name: str) -> str:
    """The knob's Python type as written in its dataclass ("float", "tuple[int, ...]", ...)."""
    section, key = split_name(name)
    return str({f.name: f.type for f in dataclasses.fields(SECTIONS[section])}[key])


def split_name(name: str) -> tuple[str, str]:
    section, _, key = name.rpartition(".")
    if section not in SECTIONS:
        raise _unknown(name)
    return section, key


def spec_of(name: str) -> Spec:
    section, key = split_name(name)
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == key:
            return f.metadata["spec"]
    raise _unknown(name)


def _unknown(name: str) -> ConfigError:
    """One short line: the closest knob names, and where the full list is."""
    names = [n for n, _ in iter_specs()]
    close = difflib.get_close_matches(name, names, n=2, cutoff=0.8)
    if not close:                                   # a knob without its section: "alpha", "k_globl"
        by_key = {n.rpartition(".")[2]: n for n in names}
        close = [by_key[k] for k in difflib.get_close_matches(name.rpartition(".")[2], by_key, n=2, cutoff=0.8)]
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return ConfigError(f"unknown parameter '{name}' ({hint}`specprune params` lists every knob)")


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _read_parameters(path: Path, node_name: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read parameter file: {exc.strerror or exc}") from None
    if data is None or data == {}:
        raise ConfigError(f"{path}: the parameter file is empty (expected '/**:' -> 'ros__parameters:' -> knobs)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    params = _ros_parameters(data, node_name)
    if params is None:
        blocks = [str(k) for k in data]
        raise ConfigError(f"{path}: none of its node keys {blocks} names the {node_name} (key it '/**:' or "
                          f"'{node_name}:')")
    return params


def _ros_parameters(data: dict, node_name: str) -> dict | None:
    """Unwrap ``/**`` or ``<node_name>`` -> ``ros__parameters`` if present (wildcard first); a
    plain mapping as it is; None for a ROS file none of whose node keys names this node."""
    if not any(isinstance(v, dict) and "ros__parameters" in v for v in data.values()):
        return data
    blocks = [data[key] for key in ("/**", node_name, "/" + node_name) if isinstance(data.get(key), dict)]
    if not blocks:
        return None
    params: dict = {}
    for block in blocks:
        params.update(flatten(block.get("ros__parameters") or {}))
    return params


