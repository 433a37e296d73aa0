"""ROS parameter declarations from the one configuration object (descriptors, ranges, read-only)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.parameter import Parameter

from ..config import Config, ConfigError, Spec, field_type, iter_specs, model_config

_TYPES = {"bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER, "float": Parameter.Type.DOUBLE,
          "str": Parameter.Type.STRING, "tuple[str, ...]": Parameter.Type.STRING_ARRAY,
          "tuple[int, ...]": Parameter.Type.INTEGER_ARRAY, "tuple[float, ...]": Parameter.Type.DOUBLE_ARRAY}
KNOWN = frozenset(name for name, _ in iter_specs())


def parameter_type(name: str) -> Parameter.Type:
    """The ROS type of a knob, from its field's type (so an empty list still has one)."""
    return _TYPES[field_type(name)]


def descriptor(name: str, spec: Spec, value: Any) -> ParameterDescriptor:
    ptype = int(parameter_type(name).value)
    d = ParameterDescriptor(name=name, type=ptype, description=spec.description, read_only=spec.read_only)
    if spec.choices is not None:
        d.additional_constraints = spec.allowed()
    elif spec.low is not None and spec.high is not None:
        if ptype == ParameterType.PARAMETER_DOUBLE:
            d.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                         step=0.0)]
        elif ptype == ParameterType.PARAMETER_INTEGER:
            d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
        else:
            d.additional_constraints = f"each entry in {spec.allowed()}"
    return d


def _as_declared(name: str, given: Parameter) -> Parameter:
    """YAML's ``1`` for a double and ``[0, 1]`` for a double array are integers to rclpy: make
    them the declared type before rclpy's type check refuses them."""
    declared = parameter_type(name)
    if declared == Parameter.Type.DOUBLE and given.type_ == Parameter.Type.INTEGER:
        return Parameter(name, Parameter.Type.DOUBLE, float(given.value))
    if declared == Parameter.Type.DOUBLE_ARRAY and given.type_ == Parameter.Type.INTEGER_ARRAY:
        return Parameter(name, Parameter.Type.DOUBLE_ARRAY, [float(v) for v in given.value])
    return given


def declare_all(node, config: Config, names: Iterable[str] | None = None) -> Config:
    """Declare every knob (or those in ``names``; values from --params-file / launch override the
    defaults); return the validated configuration they make up (undeclared knobs at ``config``'s).

    Every parameter gets a value: rclpy's get_parameters service answers a request that names
    one parameter without a value with nothing at all, so ``ros2 param dump`` printed ``{}``.
    An empty string array cannot be declared as a value (rclpy types ``[]`` as a byte array):
    such a knob is declared typed, set to ``[]`` with an explicitly typed Parameter, and only
    then marked read-only.
    """
    defaults = config.flat()
    values = {}
    # --params-file / -p values, which rclpy checks against the declared type: `rate: 10` in a
    # YAML file is an integer. rclpy keeps them in this attribute (Humble and Jazzy alike).
    overrides = getattr(node, "_parameter_overrides", {})
    wanted = KNOWN if names is None else frozenset(names)
    for name, spec in iter_specs():
        if name not in wanted:
            continue
        default = defaults[name]
        final = descriptor(name, spec, default)
        if name in overrides:
            overrides[name] = _as_declared(name, overrides[name])
        if isinstance(default, list) and not default:
            writable = descriptor(name, spec, default)
            writable.read_only = False
            declared = node.declare_parameter(name, parameter_type(name), writable)
            if declared.type_ == Parameter.Type.NOT_SET:
                node.set_parameters([Parameter(name, parameter_type(name), [])])
            node.set_descriptor(name, final)
            declared = node.get_parameter(name)
        else:
            declared = node.declare_parameter(name, default, final)
        values[name] = from_ros(declared)
    _accept_integers_for_doubles(node)
    return config.replace(**values)


def _accept_integers_for_doubles(node) -> None:
    """``ros2 param set /action_node pruning.alpha 1`` sends an integer: make it a double before
    rclpy's type check (which would refuse it before our validation sees it). Needs rclpy's
    pre-set callbacks (Iron and later); on Humble such a set is refused with rclpy's type message."""
    def to_double(params: list[Parameter]) -> list[Parameter]:
        return [_as_declared(p.name, p) if p.name in KNOWN else p for p in params]

    if hasattr(node, "add_pre_set_parameters_callback"):
        node.add_pre_set_parameters_callback(to_double)


