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
    validated configuration they make up."""
    defaults = config.flat()
    values = {}
    for name, spec in iter_specs():
        default = defaults[name]
        initial = default
        if isinstance(default, list) and not default:
            # rclpy would type an empty list as a byte array: declare the type, with no value set.
            initial = Parameter.Type.STRING_ARRAY
        declared = node.declare_parameter(name, initial, descriptor(name, spec, default))
        value = from_ros(declared)
        values[name] = default if value is None else value
    return Config.from_dict(values)


def from_ros(param: Parameter) -> Any:
    value = param.value
    if param.type_ in (Parameter.Type.INTEGER_ARRAY, Parameter.Type.STRING_ARRAY, Parameter.Type.DOUBLE_ARRAY,
                       Parameter.Type.BOOL_ARRAY, Parameter.Type.BYTE_ARRAY):
        return list(value)
    return value
