"""Continual-learning metrics as pure functions of the accuracy matrix and the generation scores.

Inputs:

- ``R``, the **accuracy matrix**, ``T x T``: ``R[i][j]`` is the answer accuracy on task ``j``
  after training round ``i`` (rounds and tasks both in training order, so round ``i`` trained
  task ``i``). Every entry is filled: every task is evaluated after every round, seen or not.
- ``G``, the **generation scores**, ``T + 1`` values: ``G[0]`` is the base model's score before
  any round, ``G[i + 1]`` the score after round ``i``.
- ``b``, the **base accuracy**, ``T`` values: ``b[j]`` is the base model's (zero-shot) accuracy
  on task ``j`` before any round.

Accuracies and scores are fractions in ``[0, 1]`` in this project, but nothing here depends on
the scale: every metric is in the units of its input. With ``T = 1`` there is no earlier task to
forget and no later task to transfer to, so forgetting, BWT and FWT are ``0.0`` (a defined value
keeps ``results.json`` free of NaN).

Every function takes array-likes (nested lists or numpy arrays), checks shapes and finiteness,
raises ``ValueError`` naming the input on bad data, and returns Python floats (or a list of
floats), so the results serialise to JSON as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

#: The scalar metrics :func:`summarize` computes, in report order.
METRIC_NAMES: tuple[str, ...] = ("avg_accuracy", "avg_forgetting", "bwt", "fwt", "generation_drop")


# ------------------------------------------------------------------------------------ checks


def _finite(values: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        where = tuple(int(k) for k in np.argwhere(bad)[0])
        index = where[0] if len(where) == 1 else list(where)
        raise ValueError(f"{what}: entry {index} is {float(values[where])}; every value must be a finite number")


def _as_float_array(x: ArrayLike, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: not a numeric array ({exc})") from None
    return arr


def check_accuracy_matrix(R: ArrayLike) -> np.ndarray:
    """``R`` as a float ``T x T`` array (``T >= 1``, all finite); ``ValueError`` otherwise."""
    what = "accuracy matrix R"
    arr = _as_float_array(R, what)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D T x T matrix, got {arr.ndim}-D with shape {arr.shape}")
    rows, cols = arr.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"{what}: empty (shape {arr.shape}); need at least one round and one task")
    if rows != cols:
        raise ValueError(
            f"{what}: not square, shape {arr.shape} ({rows} rounds x {cols} tasks); "
            "every round trains one task and evaluates every task, so R must be T x T"
        )
    _finite(arr, what)
    return arr


def check_vector(x: ArrayLike, length: int, what: str) -> np.ndarray:
    """``x`` as a float 1-D array of exactly ``length`` finite values; ``ValueError`` otherwise."""
    arr = _as_float_array(x, what)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D sequence of {length} values, got shape {arr.shape}")
    if arr.shape[0] != length:
        raise ValueError(f"{what}: expected {length} values, got {arr.shape[0]}")
    _finite(arr, what)
    return arr


def _check_generation_scores(G: ArrayLike, num_tasks: int | None = None) -> np.ndarray:
    what = "generation scores G"
    if num_tasks is not None:
        return check_vector(G, num_tasks + 1, f"{what} (base score first, then one per round: T + 1 = {num_tasks + 1})")
    arr = _as_float_array(G, what)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"{what}: expected a non-empty 1-D sequence (base score first, then one per round), got shape {arr.shape}")
    _finite(arr, what)
    return arr


# ------------------------------------------------------------------------------------ metrics


def avg_accuracy(R: ArrayLike) -> float:
    """Final average accuracy: ``mean_j R[T-1][j]``, the mean of the last row."""
    arr = check_accuracy_matrix(R)
    return float(arr[-1].mean())


def avg_forgetting(R: ArrayLike) -> float:
    """Average forgetting (Chaudhry et al. 2018, "Riemannian Walk"), over the tasks before the last.

    ``F = 1/(T-1) * sum_{j=0}^{T-2} ( max_{i in [j, T-2]} R[i][j]  -  R[T-1][j] )``

    For each earlier task ``j``: the best accuracy it reached from the round that trained it
    (``i = j``) up to the round before the last, minus its final accuracy. Rounds before task
    ``j`` was trained are not counted (their accuracy is zero-shot, not something learned and then
    lost). Not clipped at zero: a task that ends above its best earlier value contributes a
    negative amount. ``0.0`` for ``T = 1``.
    """
    arr = check_accuracy_matrix(R)
    T = arr.shape[0]
    if T == 1:
        return 0.0
    per_task = [arr[j : T - 1, j].max() - arr[T - 1, j] for j in range(T - 1)]
    return float(np.mean(per_task))


def lower_triangular_forgetting(rows: Any) -> float:
    """:func:`avg_forgetting` of a lower-triangular accuracy matrix given as ragged rows:
    ``rows[i]`` holds the ``i + 1`` accuracies on tasks ``0..i`` after round ``i`` (a lineage
    never evaluates a task before the round that trains it). The formula reads only those entries.
    ``ValueError`` naming the row when one has another length or a non-finite value.
    """
    what = "lower-triangular accuracy matrix"
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ValueError(f"{what}: expected a non-empty list of rows, got {rows!r}")
    T = len(rows)
    square = np.zeros((T, T), dtype=np.float64)
    for i, row in enumerate(rows):
        arr = _as_float_array(row, f"{what} row {i}")
        if arr.ndim != 1 or arr.shape[0] != i + 1:
            raise ValueError(f"{what}: row {i} must hold {i + 1} accuracies (tasks 0..{i}), got shape {arr.shape}")
        _finite(arr, f"{what} row {i}")
        square[i, : i + 1] = arr
    return avg_forgetting(square)


def bwt(R: ArrayLike) -> float:
    """Backward transfer (Lopez-Paz and Ranzato 2017, GEM).

    ``BWT = 1/(T-1) * sum_{j=0}^{T-2} ( R[T-1][j] - R[j][j] )``

    Final accuracy on each earlier task minus its accuracy right after the round that trained it;
    negative means forgetting. ``0.0`` for ``T = 1``.
    """
    arr = check_accuracy_matrix(R)
    T = arr.shape[0]
    if T == 1:
        return 0.0
    idx = np.arange(T - 1)
    return float(np.mean(arr[T - 1, idx] - arr[idx, idx]))


def fwt(R: ArrayLike, b: ArrayLike) -> float:
    """Forward transfer (Lopez-Paz and Ranzato 2017, GEM).

    ``FWT = 1/(T-1) * sum_{j=1}^{T-1} ( R[j-1][j] - b[j] )``

    For each task after the first: its accuracy after the round just before the one that trains
    it (i.e. having learned tasks ``0..j-1`` but not ``j``), minus the base model's accuracy on it
    before any round. ``b`` has one value per task (``T`` values, in task order); ``b[0]`` is
    checked but not used, as task 0 has no earlier round. Positive means the earlier tasks helped
    the later ones zero-shot. ``0.0`` for ``T = 1``.
    """
    arr = check_accuracy_matrix(R)
    T = arr.shape[0]
    base = check_vector(b, T, f"base accuracy b (the base model's accuracy on each of the T = {T} tasks)")
    if T == 1:
        return 0.0
    j = np.arange(1, T)
    return float(np.mean(arr[j - 1, j] - base[j]))


def generation_drop(G: ArrayLike) -> float:
    """Inter-modal forgetting: ``G[0] - G[-1]``, the base model's generation score minus the final one.

    Positive means image generation got worse over the sequence of (understanding) tasks.
    """
    arr = _check_generation_scores(G)
    return float(arr[0] - arr[-1])


def summarize(R: ArrayLike, G: ArrayLike, base_acc: ArrayLike) -> dict[str, Any]:
    """Every metric of one run of one method.

    Args:
        R: the ``T x T`` accuracy matrix.
        G: the ``T + 1`` generation scores (base first).
        base_acc: the base model's accuracy on each of the ``T`` tasks (for :func:`fwt`).

    Returns:
        ``{"avg_accuracy", "avg_forgetting", "bwt", "fwt", "generation_drop"}`` as floats, plus
        ``"generation_scores"``: ``G`` as a list of floats (the score after each round, base first).
    """
    arr = check_accuracy_matrix(R)
    T = arr.shape[0]
    scores = _check_generation_scores(G, T)
    return {
        "avg_accuracy": avg_accuracy(arr),
        "avg_forgetting": avg_forgetting(arr),
        "bwt": bwt(arr),
        "fwt": fwt(arr, base_acc),
        "generation_drop": generation_drop(scores),
        "generation_scores": [float(g) for g in scores],
    }


__all__ = [
    "METRIC_NAMES",
    "avg_accuracy",
    "avg_forgetting",
    "bwt",
    "check_accuracy_matrix",
    "check_vector",
    "fwt",
    "generation_drop",
    "lower_triangular_forgetting",
    "summarize",
]