def from_ros(param: Parameter) -> Any:
    value = param.value
    if param.type_ in (Parameter.Type.INTEGER_ARRAY, Parameter.Type.STRING_ARRAY, Parameter.Type.DOUBLE_ARRAY,
                       Parameter.Type.BOOL_ARRAY, Parameter.Type.BYTE_ARRAY):
        return list(value)
    return value


def model_defaults(overrides: dict[str, Parameter]) -> Config:
    """The defaults the node declares: what the ``model_path`` given brings (the paper's layer
    choices mapped to its depth, then its own ``specprune.yaml``), so --params-file and -p values
    apply on top of it."""
    given = overrides.get("model_path")
    return model_config(str(given.value) if given is not None else Config().node.model_path)


def as_parameter(name: str, value: Any) -> Parameter:
    """A knob's value as a Parameter of its declared type (``[]`` stays a typed empty array)."""
    kind = parameter_type(name)
    if kind == Parameter.Type.DOUBLE:
        value = float(value)
    elif kind == Parameter.Type.DOUBLE_ARRAY:
        value = [float(v) for v in value]
    return Parameter(name, kind, value)


def params_files(args: Sequence[str]) -> list[str]:
    """The ``--params-file`` paths of a node's ROS arguments."""
    files, ros = [], False
    for i, arg in enumerate(args):
        if arg == "--ros-args":
            ros = True
        elif arg == "--":
            ros = False
        elif ros and arg == "--params-file" and i + 1 < len(args):
            files.append(args[i + 1])
    return files


def node_key_matches(key: str, fully_qualified_name: str) -> bool:
    """rcl's rule for a parameter file's node key: a fully qualified name (a leading ``/`` is
    implied) where ``*`` stands for one name token and ``**`` for any number of them."""
    tokens = [t for t in ("/" + key.lstrip("/")).split("/") if t]
    pattern = "".join("(/[^/]+)*" if t == "**" else "/[^/]+" if t == "*" else "/" + re.escape(t) for t in tokens)
    return re.fullmatch(pattern or "/", fully_qualified_name) is not None


def unmatched_params_files(args: Sequence[str], fully_qualified_name: str) -> list[str]:
    """A warning for every --params-file none of whose node keys names this node (a file keyed
    ``action_node:`` is silently ignored by a node running as ``/robot1/action_node``)."""
    warnings = []
    for path in params_files(args):
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue                           # rcl itself refuses an unreadable file at init
        keys = [k for k, v in (data or {}).items() if isinstance(v, dict) and "ros__parameters" in v] \
            if isinstance(data, dict) else []
        if not any(node_key_matches(str(k), fully_qualified_name) for k in keys):
            warnings.append(f"parameter file {path}: none of its node keys {keys} matches this node "
                            f"({fully_qualified_name}); its parameters were ignored (key it '/**:' or "
                            f"'{fully_qualified_name}:')")
    return warnings


class ParameterBridge:
    """``ros2 param set`` -> the one configuration. A change is validated in the on-set callback
    (a refused value never reaches the node: ``successful=False`` with the knob's name and range)
    and applied in the post-set callback, once rclpy has stored it (Iron and later; on Humble,
    which has no post-set callback, it is applied in the on-set callback once valid). rclpy's own
    parameters (``use_sim_time``, ...) pass through to rclpy."""

    def __init__(self, node, current: Callable[[], Config], validate: Callable[[Config], None],
                 apply: Callable[[Config, list[str]], None]) -> None:
        self.current, self.validate, self.apply = current, validate, apply
        self._post = hasattr(node, "add_post_set_parameters_callback")
        self._accepted: tuple[Config, list[str]] | None = None
        node.add_on_set_parameters_callback(self._on_set)
        if self._post:
            node.add_post_set_parameters_callback(self._after_set)

    def _on_set(self, params) -> SetParametersResult:
        ours = [p for p in params if p.name in KNOWN]
        try:
            new = self.current().replace(**{p.name: from_ros(p) for p in ours})
            self.validate(new)
        except (ConfigError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        names = [p.name for p in ours]
        if self._post:
            self._accepted = (new, names)      # applied once rclpy has stored the values
        else:
            self.apply(new, names)
        return SetParametersResult(successful=True)

    def _after_set(self, params) -> None:
        accepted, self._accepted = self._accepted, None
        if accepted is not None and accepted[1]:
            self.apply(*accepted)
