"""ROS parameter declarations from the one configuration object (descriptors, ranges, read-only)."""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.parameter import Parameter

from ..config import Config, Spec, iter_specs

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


def parameter_type(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        # Empty string arrays (joint_names) are declared as string arrays.
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value) and value:
            return ParameterType.PARAMETER_INTEGER_ARRAY
        return ParameterType.PARAMETER_STRING_ARRAY
    return _TYPES[type(value)]


def descriptor(name: str, spec: Spec, value: Any) -> ParameterDescriptor:
    ptype = parameter_type(value)
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


def declare_all(node, config: Config) -> Config:
    """Declare every knob (values from --params-file / launch override the defaults); return the
    validated configuration they make up.

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
    for name, spec in iter_specs():
        default = defaults[name]
        final = descriptor(name, spec, default)
        given = overrides.get(name)
        if isinstance(default, float) and given is not None and given.type_ == Parameter.Type.INTEGER:
            overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(given.value))
        if isinstance(default, list) and not default:
            writable = descriptor(name, spec, default)
            writable.read_only = False
            declared = node.declare_parameter(name, Parameter.Type.STRING_ARRAY, writable)
            if declared.type_ == Parameter.Type.NOT_SET:
                node.set_parameters([Parameter(name, Parameter.Type.STRING_ARRAY, [])])
            node.set_descriptor(name, final)
            declared = node.get_parameter(name)
        else:
            declared = node.declare_parameter(name, default, final)
        values[name] = from_ros(declared)
    _accept_integers_for_doubles(node)
    return Config.from_dict(values)


def _accept_integers_for_doubles(node) -> None:
    """``ros2 param set /action_node pruning.alpha 1`` sends an integer: make it a double before
    rclpy's type check (which would refuse it before our validation sees it). Needs rclpy's
    pre-set callbacks (Iron and later); on Humble such a set is refused with rclpy's type message."""
    doubles = {name for name, value in Config().flat().items() if isinstance(value, float)}

    def to_double(params: list[Parameter]) -> list[Parameter]:
        return [Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
                if p.name in doubles and p.type_ == Parameter.Type.INTEGER else p for p in params]

    if hasattr(node, "add_pre_set_parameters_callback"):
        node.add_pre_set_parameters_callback(to_double)


def from_ros(param: Parameter) -> Any:
    value = param.value
    if param.type_ in (Parameter.Type.INTEGER_ARRAY, Parameter.Type.STRING_ARRAY, Parameter.Type.DOUBLE_ARRAY,
                       Parameter.Type.BOOL_ARRAY, Parameter.Type.BYTE_ARRAY):
        return list(value)
    return value
