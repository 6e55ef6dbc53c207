"""Pareto fronts against hand-made points."""

import math

import pytest

from cl_platform.sweeps.pareto import best_index, dominates, pareto_front

MODES = ["max", "min"]  # accuracy up, generation drop down

POINTS = [
    (0.90, 0.30),  # 0 best accuracy                     -> front
    (0.80, 0.10),  # 1 trade-off                          -> front
    (0.70, 0.05),  # 2 least drop                         -> front
    (0.80, 0.20),  # 3 dominated by 1
    (0.60, 0.30),  # 4 dominated by 0, 1, 2, 3
    (0.70, 0.05),  # 5 equal to 2: kept (no strict improvement)
    (math.nan, 0.0),  # 6 invalid: never on the front, never dominates
    (0.75, None),  # 7 missing value
    (0.85, 0.30),  # 8 dominated by 0 (same drop, lower accuracy)
]


def test_front_of_hand_made_points():
    assert pareto_front(POINTS, MODES) == [0, 1, 2, 5]


def test_dominates():
    assert dominates((0.8, 0.1), (0.8, 0.2), MODES)
    assert not dominates((0.8, 0.2), (0.8, 0.2), MODES)  # equal: no strict improvement
    assert not dominates((0.9, 0.3), (0.8, 0.1), MODES)  # a trade-off
    assert not dominates((math.nan, 0.0), (0.1, 0.9), MODES)
    assert dominates((1.0, 2.0), (0.5, 1.0), ["max", "max"])


def test_single_objective_and_edge_cases():
    assert pareto_front([(0.3,), (0.9,), (0.9,), (0.1,)], ["max"]) == [1, 2]
    assert pareto_front([(0.3,), (0.9,)], ["min"]) == [0]
    assert pareto_front([], MODES) == []
    assert best_index([0.2, None, 0.7, 0.7], "max") == 2 and best_index([0.2, 0.1], "min") == 1
    assert best_index([None, math.nan], "max") is None
    with pytest.raises(ValueError, match="point 1 has 1 values, expected 2"):
        pareto_front([(1, 2), (1,)], MODES)
    with pytest.raises(ValueError, match="'up'"):
        pareto_front([(1, 2)], ["max", "up"])
