"""Sweep specifications: the YAML file of ``sweeps/sweep.py``, parsed and validated.

A sweep file (see the YAML files in ``sweeps/``) has these top-level keys; anything else is an
error naming the key::

    name: quick                         # results under <store>/sweeps/<name>/
    description: ...                    # optional free text, copied into the summary
    store: null                         # store URL (default: the platform's; --store overrides)
    suite: null                         # where tasks, model and probe come from (cl_platform.suites);
                                        # default: `tasks` when a model is given, else the default suite
    model: null                         # base model store path/URI (default: the suite's base)
    spec: null                          # "anole" or a ModalitySpec JSON file (default: the model's config)
    kd_stream: null                     # KD / generation stream (default: the suite's)
    probe_stream: null                  # held-out stream of the likelihood probe (default: the suite's probe)
    probe_size: null                    # size of the generation probe (default: the suite's)
    method: mode                        # the continual-learning method every trial trains
    tasks: [parity, name]               # the task set (default: the suite's task order)
    orders:                             # task orders (default: just `tasks` as listed)
      fixed: [[parity, name], [name, parity]]   # ... a fixed list, or
      sample: 2                         # ... this many distinct random permutations of `tasks`
      seed: 0                           # seed of the sampled orders
      per_trial: all                    # all: every trial runs every order and reports mean and spread
                                        # search: the order is one more searched choice
    space:                              # searched hyperparameters (at least one)
      kd_weight: {type: loguniform, low: 0.03, high: 3.0}
      num_experts: {type: choice, values: [2, 4, 8]}
      r_text: {type: choice, values: [4, 8, 16]}
      r_image: {type: choice, values: [4, 8, 16]}
      lr: {type: loguniform, low: 3.0e-4, high: 3.0e-3}
    fixed:                              # fixed training / method settings of every trial
      steps_per_task: 12
    search:
      num_samples: 6                    # trials
      objectives: {avg_accuracy: max, generation_drop: min}   # one (single-objective) or two
      seed: 0                           # TPE sampler seed
      n_startup_trials: 3               # random trials before TPE models the results
      include_default: true             # first trial: the MoDE default configuration
      max_concurrent_trials: 1
      scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: none}
    resources: {num_workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}

Parsing never touches the store or Ray: :func:`load_sweep` / :func:`parse_sweep` check shapes,
types and ranges, and that every order is a permutation of the task set (a task the suite does
not have is named). What ``space`` and ``fixed`` may name, and each value's type and range, are
the ``MethodConfig`` / ``SequenceConfig`` fields' own declarations (:func:`sweep_params`);
``resources`` are checked like the ``SequenceConfig`` fields they become. The runner checks the
tasks against the store again before anything starts.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

from cl_platform.fields import Setting, settings

#: Sweep names become directory and run-name prefixes (``<sweep>-<trial id>-o<k>`` <= 64 chars).
SWEEP_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,39}"
_SWEEP_NAME_RE = re.compile(SWEEP_NAME_PATTERN)

#: Metrics a trial reports after every round that can be objectives, with their natural sense.
OBJECTIVE_METRICS = {"avg_accuracy": "max", "generation_drop": "min", "generation_score": "max"}



class SweepConfigError(ValueError):
    """A sweep file that cannot be run; the message names the file and the offending key."""


@dataclass(frozen=True)
class SweepParam:
    """A setting a sweep file may name: a ``MethodConfig`` or ``SequenceConfig`` field declared with a
    sweep role (:func:`cl_platform.fields.setting`), whose kind and bounds are the field's own.

    Attributes:
        target: ``"method"`` (a ``MethodConfig`` field) or ``"training"`` (a ``SequenceConfig`` field).
        setting: the field's declaration; ``setting.sweep`` is ``"search"`` (searchable, or fixed)
            or ``"fixed"`` (``fixed:`` only).
    """

    target: str
    setting: Setting

    @property
    def searchable(self) -> bool:
        return self.setting.sweep == "search"


@functools.cache
def sweep_params() -> dict[str, SweepParam]:
    """The settings a sweep file may name (``space:`` the searchable ones, listed first; ``fixed:`` all)."""
    from cl_platform.methods.base import MethodConfig
    from cl_platform.train.config import SequenceConfig

    params = [SweepParam(target, s) for target, cls in (("method", MethodConfig), ("training", SequenceConfig))
              for s in settings(cls).values() if s.sweep]
    return {p.setting.name: p for p in sorted(params, key=lambda p: not p.searchable)}


def searchable() -> list[str]:
    """The hyperparameters a sweep may search."""
    return [name for name, p in sweep_params().items() if p.searchable]


_TOP_KEYS = ("name", "description", "store", "suite", "model", "spec", "kd_stream", "probe_stream", "probe_size",
             "method", "tasks",
             "orders", "space", "fixed", "search", "resources")
_ORDER_KEYS = ("fixed", "sample", "seed", "per_trial")
_SEARCH_KEYS = ("num_samples", "objectives", "seed", "n_startup_trials", "include_default", "max_concurrent_trials",
                "scheduler")
_SCHED_KEYS = ("type", "grace_period", "reduction_factor")
_RES_KEYS = ("num_workers", "cpus_per_worker", "gpus_per_worker")
_DIST_KEYS = {"loguniform": ("type", "low", "high"), "uniform": ("type", "low", "high"), "choice": ("type", "values")}


@dataclass(frozen=True)
class Distribution:
    """One searched hyperparameter.

    Attributes:
        name: the hyperparameter (one of :func:`searchable`).
        type: ``"loguniform"``, ``"uniform"`` or ``"choice"``.
        low, high: bounds of ``loguniform`` / ``uniform`` (``low < high``).
        values: the options of ``choice`` (non-empty, no repeats).
    """

    name: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    values: tuple = ()

    def contains(self, value: Any) -> bool:
        """True if ``value`` can be drawn from this distribution."""
        if self.type == "choice":
            return value in self.values
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def describe(self) -> str:
        """Short text, e.g. ``loguniform(0.03, 3)`` or ``choice(2, 4)``."""
        if self.type == "choice":
            return "choice(" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.values) + ")"
        return f"{self.type}({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class OrderSpec:
    """The task orders of a sweep.

    Attributes:
        orders: the resolved orders (each a permutation of the sweep's tasks).
        per_trial: ``"all"`` (every trial runs every order; metrics are the mean over orders,
            with the standard deviation as spread) or ``"search"`` (each trial runs one order,
            chosen by the searcher like any other hyperparameter).
        sampled: how many orders were sampled (0: the orders were given).
        seed: seed of the sampled orders.
    """

    orders: tuple[tuple[str, ...], ...]
    per_trial: str = "all"
    sampled: int = 0
    seed: int = 0


@dataclass(frozen=True)
class SchedulerSpec:
    """Early stopping on rounds.

    Attributes:
        type: ``"asha"`` or ``"none"``.
        grace_period: rounds every trial runs before it can be stopped.
        reduction_factor: ASHA's halving rate (keeps 1 / reduction_factor at each rung).
    """

    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class SearchSpec:
    """How trials are chosen and scheduled.

    Attributes:
        num_samples: number of trials.
        objectives: metric -> ``"max"`` / ``"min"``, in order; one entry is single-objective
            TPE, two are multi-objective (the Pareto set is the result). The first one drives ASHA.
        seed: seed of Optuna's TPE sampler.
        n_startup_trials: random trials before TPE starts modelling.
        include_default: evaluate the MoDE default configuration as the first trial.
        max_concurrent_trials: trials running at once (each needs the per-trial workers).
        scheduler: early stopping.
    """

    num_samples: int = 6
    objectives: tuple[tuple[str, str], ...] = (("avg_accuracy", "max"),)
    seed: int = 0
    n_startup_trials: int = 3
    include_default: bool = True
    max_concurrent_trials: int = 1
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)

    @property
    def metrics(self) -> list[str]:
        return [m for m, _ in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [m for _, m in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


@dataclass(frozen=True)
class ResourceSpec:
    """Ray Train scaling of every trial's sequence.

    Attributes:
        num_workers: training workers per trial.
        cpus_per_worker: CPUs each worker reserves.
        gpus_per_worker: GPUs each worker reserves (0: CPU training).
    """

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass(frozen=True)
class SweepSpec:
    """A parsed and validated sweep file.

    Attributes:
        name: sweep name (:data:`SWEEP_NAME_PATTERN`); results go to ``<store>/sweeps/<name>/``.
        source: where the spec came from (file path, or ``"<dict>"``), used in messages.
        description: free text for the summary.
        store: store URL, or ``None`` for the default store.
        suite: the suite the inputs come from (:mod:`cl_platform.suites`; resolved at parse time:
            ``tasks`` when a model is given without a suite, else the default suite).
        model: base model store path/URI, or ``None`` for the suite's base.
        spec: ``"anole"`` or a ModalitySpec JSON file, or ``None`` (the model's config).
        kd_stream: KD / generation stream name, or ``None`` (the suite's).
        probe_stream: held-out stream of the likelihood probe, or ``None`` (the suite's probe).
        probe_size: size of the generation probe, or ``None`` (the suite's).
        method: the continual-learning method of every trial.
        tasks: the task set, in its listed order.
        orders: the task orders.
        space: the searched hyperparameters.
        fixed: fixed settings (keys of :func:`sweep_params`).
        search: search and scheduling.
        resources: per-trial Ray Train scaling.
    """

    name: str
    tasks: tuple[str, ...]
    orders: OrderSpec
    space: tuple[Distribution, ...]
    source: str = "<dict>"
    description: str = ""
    store: Optional[str] = None
    suite: Optional[str] = None
    model: Optional[str] = None
    spec: Optional[str] = None
    kd_stream: Optional[str] = None
    probe_stream: Optional[str] = None
    probe_size: Optional[int] = None
    method: str = "mode"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    search: SearchSpec = field(default_factory=SearchSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)

    @property
    def num_rounds(self) -> int:
        return len(self.tasks)

    def param(self, name: str) -> Optional[Distribution]:
        return next((d for d in self.space if d.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for the summary and the results)."""
        d = asdict(self)
        d["orders"]["orders"] = [list(o) for o in self.orders.orders]
        d["tasks"] = list(self.tasks)
        d["space"] = {p.name: p.describe() for p in self.space}
        d["fixed"] = dict(self.fixed)
        d["search"]["objectives"] = dict(self.search.objectives)
        return d


# ------------------------------------------------------------------------------------ parsing


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep YAML file; :class:`SweepConfigError` names the file and key."""
    import yaml

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise SweepConfigError(f"{path}: no such sweep file") from None
    except yaml.YAMLError as exc:
        raise SweepConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_sweep(doc, source=path)


def parse_sweep(doc: Any, *, source: str = "<dict>") -> SweepSpec:
    """Validate a sweep document (the YAML as Python objects) into a :class:`SweepSpec`."""

    def fail(where: str, msg: str) -> SweepConfigError:
        return SweepConfigError(f"{source}: {where}: {msg}" if where else f"{source}: {msg}")

    if not isinstance(doc, Mapping):
        raise fail("", f"a sweep file is a mapping of {', '.join(_TOP_KEYS)}; got {type(doc).__name__}")
    _check_keys(doc, _TOP_KEYS, "", fail)

    name = doc.get("name")
    if not isinstance(name, str) or not _SWEEP_NAME_RE.fullmatch(name):
        raise fail("name", f"must match {SWEEP_NAME_PATTERN} (lower-case letters, numbers, '_' and '-'; "
                           f"1-40 characters), got {name!r}")
    from cl_platform.suites import DEFAULT_SUITE, available_suites, get_suite

    suite = doc.get("suite") or ("tasks" if doc.get("model") else DEFAULT_SUITE)
    if suite not in available_suites():
        raise fail("suite", f"unknown suite {suite!r}; known: {', '.join(available_suites())}")
    if suite == "tasks" and not doc.get("model"):
        raise fail("model", "required with suite 'tasks' (a save_pretrained directory in the store)")
    for key in ("store", "model", "spec", "kd_stream", "probe_stream", "description"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise fail(key, f"must be a string, got {doc[key]!r}")
    probe_size = doc.get("probe_size")
    if probe_size is not None and (not _is_int(probe_size) or probe_size < 1):
        raise fail("probe_size", f"must be a positive integer, got {probe_size!r}")
    method = doc.get("method", "mode")
    from cl_platform.methods import available_methods

    if method not in available_methods():
        raise fail("method", f"unknown method {method!r}; known: {', '.join(available_methods())}")

    known = tuple(get_suite(suite).default_tasks) or None
    raw_orders = doc.get("orders")
    if doc.get("tasks") is None and isinstance(raw_orders, Mapping) and isinstance(raw_orders.get("fixed"), list) \
            and raw_orders["fixed"]:
        tasks = _task_list(raw_orders["fixed"][0], "orders.fixed[0]", known, fail)  # the task set of the orders
    else:
        tasks = _parse_tasks(doc.get("tasks"), known, fail)
    orders = _parse_orders(raw_orders, tasks, known, fail)
    space = _parse_space(doc.get("space"), fail)
    fixed = _parse_fixed(doc.get("fixed"), {d.name for d in space}, fail)
    search = _parse_search(doc.get("search"), len(tasks), fail)
    resources = _parse_resources(doc.get("resources"), fail)
    if search.multi_objective or "generation_drop" in search.metrics or "generation_score" in search.metrics:
        if suite == "tasks" and not doc.get("probe_stream") and not doc.get("kd_stream"):
            raise fail("search.objectives", "generation objectives need a generation probe: set `probe_stream` "
                                            "(or a `kd_stream` whose held-out `<kd_stream>-probe` is in the store)")
    if search.include_default:
        _check_default_in_space(space, fixed, fail)
    return SweepSpec(
        name=name, source=source, description=doc.get("description") or "", store=doc.get("store"), suite=suite,
        model=doc.get("model"), spec=doc.get("spec"), kd_stream=doc.get("kd_stream"),
        probe_stream=doc.get("probe_stream"), probe_size=probe_size, method=method,
        tasks=tasks, orders=orders, space=space, fixed=fixed, search=search, resources=resources,
    )


def _check_keys(d: Mapping, allowed: Sequence[str], where: str, fail) -> None:
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise fail(where + ("." if where else "") + str(unknown[0]),
                   f"unknown key {unknown[0]!r}; allowed here: {', '.join(allowed)}")


def _task_list(value: Any, where: str, known: Optional[Sequence[str]], fail) -> tuple[str, ...]:
    from cl_platform.data.task_format import NAME_PATTERN

    if not isinstance(value, (list, tuple)) or not value:
        raise fail(where, f"must be a non-empty list of task names, got {value!r}")
    for t in value:
        if not isinstance(t, str) or not re.fullmatch(NAME_PATTERN, t):
            raise fail(where, f"{t!r} is not a task name (must match {NAME_PATTERN})")
        if known is not None and t not in known:
            raise fail(where, f"names unknown task {t!r}; the suite has {', '.join(known)}")
    dups = sorted({t for t in value if list(value).count(t) > 1})
    if dups:
        raise fail(where, f"names {', '.join(map(repr, dups))} more than once")
    return tuple(value)


def _parse_tasks(value: Any, known: Optional[Sequence[str]], fail) -> tuple[str, ...]:
    if value is None:
        if known is None:
            raise fail("tasks", "required when the suite has no tasks of its own (suite 'tasks')")
        return tuple(known)
    return _task_list(value, "tasks", known, fail)


def _parse_orders(value: Any, tasks: tuple[str, ...], known, fail) -> OrderSpec:
    if value is None:
        return OrderSpec(orders=(tasks,))
    if not isinstance(value, Mapping):
        raise fail("orders", f"must be a mapping with `fixed` or `sample`, got {value!r}")
    _check_keys(value, _ORDER_KEYS, "orders", fail)
    per_trial = value.get("per_trial", "all")
    if per_trial not in ("all", "search"):
        raise fail("orders.per_trial", f"must be 'all' or 'search', got {per_trial!r}")
    seed = value.get("seed", 0)
    if not _is_int(seed):
        raise fail("orders.seed", f"must be an integer, got {seed!r}")
    if ("fixed" in value) == ("sample" in value):
        raise fail("orders", "give exactly one of `fixed` (a list of orders) or `sample` (a number of orders)")
    if "fixed" in value:
        fixed = value["fixed"]
        if not isinstance(fixed, list) or not fixed:
            raise fail("orders.fixed", f"must be a non-empty list of orders (lists of task names), got {fixed!r}")
        orders = []
        for i, o in enumerate(fixed):
            order = _task_list(o, f"orders.fixed[{i}]", known, fail)
            if sorted(order) != sorted(tasks):
                missing = sorted(set(tasks) - set(order))
                extra = sorted(set(order) - set(tasks))
                what = (f"names unknown task {extra[0]!r} (tasks: {', '.join(tasks)})" if extra
                        else f"misses {', '.join(map(repr, missing))}")
                raise fail(f"orders.fixed[{i}]", f"{what}: every order is a permutation of the tasks")
            if order in orders:
                raise fail(f"orders.fixed[{i}]", f"repeats orders.fixed[{orders.index(order)}]")
            orders.append(order)
        return OrderSpec(orders=tuple(orders), per_trial=per_trial, seed=seed)
    n = value["sample"]
    if not _is_int(n) or n < 1:
        raise fail("orders.sample", f"must be an integer >= 1 (number of orders), got {n!r}")
    total = math.factorial(len(tasks))
    if n > total:
        raise fail("orders.sample", f"asks for {n} distinct orders but {len(tasks)} tasks have only {total}")
    return OrderSpec(orders=sample_orders(tasks, n, seed), per_trial=per_trial, sampled=n, seed=seed)


def sample_orders(tasks: Sequence[str], n: int, seed: int) -> tuple[tuple[str, ...], ...]:
    """``n`` distinct permutations of ``tasks`` drawn with ``seed`` (deterministic)."""
    tasks = tuple(tasks)
    if n > math.factorial(len(tasks)):
        raise ValueError(f"{len(tasks)} tasks have fewer than {n} orders")
    if len(tasks) <= 6:  # small: sample without replacement from the full list
        perms = list(itertools.permutations(tasks))
        return tuple(random.Random(seed).sample(perms, n))
    rng, out = random.Random(seed), []
    while len(out) < n:
        p = list(tasks)
        rng.shuffle(p)
        if tuple(p) not in out:
            out.append(tuple(p))
    return tuple(out)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_value(name: str, value: Any, where: str, fail) -> None:
    """``value`` checked by the field's own declaration (kind and bounds)."""
    problem = sweep_params()[name].setting.problem(value)
    if problem:
        raise fail(where, f"{name} {problem}")


def _parse_space(value: Any, fail) -> tuple[Distribution, ...]:
    names = searchable()
    if not isinstance(value, Mapping) or not value:
        raise fail("space", f"must be a non-empty mapping of hyperparameter -> distribution; searchable: "
                            f"{', '.join(names)}")
    out = []
    for name, dist in value.items():
        where = f"space.{name}"
        if name not in names:
            raise fail(where, f"unknown hyperparameter {name!r}; searchable: {', '.join(names)}")
        if not isinstance(dist, Mapping) or dist.get("type") not in _DIST_KEYS:
            raise fail(where, "must be {type: loguniform|uniform, low: .., high: ..} or {type: choice, values: [...]}"
                              f", got {dist!r}")
        kind = dist["type"]
        _check_keys(dist, _DIST_KEYS[kind], where, fail)
        if kind == "choice":
            values = dist.get("values")
            if not isinstance(values, list) or not values:
                raise fail(where + ".values", f"choice needs a non-empty list of values, got {values!r}")
            for v in values:
                _check_value(name, v, where + ".values", fail)
            if len(set(values)) != len(values):
                raise fail(where + ".values", f"repeats a value: {values}")
            out.append(Distribution(name, "choice", values=tuple(values)))
            continue
        if sweep_params()[name].setting.kind == "int":
            raise fail(where, f"{name} is an integer: use {{type: choice, values: [...]}}")
        low, high = dist.get("low"), dist.get("high")
        for bound, v in (("low", low), ("high", high)):
            if v is None:
                raise fail(f"{where}.{bound}", f"{kind} needs `{bound}`")
            _check_value(name, v, f"{where}.{bound}", fail)
        if not low < high:
            raise fail(where, f"low ({low!r}) must be below high ({high!r})")
        if kind == "loguniform" and low <= 0:
            raise fail(f"{where}.low", f"loguniform needs low > 0, got {low!r}")
        out.append(Distribution(name, kind, low=float(low), high=float(high)))
    return tuple(out)


def _parse_fixed(value: Any, searched: set[str], fail) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail("fixed", f"must be a mapping of setting -> value, got {value!r}")
    out = {}
    allowed = list(sweep_params())
    for key, v in value.items():
        where = f"fixed.{key}"
        if key not in allowed:
            raise fail(where, f"unknown setting {key!r}; allowed: {', '.join(allowed)}")
        if key in searched:
            raise fail(where, f"{key!r} is also in `space`: a setting is either searched or fixed")
        _check_value(key, v, where, fail)
        out[key] = v
    return out


def _parse_search(value: Any, num_tasks: int, fail) -> SearchSpec:
    value = value or {}
    if not isinstance(value, Mapping):
        raise fail("search", f"must be a mapping, got {value!r}")
    _check_keys(value, _SEARCH_KEYS, "search", fail)
    d = SearchSpec()
    ints = {}
    for key, low in (("num_samples", 1), ("seed", 0), ("n_startup_trials", 0), ("max_concurrent_trials", 1)):
        v = value.get(key, getattr(d, key))
        if not _is_int(v) or v < low:
            raise fail(f"search.{key}", f"must be an integer >= {low}, got {v!r}")
        ints[key] = v
    objectives = value.get("objectives", dict(d.objectives))
    if isinstance(objectives, str):
        objectives = {objectives: OBJECTIVE_METRICS.get(objectives, "max")}
    if not isinstance(objectives, Mapping) or not 1 <= len(objectives) <= 2:
        raise fail("search.objectives", "must map one or two metrics to max/min, e.g. "
                                        f"{{avg_accuracy: max, generation_drop: min}}; got {objectives!r}")
    for m, mode in objectives.items():
        if m not in OBJECTIVE_METRICS:
            raise fail("search.objectives", f"unknown metric {m!r}; trials report {', '.join(OBJECTIVE_METRICS)}")
        if mode not in ("max", "min"):
            raise fail(f"search.objectives.{m}", f"must be 'max' or 'min', got {mode!r}")
    include_default = value.get("include_default", d.include_default)
    if not isinstance(include_default, bool):
        raise fail("search.include_default", f"must be true or false, got {include_default!r}")
    sched = value.get("scheduler", {"type": "asha"})
    if sched is None or sched == "none":
        sched = {"type": "none"}
    if sched == "asha":
        sched = {"type": "asha"}
    if not isinstance(sched, Mapping):
        raise fail("search.scheduler", f"must be {{type: asha, grace_period: N, reduction_factor: F}} or "
                                       f"{{type: none}}, got {sched!r}")
    _check_keys(sched, _SCHED_KEYS, "search.scheduler", fail)
    stype = sched.get("type", "asha")
    if stype not in ("asha", "none"):
        raise fail("search.scheduler.type", f"must be 'asha' or 'none', got {stype!r}")
    grace = sched.get("grace_period", 1)
    if not _is_int(grace) or grace < 1:
        raise fail("search.scheduler.grace_period", f"must be an integer >= 1 (rounds), got {grace!r}")
    if stype == "asha" and grace > num_tasks:
        raise fail("search.scheduler.grace_period", f"{grace} rounds is more than the {num_tasks} rounds of a trial")
    rf = sched.get("reduction_factor", 2)
    if not _is_num(rf) or rf <= 1:
        raise fail("search.scheduler.reduction_factor", f"must be a number > 1, got {rf!r}")
    return SearchSpec(objectives=tuple(objectives.items()), include_default=include_default,
                      scheduler=SchedulerSpec(stype, grace, float(rf)), **ints)


def _parse_resources(value: Any, fail) -> ResourceSpec:
    value = value or {}
    if not isinstance(value, Mapping):
        raise fail("resources", f"must be a mapping of {', '.join(_RES_KEYS)}, got {value!r}")
    _check_keys(value, _RES_KEYS, "resources", fail)
    from cl_platform.train.config import SequenceConfig

    declared, d, out = settings(SequenceConfig), ResourceSpec(), {}
    for key in _RES_KEYS:  # checked like the SequenceConfig fields they become (a sweep states its GPUs)
        v = value.get(key, getattr(d, key))
        problem = "must be a number, got None" if v is None else declared[key].problem(v)
        if problem:
            raise fail(f"resources.{key}", f"{key} {problem}")
        out[key] = v if declared[key].kind == "int" else float(v)
    return ResourceSpec(**out)


# ------------------------------------------------------------------------------ the default point


def default_values() -> dict[str, Any]:
    """The MoDE reference configuration of every searchable hyperparameter (the fields' defaults)."""
    return {name: p.setting.default for name, p in sweep_params().items() if p.searchable}


def default_point(spec: SweepSpec) -> dict[str, Any]:
    """The searched hyperparameters at the MoDE default (``fixed`` values win over the defaults).

    With ``orders.per_trial: search`` the default point uses the first order.
    """
    defaults = {**default_values(), **{k: v for k, v in spec.fixed.items() if k in searchable()}}
    point = {d.name: defaults[d.name] for d in spec.space}
    if spec.orders.per_trial == "search":
        point["order"] = 0
    return point


def _check_default_in_space(space: Sequence[Distribution], fixed: Mapping[str, Any], fail) -> None:
    defaults = {**default_values(), **{k: v for k, v in fixed.items() if k in searchable()}}
    for d in space:
        if not d.contains(defaults[d.name]):
            raise fail(f"space.{d.name}", f"search.include_default needs the MoDE default {d.name}={defaults[d.name]!r} "
                                          f"inside {d.describe()}; widen the space or set include_default: false")
