"""Strict JSON for results files and ``--json``: JSON has no NaN / inf."""
from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> Any:
    """Not-available numbers (NaN, inf) become null, in nested dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
