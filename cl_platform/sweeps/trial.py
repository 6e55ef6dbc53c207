"""One sweep trial: a whole continual-learning sequence per task order, reporting after every round.

The Tune function :func:`sweep_trial` builds a :class:`~cl_platform.train.config.SequenceConfig`
from the sweep's :class:`TrialPlan` and the trial's sampled hyperparameters, opens (or, for a
restarted trial, resumes) a normal run under ``<store>/runs/<sweep>-<trial id>[-o<k>]/`` and calls
:func:`cl_platform.train.sequence.fit_method`: one ``TorchTrainer.fit`` per order whose loop walks
all rounds (Tune over Ray Train V2: the Tune function builds and fits the trainer).

Reports: a trial reports once per round, so Tune's ``training_iteration`` is the round number
(1-based) and ASHA stops trials on rounds. With several orders per trial the orders run one after
another; the earlier orders' per-round metrics are handed to the last order's
:class:`RoundReportCallback`, which reports, at each of its rounds, the mean over orders and the
standard deviation (``<metric>_std``) plus each order's value (``<metric>_o<k>``).

Restarted trials (``--resume`` after an interruption, or a Tune retry) continue their runs from
the ledger: rounds already done are not trained again, only re-reported to Tune.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from ray.tune.integration.ray_train import TuneReportCallback

from cl_platform.sweeps.space import sweep_params

#: Metrics aggregated over orders (mean, ``_std``, per-order ``_o<k>``).
AGGREGATED = ("avg_accuracy", "generation_score", "generation_drop")


@dataclass
class TrialPlan:
    """Everything a trial needs besides its sampled hyperparameters (plain data, sent once to Ray).

    Attributes:
        sweep: sweep name (prefix of the trials' run names).
        store: store URL.
        method: continual-learning method.
        orders: task orders; ``per_trial == "all"``: every trial runs all of them; ``"search"``:
            the trial runs ``orders[params["order"]]``.
        per_trial: ``"all"`` or ``"search"``.
        sequence: ``SequenceConfig`` fields shared by every trial (model, spec, streams, probe,
            teacher cache, fixed training settings, scaling); ``run``, ``tasks`` and ``lr`` etc.
            are filled per trial.
        method_config: fixed ``MethodConfig`` fields (the sampled ones are added per trial).
    """

    sweep: str
    store: str
    method: str
    orders: list[list[str]]
    per_trial: str
    sequence: dict[str, Any]
    method_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialPlan":
        return cls(**d)

    def trial_orders(self, params: Mapping[str, Any]) -> list[list[str]]:
        """The orders one trial runs."""
        if self.per_trial == "search":
            return [self.orders[int(params.get("order", 0))]]
        return [list(o) for o in self.orders]


def run_names(sweep: str, trial_id: str, num_orders: int) -> list[str]:
    """Run names of a trial's sequences: ``<sweep>-<trial id>`` (one order) or ``...-o<k>``."""
    base = f"{sweep}-{trial_id}".lower()
    return [base] if num_orders == 1 else [f"{base}-o{k}" for k in range(num_orders)]


def sequence_config(plan: TrialPlan, params: Mapping[str, Any], order: Sequence[str], run: str):
    """The ``SequenceConfig`` of one order of a trial with hyperparameters ``params``."""
    from cl_platform.train.config import SequenceConfig

    method_cfg = dict(plan.method_config)
    training = {}
    declared = sweep_params()
    for name, value in params.items():
        if name == "order":
            continue
        p = declared.get(name)
        if p is None or not p.searchable:
            raise ValueError(f"trial parameter {name!r} is not a searchable hyperparameter")
        (method_cfg if p.target == "method" else training)[name] = int(value) if p.setting.kind == "int" else value
    seq = {**plan.sequence, **training}
    return SequenceConfig(run=run, store=plan.store, method=plan.method, tasks=list(order),
                          method_config=method_cfg, **seq)


def ledger_config(cfg) -> dict[str, Any]:
    """The run config recorded in a trial run's ledger (its hash guards the trial's resume)."""
    d = cfg.to_dict()
    d["methods"] = [d.pop("method")]
    d["from_run"] = None
    return d


# ------------------------------------------------------------------------------ round metrics


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def round_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    """The per-round metrics of one order from a worker's round-end report."""
    return {"round": int(report["round"]), "task": report.get("task"),
            **{m: _num(report.get(m)) for m in AGGREGATED}}


def history_from_ledger(ledger, method: str) -> list[dict[str, Any]]:
    """Per-round metrics of the rounds a run has done (in order, stopping at the first gap)."""
    out = []
    for r in range(len(ledger.task_order)):
        rec = ledger.record(method, r)
        if rec is None or rec.status != "done":
            break
        m = rec.metrics
        acc = m.get("accuracy") or []
        gen, g0 = m.get("generation_score"), m.get("base_generation_score")
        out.append({
            "round": r, "task": rec.task,
            "avg_accuracy": sum(acc[: r + 1]) / (r + 1) if len(acc) > r else float("nan"),
            "generation_score": _num(gen),
            "generation_drop": (g0 - gen) if gen is not None and g0 is not None else float("nan"),
        })
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.pstdev(vals) if len(vals) > 1 else 0.0)


