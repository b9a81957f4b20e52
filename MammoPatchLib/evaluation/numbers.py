"""How the report and the model card print a number (its own module, so that the model card,
which the report writes, need not import the report back)."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a report: fixed digits, "n/a" where undefined."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:.{digits}f}" if math.isfinite(number) else "n/a"
