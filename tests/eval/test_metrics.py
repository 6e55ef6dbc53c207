"""Continual-learning metrics against hand-computed matrices, edge cases and input checks."""

import math

import numpy as np
import pytest

from cl_platform.eval.metrics import (
    METRIC_NAMES,
    RANKING_METRIC_NAMES,
    avg_accuracy,
    avg_forgetting,
    bwt,
    closed_tasks,
    earlier_accuracy,
    fwt,
    generation_drop,
    plasticity,
    ranking_summary,
    summarize,
)

# A 3-task run, worked by hand. Rows: after round 0, 1, 2; columns: task 0, 1, 2.
R3 = [
    [0.90, 0.10, 0.20],
    [0.95, 0.80, 0.30],
    [0.60, 0.50, 0.95],
]
B3 = [0.10, 0.20, 0.10]   # base model's accuracy on each task
G3 = [0.80, 0.70, 0.60, 0.50]
# avg accuracy  = (0.60 + 0.50 + 0.95) / 3                    = 2.05 / 3 = 0.683333...
# forgetting    task 0: max(R[0][0], R[1][0]) - R[2][0] = 0.95 - 0.60 = 0.35
#               task 1: max(R[1][1])          - R[2][1] = 0.80 - 0.50 = 0.30
#               mean                                             = 0.325
# BWT           task 0: R[2][0] - R[0][0] = 0.60 - 0.90 = -0.30
#               task 1: R[2][1] - R[1][1] = 0.50 - 0.80 = -0.30
#               mean                                             = -0.30
#   (forgetting uses the best value, 0.95 after round 1; BWT the value right after training, 0.90)
# FWT           task 1: R[0][1] - b[1] = 0.10 - 0.20 = -0.10
#               task 2: R[1][2] - b[2] = 0.30 - 0.10 =  0.20
#               mean                                             = 0.05
# generation drop = G[0] - G[3] = 0.80 - 0.50                    = 0.30
HAND_3X3 = {
    "avg_accuracy": 2.05 / 3,
    "avg_forgetting": 0.325,
    "bwt": -0.30,
    "fwt": 0.05,
    "generation_drop": 0.30,
}


def test_plasticity_and_what_is_kept_of_earlier_tasks_by_hand():
    assert plasticity(R3) == pytest.approx((0.90 + 0.80 + 0.95) / 3, abs=1e-12)
    assert earlier_accuracy(R3) == pytest.approx((0.60 + 0.50) / 2, abs=1e-12)
    assert earlier_accuracy([[0.7]]) is None and plasticity([[0.7]]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="not square"):
        plasticity([[0.1, 0.2]])


def test_hand_computed_3x3():
    got = summarize(R3, G3, B3)
    for name, want in HAND_3X3.items():
        assert got[name] == pytest.approx(want, abs=1e-12), name
    assert got["generation_scores"] == G3
    assert set(got) == set(METRIC_NAMES) | {"generation_scores"}
    assert avg_accuracy(R3) == pytest.approx(HAND_3X3["avg_accuracy"])
    assert avg_forgetting(R3) == pytest.approx(HAND_3X3["avg_forgetting"])
    assert bwt(R3) == pytest.approx(HAND_3X3["bwt"])
    assert fwt(R3, B3) == pytest.approx(HAND_3X3["fwt"])
    assert generation_drop(G3) == pytest.approx(HAND_3X3["generation_drop"])


@pytest.mark.parametrize(
    "R, b, want",
    [
        # 2x2: forgetting = R[0][0] - R[1][0]; BWT its negative; FWT = R[0][1] - b[1].
        ([[0.8, 0.3], [0.5, 0.9]], [0.0, 0.1], {"avg_accuracy": 0.7, "avg_forgetting": 0.3, "bwt": -0.3, "fwt": 0.2}),
        # No forgetting at all, no transfer.
        ([[1.0, 0.0], [1.0, 1.0]], [0.0, 0.0], {"avg_accuracy": 1.0, "avg_forgetting": 0.0, "bwt": 0.0, "fwt": 0.0}),
        # Task 0 improves later: negative forgetting (not clipped), positive BWT.
        ([[0.4, 0.2], [0.7, 0.6]], [0.0, 0.3], {"avg_accuracy": 0.65, "avg_forgetting": -0.3, "bwt": 0.3, "fwt": -0.1}),
        # Task 1's zero-shot 0.9 before it was trained is not counted as a peak to forget from:
        # task 0: max(0.5, 0.5) - 0.5 = 0; task 1: max(R[1][1]) - R[2][1] = 0.5 - 0.5 = 0.
        (
            [[0.5, 0.9, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.5]],
            [0.0, 0.0, 0.0],
            {"avg_accuracy": 0.5, "avg_forgetting": 0.0, "bwt": 0.0, "fwt": 0.45},
        ),
        # T = 1: nothing to forget or transfer.
        ([[0.7]], [0.2], {"avg_accuracy": 0.7, "avg_forgetting": 0.0, "bwt": 0.0, "fwt": 0.0}),
    ],
)
def test_small_matrices(R, b, want):
    assert avg_accuracy(R) == pytest.approx(want["avg_accuracy"])
    assert avg_forgetting(R) == pytest.approx(want["avg_forgetting"])
    assert bwt(R) == pytest.approx(want["bwt"])
    assert fwt(R, b) == pytest.approx(want["fwt"])


def _loop_reference(R, b, G):
    """The published formulas, written as plain loops."""
    T = len(R)
    out = {"avg_accuracy": sum(R[T - 1]) / T, "generation_drop": G[0] - G[-1]}
    if T == 1:
        out.update(avg_forgetting=0.0, bwt=0.0, fwt=0.0)
        return out
    out["avg_forgetting"] = sum(max(R[i][j] for i in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)
    out["bwt"] = sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)
    out["fwt"] = sum(R[j - 1][j] - b[j] for j in range(1, T)) / (T - 1)
    return out


