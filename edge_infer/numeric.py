"""Numerics shared by the packages that must run on NumPy 1.24+ as well as 2.x.

JetPack 6 ships NumPy 1.x, where ``np.trapezoid`` does not exist yet; NumPy 2.4 removed the
old ``np.trapz``. The trapezoid rule is one line, so it is written here once for both.
"""

from __future__ import annotations

import numpy as np


def trapezoid(y, x) -> float:
    """Area under the piecewise-linear curve through (x, y), as ``np.trapezoid(y, x)``."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    if y.size < 2:
        return 0.0
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)
