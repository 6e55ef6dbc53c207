"""Continual-learning metrics as pure functions of the accuracy matrix and the generation scores.

Inputs:

- ``R``, the **accuracy matrix**, ``T x T``: ``R[i][j]`` is the answer accuracy on task ``j``
  after training round ``i`` (rounds and tasks both in training order, so round ``i`` trained
  task ``i``). Every entry is filled: every task is evaluated after every round, seen or not.
- ``G``, the **generation scores**, ``T + 1`` values: ``G[0]`` is the base model's score before
  any round, ``G[i + 1]`` the score after round ``i``.
- ``b``, the **base accuracy**, ``T`` values: ``b[j]`` is the base model's (zero-shot) accuracy
  on task ``j`` before any round.
- ``Rk``, the **ranking matrix**, ``T x T`` like ``R`` but of candidate-ranking accuracy
  (:mod:`cl_platform.eval.ranking`); a task without a closed answer set has ``None`` in every
  row of its column. :func:`ranking_summary` computes avg accuracy, forgetting and BWT over the
  tasks that have one (the ``tasks`` argument of :func:`avg_accuracy`, :func:`avg_forgetting`
  and :func:`bwt`), and ``None`` for each when no task has one.

Accuracies and scores are fractions in ``[0, 1]`` in this project, but nothing here depends on
the scale: every metric is in the units of its input. With ``T = 1`` there is no earlier task to
forget and no later task to transfer to, so forgetting, BWT and FWT are ``0.0`` (a defined value
keeps ``results.json`` free of NaN).

Every function takes array-likes (nested lists or numpy arrays), checks shapes and finiteness,
raises ``ValueError`` naming the input on bad data, and returns Python floats (or a list of
floats), so the results serialise to JSON as they are.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

#: The scalar metrics :func:`summarize` computes, in report order.
METRIC_NAMES: tuple[str, ...] = ("avg_accuracy", "avg_forgetting", "bwt", "fwt", "generation_drop")
#: The scalar metrics :func:`ranking_summary` computes from the ranking matrix, in report order.
RANKING_METRIC_NAMES: tuple[str, ...] = ("ranking_avg_accuracy", "ranking_forgetting", "ranking_bwt")


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


def check_accuracy_matrix(R: ArrayLike, tasks: Sequence[int] | None = None) -> np.ndarray:
    """``R`` as a float ``T x T`` array (``T >= 1``, all finite); ``ValueError`` otherwise.

    With ``tasks`` (column indices) only those columns must be finite (the others may hold
    ``None``, read as NaN).
    """
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
    if tasks is None:
        _finite(arr, what)
        return arr
    chosen = list(tasks)
    bad = [j for j in chosen if isinstance(j, (bool, np.bool_)) or not isinstance(j, (int, np.integer)) or not 0 <= j < cols]
    if bad or len(set(chosen)) != len(chosen):
        raise ValueError(f"tasks: {chosen} must be distinct task indices in 0..{cols - 1}")
    for j in chosen:
        _finite(arr[:, j], f"{what} column {j}")
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


def _columns(arr: np.ndarray, tasks: Sequence[int] | None) -> list[int]:
    return list(range(arr.shape[1])) if tasks is None else [int(j) for j in tasks]


def avg_accuracy(R: ArrayLike, tasks: Sequence[int] | None = None) -> float:
    """Final average accuracy: ``mean_j R[T-1][j]``, the mean of the last row.

    ``tasks``: the columns averaged (``None``: all; at least one).
    """
    arr = check_accuracy_matrix(R, tasks)
    cols = _columns(arr, tasks)
    if not cols:
        raise ValueError("tasks: empty; average accuracy needs at least one task")
    return float(arr[-1, cols].mean())


def plasticity(R: ArrayLike) -> float:
    """Mean accuracy on each task right after training it: ``mean_i R[i][i]`` (the diagonal)."""
    arr = check_accuracy_matrix(R)
    return float(np.diag(arr).mean())


def earlier_accuracy(R: ArrayLike) -> float | None:
    """What is kept of the tasks before the last: ``mean_{j < T-1} R[T-1][j]`` (``None`` for one task).

    Near 0 when forgetting is total, whatever the methods learned."""
    arr = check_accuracy_matrix(R)
    return float(arr[-1, :-1].mean()) if arr.shape[0] > 1 else None


def avg_forgetting(R: ArrayLike, tasks: Sequence[int] | None = None) -> float:
    """Average forgetting (Chaudhry et al. 2018, "Riemannian Walk"), over the tasks before the last.

    ``F = 1/(T-1) * sum_{j=0}^{T-2} ( max_{i in [j, T-2]} R[i][j]  -  R[T-1][j] )``

    For each earlier task ``j``: the best accuracy it reached from the round that trained it
    (``i = j``) up to the round before the last, minus its final accuracy. Rounds before task
    ``j`` was trained are not counted (their accuracy is zero-shot, not something learned and then
    lost). Not clipped at zero: a task that ends above its best earlier value contributes a
    negative amount. ``0.0`` for ``T = 1``.

    ``tasks``: the columns ``j`` averaged over (``None``: all); ``0.0`` when none of them comes
    before the last round.
    """
    arr = check_accuracy_matrix(R, tasks)
    T = arr.shape[0]
    earlier = [j for j in _columns(arr, tasks) if j < T - 1]
    if not earlier:
        return 0.0
    per_task = [arr[j : T - 1, j].max() - arr[T - 1, j] for j in earlier]
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


def bwt(R: ArrayLike, tasks: Sequence[int] | None = None) -> float:
    """Backward transfer (Lopez-Paz and Ranzato 2017, GEM).

    ``BWT = 1/(T-1) * sum_{j=0}^{T-2} ( R[T-1][j] - R[j][j] )``

    Final accuracy on each earlier task minus its accuracy right after the round that trained it;
    negative means forgetting. ``0.0`` for ``T = 1``.

    ``tasks``: the columns ``j`` averaged over (``None``: all); ``0.0`` when none of them comes
    before the last round.
    """
    arr = check_accuracy_matrix(R, tasks)
    T = arr.shape[0]
    idx = np.array([j for j in _columns(arr, tasks) if j < T - 1], dtype=np.int64)
    if idx.size == 0:
        return 0.0
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


def closed_tasks(Rk: ArrayLike) -> list[int]:
    """The columns of a ranking matrix that hold numbers (tasks with a closed answer set).

    A column is either all ``None`` (the task has no closed set) or all finite numbers;
    ``ValueError`` naming the column otherwise, or when ``Rk`` is not ``T x T``.
    """
    what = "ranking matrix Rk"
    arr = _as_float_array(Rk, what)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{what}: expected a T x T matrix (T >= 1), got shape {arr.shape}")
    missing = np.isnan(arr)
    closed = []
    for j in range(arr.shape[1]):
        if missing[:, j].all():
            continue
        if missing[:, j].any():
            raise ValueError(f"{what}: column {j} mixes None and numbers; a task has a closed answer set in every "
                             "round or in none")
        _finite(arr[:, j], f"{what} column {j}")
        closed.append(j)
    return closed


def ranking_summary(Rk: ArrayLike) -> dict[str, float | None]:
    """``ranking_avg_accuracy``, ``ranking_forgetting`` and ``ranking_bwt``: :func:`avg_accuracy`,
    :func:`avg_forgetting` and :func:`bwt` of the ranking matrix over :func:`closed_tasks`; all
    ``None`` when no task has a closed answer set."""
    tasks = closed_tasks(Rk)
    if not tasks:
        return dict.fromkeys(RANKING_METRIC_NAMES)
    arr = _as_float_array(Rk, "ranking matrix Rk")
    return {"ranking_avg_accuracy": avg_accuracy(arr, tasks), "ranking_forgetting": avg_forgetting(arr, tasks),
            "ranking_bwt": bwt(arr, tasks)}


__all__ = [
    "METRIC_NAMES",
    "RANKING_METRIC_NAMES",
    "avg_accuracy",
    "avg_forgetting",
    "bwt",
    "check_accuracy_matrix",
    "check_vector",
    "closed_tasks",
    "fwt",
    "generation_drop",
    "ranking_summary",
    "lower_triangular_forgetting",
    "summarize",
]
