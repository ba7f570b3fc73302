"""Strict JSON values from numpy-laden results: one helper for the protocol, the history, bundles and reports.

Browsers' ``JSON.parse`` (and any strict parser) rejects ``NaN``; a metric that
is undefined (a CCC of a constant, an empty day) must travel as ``null``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


def to_jsonable(obj: Any, digits: int | None = None) -> Any:
    """Numpy scalars and arrays to Python values, NaN/inf to None, floats rounded to ``digits`` when given."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), digits)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not math.isfinite(value):
            return None
        return value if digits is None else round(value, digits)
    if isinstance(obj, np.generic):  # numpy ints, bools, strings
        return obj.item()
    return obj
