"""Pareto fronts of trial results, as pure functions of the points.

A point is a sequence of objective values; ``modes`` says per objective whether larger
(``"max"``) or smaller (``"min"``) is better. Point ``a`` dominates ``b`` when it is at least as
good in every objective and strictly better in one. The front is every point no other point
dominates; points with a missing (``None``) or NaN value are never on it and never dominate.
Equal points are all kept (none dominates the other).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

Point = Sequence[Optional[float]]


def _valid(p: Point) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and not math.isnan(v) for v in p)


def _check(points: Sequence[Point], modes: Sequence[str]) -> None:
    if not modes:
        raise ValueError("modes is empty: give one 'max' or 'min' per objective")
    bad = [m for m in modes if m not in ("max", "min")]
    if bad:
        raise ValueError(f"modes must be 'max' or 'min', got {bad[0]!r}")
    for i, p in enumerate(points):
        if len(p) != len(modes):
            raise ValueError(f"point {i} has {len(p)} values, expected {len(modes)} (one per mode)")


def dominates(a: Point, b: Point, modes: Sequence[str]) -> bool:
    """True if ``a`` is at least as good as ``b`` in every objective and better in at least one."""
    _check([a, b], modes)
    if not _valid(a) or not _valid(b):
        return False
    better = False
    for x, y, m in zip(a, b, modes):
        if m == "min":
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better = True
    return better


def pareto_front(points: Sequence[Point], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order.

    >>> pareto_front([(0.9, 0.2), (0.8, 0.1), (0.7, 0.3)], ["max", "min"])
    [0, 1]
    """
    _check(points, modes)
    valid = [i for i, p in enumerate(points) if _valid(p)]
    return [i for i in valid if not any(dominates(points[j], points[i], modes) for j in valid if j != i)]


def best_index(values: Sequence[Optional[float]], mode: str) -> Optional[int]:
    """Index of the best valid value (first one on ties), or ``None`` when none is valid."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    valid = [(v if mode == "max" else -v, -i) for i, v in enumerate(values) if _valid([v])]
    return -max(valid)[1] if valid else None
