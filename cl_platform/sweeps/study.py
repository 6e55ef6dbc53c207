"""Studies over task orders and seeds, as pure functions: the orders, the run names, and the aggregation.

A study runs one sequence per (order, seed) cell, every method of the cell in that one run (as
``cl-sequence --methods`` does), and summarises the runs' ``results.json`` documents:

- ``study.json`` (:func:`study_document`): the orders and seeds, every run with its status and its
  per-method metrics, the mean and standard deviation over all finished runs of every numeric
  per-method metric (``overall``), and the same over the seeds of each order (``per_order``);
- the standard deviation is the sample one (``ddof`` = :data:`STD_DDOF` = 1); with a single value it
  is ``None`` (no spread measured);
- a metric a run does not carry (absent, or ``None``) is aggregated over the runs that carry it,
  ``n`` saying how many; a run that failed or has no ``results.json`` is named in ``failed`` and
  left out of every aggregate;
- from the method's accuracy matrix, ``plasticity`` (mean accuracy on each task right after
  training it) and ``earlier_accuracy`` (final mean accuracy on the tasks before the last;
  :mod:`cl_platform.eval.metrics`) enter beside the run's own metrics;
- the gradient-conflict diagnostic of a method's rounds enters as ``gradient_<stat>`` per
  :data:`GRADIENT_STATS` (:func:`gradient_summary`);
- ``claims``: the paper's claims about MoDE checked run by run (:mod:`cl_platform.sweeps.claims`).
"""

from __future__ import annotations

import itertools
import math
import random
import re
import statistics
from typing import Any, Iterable, Mapping, Optional, Sequence

#: Version of the ``study.json`` layout.
SCHEMA_VERSION = 1
#: Delta degrees of freedom of the reported standard deviations (sample standard deviation).
STD_DDOF = 1
#: Run states of a study's cells.
DONE, FAILED = "done", "failed"
#: Names of studies (and so of their runs' prefix): the store's name rule, leaving room for ``-o<k>-s<seed>``.
STUDY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
#: Overall gradient-conflict statistics (:mod:`cl_platform.train.gradients`) a study averages over a run's rounds.
GRADIENT_STATS = ("cosine", "task_share", "generation_share")
#: Above this many tasks, other orders are drawn at random instead of from the list of all permutations.
_ENUMERATE_UP_TO = 7


def check_study_name(name: str) -> str:
    """``name`` if it is a valid study name, else ``ValueError`` saying the rule."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        raise ValueError(f"study name {name!r}: use 1-48 characters of a-z, 0-9, '-' and '_', starting with a "
                         "letter or digit")
    return name


def study_run_name(study: str, order_index: int, seed: int) -> str:
    """The run of one cell: ``<study>-o<order index>-s<seed>``."""
    return f"{study}-o{order_index}-s{seed}"


def study_orders(base: Sequence[str], n: int, seed: int) -> list[list[str]]:
    """``n`` task orders: ``base`` first, then seeded permutations of it, all distinct while
    distinct ones remain (at most ``len(base)!``), then repeats drawn at random.

    >>> study_orders(["a", "b"], 3, 0)[:2]
    [['a', 'b'], ['b', 'a']]
    """
    base = list(base)
    if n < 1:
        raise ValueError(f"orders: need at least 1 order, got {n}")
    if not base:
        raise ValueError("orders: the base order has no tasks")
    if len(set(base)) != len(base):
        raise ValueError(f"orders: the base order {base} names a task twice")
    rng = random.Random(seed)
    orders = [base]
    if len(base) <= _ENUMERATE_UP_TO:
        others = [list(p) for p in itertools.permutations(base) if list(p) != base]
        rng.shuffle(others)
        orders += others[: n - 1]
    else:  # T! is large: random permutations, a repeat (vanishingly rare) drawn again
        seen = {tuple(base)}
        while len(orders) < n:
            p = rng.sample(base, len(base))
            if tuple(p) not in seen:
                seen.add(tuple(p))
                orders.append(p)
    while len(orders) < n:  # fewer distinct permutations than orders asked for
        orders.append(rng.sample(base, len(base)))
    return orders


def study_seeds(first: int, n: int) -> list[int]:
    """``n`` consecutive seeds from ``first``."""
    if n < 1:
        raise ValueError(f"seeds: need at least 1 seed, got {n}")
    return [first + i for i in range(n)]


def study_cells(study: str, orders: Sequence[Sequence[str]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every (order, seed) cell, order-major: ``{"run", "order_index", "seed", "order"}``."""
    return [{"run": study_run_name(study, k, s), "order_index": k, "seed": s, "order": list(o)}
            for k, o in enumerate(orders) for s in seeds]


# ------------------------------------------------------------------------------ aggregation