def aggregate_round(per_order: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One Tune report from the same round of every order: mean, spread and per-order values.

    >>> r = aggregate_round([{"round": 0, "task": "a", "avg_accuracy": 0.5, "generation_score": 1.0,
    ...                       "generation_drop": 0.0},
    ...                      {"round": 0, "task": "b", "avg_accuracy": 0.7, "generation_score": 0.8,
    ...                       "generation_drop": 0.2}])
    >>> round(r["avg_accuracy"], 3), round(r["avg_accuracy_std"], 3), r["rounds_done"], r["orders"]
    (0.6, 0.1, 1, 2)
    """
    if not per_order:
        raise ValueError("aggregate_round needs the round's metrics of at least one order")
    rounds = {int(m["round"]) for m in per_order}
    if len(rounds) != 1:
        raise ValueError(f"aggregate_round got different rounds {sorted(rounds)}")
    r = rounds.pop()
    out: dict[str, Any] = {"round": r, "rounds_done": r + 1, "orders": len(per_order), "task": per_order[-1].get("task")}
    for m in AGGREGATED:
        vals = [_num(p.get(m)) for p in per_order]
        out[m], out[f"{m}_std"] = _mean_std(vals)
        if len(per_order) > 1:
            out.update({f"{m}_o{k}": v for k, v in enumerate(vals)})
    return out


def aggregate_histories(histories: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """:func:`aggregate_round` for every round all orders have done."""
    n = min((len(h) for h in histories), default=0)
    return [aggregate_round([h[r] for h in histories]) for r in range(n)]


# ------------------------------------------------------------------------------ the Tune side


class RoundReportCallback(TuneReportCallback):
    """Forward each round-end report of a Ray Train fit to Tune, aggregated with earlier orders.

    Runs on the Ray Train controller; create it inside a Tune trial. Mid-round checkpoint reports
    (no ``avg_accuracy``) are not forwarded, so each Tune iteration is one round. ``earlier``
    holds, per earlier order of the trial, its per-round metrics (:func:`round_metrics`).
    """

    def __init__(self, earlier: Sequence[Sequence[Mapping[str, Any]]] = ()):
        super().__init__()
        self._earlier = [list(h) for h in earlier]

    def after_report(self, run_context, metrics, checkpoint):
        report = metrics[0]
        if "avg_accuracy" not in report:
            return
        m = round_metrics(report)
        self._training_actor_item_queue.put(aggregate_round([h[m["round"]] for h in self._earlier] + [m]))


def finish_run(store, cfg, *, log: Callable[[str], None] = print) -> Optional[dict]:
    """Write a finished trial run's ``results.json`` and report, as ``jobs/sequence.py`` does."""
    from cl_platform.train.ledger import Ledger
    from cl_platform.train.sequence import write_run_results

    return write_run_results(store, cfg, [cfg.method], Ledger.open(store, cfg.run).config, log=log, quiet=True)


def sweep_trial(params: dict[str, Any], plan: Mapping[str, Any]) -> None:
    """The Tune function of a sweep trial (wrap with ``tune.with_parameters(sweep_trial, plan=...)``).

    Runs the trial's orders one after another (each one ``TorchTrainer.fit`` walking all rounds)
    and reports one row per round of the last order, aggregated over the orders.
    """
    import ray.tune

    from cl_platform.store import Store
    from cl_platform.train.ledger import Ledger
    from cl_platform.train.sequence import fit_method

    plan = TrialPlan.from_dict(plan)
    trial_id = ray.tune.get_context().get_trial_id()
    store = Store(plan.store)
    orders = plan.trial_orders(params)
    runs = run_names(plan.sweep, trial_id, len(orders))
    histories: list[list[dict[str, Any]]] = []
    for k, (order, run) in enumerate(zip(orders, runs)):
        cfg = sequence_config(plan, params, order, run)
        ledger = Ledger.open_or_create(store, run, task_order=list(order), config=ledger_config(cfg),
                                       methods=[cfg.method], resume=True)
        done = history_from_ledger(ledger, cfg.method)
        last = k == len(orders) - 1
        if last:
            for row in aggregate_histories(histories + [done]):  # rounds done before a restart
                ray.tune.report(row)
        tag = f"[{plan.sweep} {trial_id}{f' order {k + 1}/{len(orders)}' if len(orders) > 1 else ''}]"
        if len(done) < len(order):
            if done:
                print(f"{tag} resuming run {run} at round {len(done) + 1}/{len(order)}", flush=True)
            callbacks = [RoundReportCallback(histories)] if last else None
            fit_method(cfg, store, callbacks=callbacks, log=lambda msg: print(f"{tag} {msg}", flush=True))
            ledger = ledger.refresh()
            done = history_from_ledger(ledger, cfg.method)
        if len(done) == len(order) and not store.exists(f"runs/{run}/results.json"):
            finish_run(store, cfg)
        histories.append(done)
