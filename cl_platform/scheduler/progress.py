"""What a lineage has learned and forgotten: its accuracy matrix (lower-triangular: row ``i`` holds
the accuracies on tasks ``0..i`` after round ``i``), its generation curve (the base model's score,
then the score after each round) and their summary, as pure functions of the learned rounds."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from cl_platform.eval.metrics import lower_triangular_forgetting
from cl_platform.scheduler.state import LearnedTask


def accuracy_rows(learned: Sequence[LearnedTask]) -> list[list[Optional[float]]]:
    """Row ``i``: the accuracies on tasks ``0..i`` after round ``i`` (``None`` where a round did not
    evaluate an earlier task)."""
    rows = []
    for i, t in enumerate(learned):
        earlier = t.metrics.get("earlier_accuracy") or {}
        rows.append([earlier.get(p.task) for p in learned[:i]] + [t.metrics.get("accuracy")])
    return rows


def generation_curve(learned: Sequence[LearnedTask]) -> list[Optional[float]]:
    """The base model's generation score, then the score after each round (empty before the first)."""
    if not learned:
        return []
    return [learned[0].metrics.get("base_generation_score")] + [t.metrics.get("generation_score") for t in learned]


def _complete(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _mean(values: Sequence[Any]) -> Optional[float]:
    return sum(values) / len(values) if values and _complete(values) else None


def _forgetting(rows: list[list[Optional[float]]]) -> Optional[float]:
    return lower_triangular_forgetting(rows) if rows and all(_complete(r) for r in rows) else None


def _delta(last: Optional[float], prev: Optional[float]) -> Optional[float]:
    return None if last is None or prev is None else last - prev


def lineage_summary(learned: Sequence[LearnedTask]) -> dict[str, Any]:
    """Everything ``status`` and the lineage report show about what the lineage knows.

    Keys: ``tasks`` (learned, in order), ``accuracy_matrix`` (:func:`accuracy_rows`),
    ``generation_curve`` (:func:`generation_curve`), ``current_accuracy`` (task -> accuracy after
    the last round), ``avg_accuracy`` (their mean), ``avg_forgetting`` (over the lower-triangular
    matrix), ``generation_drop`` (base minus the last score) and ``trend`` (the change of
    ``avg_accuracy``, ``avg_forgetting`` and ``generation_score`` from the previous round to the
    last; ``None`` before the second round). A value that cannot be computed (a round that did not
    evaluate earlier tasks, no generation probe) is ``None``.
    """
    rows = accuracy_rows(learned)
    curve = generation_curve(learned)
    tasks = [t.task for t in learned]
    last = rows[-1] if rows else []
    drop = _delta(curve[0], curve[-1]) if curve else None
    summary: dict[str, Any] = {
        "tasks": tasks,
        "accuracy_matrix": rows,
        "generation_curve": curve,
        "current_accuracy": dict(zip(tasks, last)),
        "avg_accuracy": _mean(last),
        "avg_forgetting": _forgetting(rows),
        "generation_drop": drop,
        "trend": None,
    }
    if len(rows) >= 2:
        summary["trend"] = {
            "avg_accuracy": _delta(summary["avg_accuracy"], _mean(rows[-2])),
            "avg_forgetting": _delta(summary["avg_forgetting"], _forgetting(rows[:-1])),
            "generation_score": _delta(curve[-1], curve[-2]),
        }
    return summary


def guard_crossings(summary: dict[str, Any], limits: dict[str, Optional[float]]) -> list[dict[str, Any]]:
    """The guard rails ``summary`` crosses: ``limits`` maps ``max_generation_drop`` /
    ``max_avg_forgetting`` to a limit (``None``: off); each crossing is ``{"guard", "value", "limit"}``.
    A value that cannot be computed crosses nothing."""
    out = []
    for guard, key in (("max_generation_drop", "generation_drop"), ("max_avg_forgetting", "avg_forgetting")):
        limit, value = limits.get(guard), summary.get(key)
        if limit is not None and value is not None and value > limit:
            out.append({"guard": guard, "value": value, "limit": limit})
    return out


__all__ = ["accuracy_rows", "generation_curve", "guard_crossings", "lineage_summary"]