def _numeric(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def matrix_summary(entry: Mapping[str, Any]) -> dict[str, float]:
    """``plasticity`` and ``earlier_accuracy`` of the entry's ``accuracy_matrix`` (nothing when the
    entry has none, or it is not a finite square matrix; ``earlier_accuracy`` not for one task)."""
    from cl_platform.eval.metrics import earlier_accuracy, plasticity

    try:
        found = {"plasticity": plasticity(entry["accuracy_matrix"]),
                 "earlier_accuracy": earlier_accuracy(entry["accuracy_matrix"])}
    except (KeyError, ValueError):
        return {}
    return {k: v for k, v in found.items() if v is not None}


def gradient_summary(entry: Mapping[str, Any]) -> dict[str, float]:
    """``gradient_<stat>``: the mean over the method's rounds that hold the gradient-conflict
    diagnostic (``rounds[i].gradient_conflict.overall``) of each of :data:`GRADIENT_STATS`, over the
    rounds where it is a number (a zero gradient gives ``None``); a stat with no number is left out."""
    overall = [r["gradient_conflict"]["overall"] for r in entry.get("rounds") or []
               if isinstance(r, Mapping) and isinstance(r.get("gradient_conflict"), Mapping)
               and isinstance(r["gradient_conflict"].get("overall"), Mapping)]
    out = {}
    for stat in GRADIENT_STATS:
        vals = [float(o[stat]) for o in overall if _numeric(o.get(stat))]
        if vals:
            out[f"gradient_{stat}"] = statistics.fmean(vals)
    return out


def method_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """The numeric per-method metrics of one ``results.json`` method entry.

    Every number in ``entry["metrics"]``, then every number in any other mapping of the entry whose
    key ends in ``metrics`` (e.g. ``ranking_metrics``), prefixed by that key's stem when the name is
    already taken, then :func:`matrix_summary` and :func:`gradient_summary`. ``None`` values and
    non-numbers are left out.
    """
    out: dict[str, float] = {}
    sources = [("", entry.get("metrics") or {})]
    sources += [(k[: -len("metrics")].rstrip("_"), v) for k, v in entry.items()
                if k != "metrics" and k.endswith("metrics") and isinstance(v, Mapping)]
    for stem, block in sources:
        for name, value in block.items():
            if _numeric(value):
                key = name if name not in out else f"{stem}_{name}"
                out[key] = float(value)
    return {**out, **matrix_summary(entry), **gradient_summary(entry)}


def run_metrics(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Method -> metrics of one run's ``results.json``."""
    return {m: method_metrics(e) for m, e in results["methods"].items()}


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of ``values``; ``std`` with ``ddof`` 1, ``None`` for a single value.

    >>> mean_std([1.0, 2.0, 3.0])
    {'mean': 2.0, 'std': 1.0, 'n': 3}
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std needs at least one value")
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > STD_DDOF else None,
            "n": len(vals)}


def _ordered_union(keys: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for ks in keys:
        for k in ks:
            seen.setdefault(k, None)
    return list(seen)


def aggregate_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Method -> metric -> :func:`mean_std` over the finished runs (``status`` done) that carry it."""
    done = [r for r in runs if r.get("status") == DONE]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in _ordered_union(r["metrics"].keys() for r in done):
        per = [r["metrics"][method] for r in done if method in r["metrics"]]
        out[method] = {name: mean_std([p[name] for p in per if name in p])
                       for name in _ordered_union(p.keys() for p in per)}
    return out


def study_document(name: str, *, methods: Sequence[str], orders: Sequence[Sequence[str]], seeds: Sequence[int],
                   runs: Sequence[Mapping[str, Any]], settings: Optional[Mapping[str, Any]] = None,
                   order_seed: int = 0) -> dict[str, Any]:
    """The ``study.json`` object of a study.

    ``runs``: one per cell, ``{"run", "order_index", "seed", "order", "status"}`` plus ``metrics``
    (method -> metric -> value, :func:`run_metrics`) when done or ``error`` when failed.
    """
    for r in runs:
        if r.get("status") not in (DONE, FAILED):
            raise ValueError(f"run {r.get('run')!r}: status {r.get('status')!r} is not {DONE!r} or {FAILED!r}")
        if r["status"] == DONE and not isinstance(r.get("metrics"), Mapping):
            raise ValueError(f"run {r['run']!r}: done but no metrics")
    from cl_platform.sweeps.claims import paper_claims  # claims builds on this module's mean_std

    per_order = [{"order_index": k, "order": list(o),
                  "runs": [r["run"] for r in runs if r["order_index"] == k and r["status"] == DONE],
                  "methods": aggregate_runs([r for r in runs if r["order_index"] == k])}
                 for k, o in enumerate(orders)]
    return {
        "schema_version": SCHEMA_VERSION,
        "study": name,
        "methods": list(methods),
        "orders": [list(o) for o in orders],
        "order_seed": order_seed,
        "seeds": list(seeds),
        "std_ddof": STD_DDOF,
        "settings": dict(settings or {}),
        "runs": [dict(r) for r in runs],
        "failed": [{"run": r["run"], "error": r.get("error") or "no results.json"} for r in runs if r["status"] == FAILED],
        "overall": aggregate_runs(runs),
        "per_order": per_order,
        "claims": paper_claims(methods, runs),
    }