@pytest.mark.parametrize("T", [1, 2, 4, 7])
def test_matches_loop_reference_on_random_matrices(T):
    rng = np.random.default_rng(T)
    R = rng.uniform(0, 1, (T, T))
    b = rng.uniform(0, 1, T)
    G = rng.uniform(0, 1, T + 1)
    want = _loop_reference(R.tolist(), b.tolist(), G.tolist())
    got = summarize(R, G, b)
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(want[name], abs=1e-12), name


def test_returns_python_floats_for_lists_and_arrays():
    for R, G, b in [(R3, G3, B3), (np.array(R3), np.array(G3), np.array(B3, dtype=np.float32))]:
        got = summarize(R, G, b)
        for name in METRIC_NAMES:
            assert type(got[name]) is float, name
        assert all(type(g) is float for g in got["generation_scores"])
    assert summarize(np.array(R3), G3, B3)["bwt"] == pytest.approx(summarize(R3, G3, B3)["bwt"])


def test_generation_drop_sign_and_single_value():
    assert generation_drop([0.5, 0.9]) == pytest.approx(-0.4)  # generation improved
    assert generation_drop([0.6]) == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: avg_accuracy([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]), r"not square, shape \(2, 3\)"),
        (lambda: avg_forgetting([0.1, 0.2]), "expected a 2-D"),
        (lambda: bwt(np.zeros((2, 2, 2))), "expected a 2-D"),
        (lambda: avg_accuracy([]), "expected a 2-D"),
        (lambda: avg_accuracy(np.zeros((0, 0))), "empty"),
        (lambda: avg_accuracy([[0.1, float("nan")], [0.2, 0.3]]), r"accuracy matrix R: entry \[0, 1\] is nan"),
        (lambda: bwt([[0.1, 0.2], [float("inf"), 0.3]]), r"entry \[1, 0\] is inf"),
        (lambda: avg_accuracy([[0.1, 0.2], [0.3]]), "accuracy matrix R: not a numeric array"),
        (lambda: avg_accuracy([["a", "b"], ["c", "d"]]), "accuracy matrix R: not a numeric array"),
        (lambda: fwt(R3, [0.1, 0.2]), r"base accuracy b .*expected 3 values, got 2"),
        (lambda: fwt(R3, [0.1, float("nan"), 0.2]), "base accuracy b .*entry 1 is nan"),
        (lambda: summarize(R3, G3[:-1], B3), r"generation scores G .*expected 4 values, got 3"),
        (lambda: summarize(R3, G3 + [0.1], B3), r"generation scores G .*expected 4 values, got 5"),
        (lambda: summarize(R3, [0.8, math.nan, 0.6, 0.5], B3), "generation scores G.*entry 1 is nan"),
        (lambda: summarize(R3, G3, B3[:2]), "base accuracy b"),
        (lambda: generation_drop([]), "generation scores G: expected a non-empty"),
        (lambda: generation_drop([[0.1, 0.2]]), "generation scores G: expected a non-empty 1-D"),
    ],
)
def test_validation_errors_name_the_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# The ranking matrix of the same 3-task run when task 1 has no closed answer set (None column).
RK3 = [
    [0.90, None, 0.50],
    [0.70, None, 0.60],
    [0.80, None, 0.95],
]
# over tasks 0 and 2 only:
# avg accuracy  = (0.80 + 0.95) / 2                          = 0.875
# forgetting    task 0: max(0.90, 0.70) - 0.80 = 0.10 (task 2 is the last: not counted)
# BWT           task 0: 0.80 - 0.90            = -0.10


def test_ranking_summary_by_hand_over_the_closed_tasks():
    assert closed_tasks(RK3) == [0, 2]
    got = ranking_summary(RK3)
    assert list(got) == list(RANKING_METRIC_NAMES)
    assert got["ranking_avg_accuracy"] == pytest.approx(0.875)
    assert got["ranking_forgetting"] == pytest.approx(0.10)
    assert got["ranking_bwt"] == pytest.approx(-0.10)
    # the same functions with every column give the plain metrics
    assert avg_accuracy(R3, tasks=[0, 1, 2]) == pytest.approx(HAND_3X3["avg_accuracy"])
    assert avg_forgetting(R3, tasks=[1]) == pytest.approx(0.30) and bwt(R3, tasks=[1]) == pytest.approx(-0.30)
    assert avg_forgetting(R3, tasks=[2]) == 0.0 == bwt(R3, tasks=[2])  # only the last task: nothing to forget


def test_ranking_summary_without_any_closed_set_is_none():
    assert ranking_summary([[None, None], [None, None]]) == dict.fromkeys(RANKING_METRIC_NAMES)


@pytest.mark.parametrize("Rk, message", [
    ([[0.5, None], [None, None]], "column 0 mixes None and numbers"),
    ([[0.5, 0.1]], "expected a T x T matrix"),
    ([[0.5, None], [float("nan"), None]], "column 0 mixes None and numbers"),
])
def test_ranking_matrix_errors_name_the_column(Rk, message):
    with pytest.raises(ValueError, match=message):
        ranking_summary(Rk)


def test_tasks_argument_is_checked():
    with pytest.raises(ValueError, match="distinct task indices in 0..2"):
        avg_accuracy(R3, tasks=[3])
    with pytest.raises(ValueError, match="distinct task indices"):
        bwt(R3, tasks=[0, 0])
    with pytest.raises(ValueError, match="column 1: entry 0 is nan"):
        avg_accuracy(RK3, tasks=[0, 1])
