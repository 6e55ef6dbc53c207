"""A lineage's settings: what its rounds train and which tasks it accepts.

Settings come only from the scheduler's command line (which a deployment fills from its
ConfigMap or environment), with defaults for the rest. The store is writable by every data owner,
so nothing that changes what runs (commands, hooks, job arguments, the model) is ever read from
it: ``<store>/lineages/<name>/lineage.json`` is a *record* of the settings in force, written at
every start for ``status``; a start whose settings differ from the record reports each difference
(the ``settings_differ`` event) and goes on with its own.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional, Sequence

from cl_platform.data.task_format import NAME_PATTERN
from cl_platform.store import Store

_NAME_RE = re.compile(NAME_PATTERN)

#: ``jobs/sequence.py`` flags the scheduler sets itself; ``job_args`` may not contain them.
RESERVED_JOB_FLAGS = ("--store", "--tasks", "--order", "--run", "--from-run", "--resume", "--method", "--methods",
                      "--suite", "--model", "--spec", "--kd-stream", "--probe-stream", "--quick", "--steps",
                      "--task-digest", "--evaluate-earlier")

#: The metrics a lineage's sweep may optimise, with their sense.
TUNE_OBJECTIVES = {"avg_accuracy": "max", "generation_score": "max", "generation_drop": "min"}

#: Optimiser steps per round of ``--quick`` (the sequence command's).
QUICK_STEPS = 12

#: What a round crossing a guard rail does (:attr:`LineageSettings.guard_action`).
GUARD_ACTIONS = ("hold", "warn")

#: Longest lineage name: round runs are ``<lineage>-<n>-<task>`` and must fit the 64-character run rule.
MAX_LINEAGE_CHARS = 40


class LineageConfigError(ValueError):
    """The lineage's settings are invalid or conflict with what the command line asked for."""


class _JobArgsParser(argparse.ArgumentParser):
    def error(self, message: str):  # a settings error, not an exit
        raise LineageConfigError(message)


def check_job_args(job_args: Sequence[str]) -> None:
    """Parse ``job_args`` as the sequence command's method, training and Ray settings would be
    (the same generated arguments, values checked by the fields' declarations); never run.

    Raises :class:`LineageConfigError` naming the setting, the unknown flag or the bad value.
    """
    if not job_args:
        return
    from cl_platform.train.config import add_setting_arguments

    parser = _JobArgsParser(prog="job_args", add_help=False, allow_abbrev=False)
    add_setting_arguments(parser)
    try:
        parser.parse_args(list(job_args))
    except LineageConfigError as exc:
        raise LineageConfigError(f"lineage setting job_args={list(job_args)!r}: {exc} (allowed: the method, "
                                 "training and Ray settings of the sequence command)") from None


def tunable_settings() -> dict[str, str]:
    """The settings a lineage's sweep may search, with their ``jobs/sequence.py`` flags."""
    from cl_platform.fields import settings
    from cl_platform.methods.base import MethodConfig
    from cl_platform.train.config import SequenceConfig

    return {s.name: s.flag for cls in (MethodConfig, SequenceConfig) for s in settings(cls).values() if s.sweep == "search"}


def tuned_job_args(params: Mapping[str, Any], space: Mapping[str, Any]) -> list[str]:
    """The sequence arguments of a sweep's chosen ``params``: only the settings of ``space``, each
    value checked as a ``job_args`` value is; :class:`LineageConfigError` naming what is wrong."""
    flags = tunable_settings()
    if not isinstance(params, Mapping) or set(params) != set(space):
        raise LineageConfigError(f"the sweep's chosen configuration {params!r} does not set exactly the searched "
                                 f"settings {sorted(space)}")
    args: list[str] = []
    for name in sorted(params):
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise LineageConfigError(f"the sweep's chosen {name}={value!r} is not a setting value")
        args += [flags[name], str(value)]
    check_job_args(args)
    return args


def _job_resources(job_args: Sequence[str]) -> dict[str, Any]:
    """The Ray scaling ``job_args`` sets (``--workers`` ...), for a lineage's sweep trials; one worker
    of 0.99 CPU and no GPU where they set none (a sweep keeps one CPU for Ray Data)."""
    parser = _JobArgsParser(prog="job_args", add_help=False, allow_abbrev=False)
    from cl_platform.train.config import add_setting_arguments

    add_setting_arguments(parser)
    ns = parser.parse_args(list(job_args))
    given = {a.split("=", 1)[0] for a in job_args}
    return {"num_workers": ns.num_workers if "--workers" in given else 1,
            "cpus_per_worker": ns.cpus_per_worker if "--cpus-per-worker" in given else 0.99,
            "gpus_per_worker": ns.gpus_per_worker if "--gpus-per-worker" in given and ns.gpus_per_worker else 0}


def tune_sweep_doc(settings: "LineageSettings", name: str, tasks: Sequence[str]) -> dict[str, Any]:
    """The sweep file (as data) of a lineage's every-K sweep named ``name`` over ``tasks``: the
    lineage's model, streams and method, its ``tune_space``, ``tune_trials`` trials and
    ``tune_objective``; its ``steps`` (12 with ``quick``) fixed."""
    objective = settings.tune_objective
    fixed: dict[str, Any] = {}
    steps = settings.steps or (QUICK_STEPS if settings.quick else None)
    if steps:
        fixed["steps_per_task"] = steps
    doc: dict[str, Any] = {
        "name": name, "description": f"lineage sweep over its recent tasks {', '.join(tasks)}",
        "suite": settings.run_request().suite, "model": settings.model, "spec": settings.spec,
        "kd_stream": settings.kd_stream, "probe_stream": settings.probe_stream, "method": settings.method,
        "tasks": list(tasks), "space": dict(settings.tune_space), "fixed": fixed,
        "search": {"num_samples": settings.tune_trials, "objectives": {objective: TUNE_OBJECTIVES[objective]},
                   "n_startup_trials": settings.tune_trials, "include_default": False, "max_concurrent_trials": 1,
                   "scheduler": {"type": "none"}},
        "resources": _job_resources(settings.job_args),
    }
    if settings.quick:
        doc["probe_size"] = 1
    return doc


def validate_lineage_name(name: Any) -> str:
    """Return ``name`` if it is a valid lineage name (the task-name rule, at most 40 characters)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > MAX_LINEAGE_CHARS:
        raise LineageConfigError(
            f"invalid lineage name {name!r}: must match {NAME_PATTERN} and have at most {MAX_LINEAGE_CHARS} characters"
        )
    return name


def lineage_dir(name: str) -> str:
    """Store path of a lineage's folder."""
    return f"lineages/{validate_lineage_name(name)}"


@dataclass
class LineageSettings:
    """How a lineage trains and what it accepts.

    Attributes:
        method: the continual-learning method of every round (``mode``, ``seq_lora``, ...).
        suite: the suite the rounds resolve their inputs with (:mod:`cl_platform.suites`): a
            built-in benchmark, or ``tasks`` (the landed tasks with ``model``); ``None``: ``tasks``
            when ``model`` is given, else the default suite.
        model: store path or URI of the base model (a ``save_pretrained`` directory); ``None``:
            the suite's base model.
        spec: ``anole`` or a ModalitySpec JSON file (``None``: from the model's ``config.json``).
        kd_stream: KD stream of every round (``None``: the suite's).
        probe_stream: held-out stream of the generation probe (``None``: the suite's probe).
        quick: pass ``--quick`` to every round (few steps, small probe: CI and demos).
        steps: optimiser steps per round (``--steps``); ``None`` leaves the job's default.
        job_args: further ``jobs/sequence.py`` arguments for every round (hyperparameters such as
            ``--kd-weight 0.5``, ``--workers 2``); the flags in :data:`RESERVED_JOB_FLAGS` are set
            by the scheduler and refused here.
        include: ``fnmatch`` patterns of task names this lineage learns; other tasks in the store
            are ignored (several lineages can share one bucket).
        min_rows: policy: a task with fewer train rows is quarantined (0: no minimum).
        max_attempts: attempts of a round before the task is marked failed.
        retry_base_seconds: backoff before the second attempt; doubles per attempt.
        retry_max_seconds: cap of the backoff.
        hook_every: policy hook: after every K learned tasks run ``hook_command`` (0: never).
        hook_command: the hook, e.g. a sweep: ``python sweeps/sweep.py --config
            sweeps/<name>.yaml --store {store} --name {lineage}-sweep-{n}``; placeholders ``{store}``, ``{lineage}``, ``{run}``
            (the latest learned run), ``{tasks}`` (learned tasks, comma-separated), ``{n}``.
            It runs beside the lineage (a Ray job with ``--ray-address``, else a detached process)
            and does not block the next round.
        max_generation_drop: guard rail: a round after which the generation score is more than this
            below the base model's (the lineage's generation drop) crosses it (``None``: off).
        max_avg_forgetting: guard rail: a round after which the lineage's average forgetting (over
            its lower-triangular accuracy matrix) exceeds this crosses it (``None``: off).
        guard_action: what a crossing does: ``hold`` keeps the lineage on the previous adapter (the
            round's run is kept for inspection, not promoted; the next task continues from the
            previous adapter and the held task is not trained again until its files change);
            ``warn`` promotes the round with a warning. Either way the crossing is recorded in the
            state and emitted as a ``guard_rail`` event.
        tune_every: after every K learned tasks run a sweep over the recent tasks (a job of the
            scheduler's runner) whose best configuration by ``tune_objective`` becomes the
            settings of the next rounds (0: never). The chosen values are data: only the settings
            of ``tune_space`` are taken, checked as ``job_args`` are, and recorded in the state.
        tune_space: the sweep's search space (a sweep file's ``space:``: searchable method and
            training settings, e.g. ``{"lr": {"type": "loguniform", "low": 3e-4, "high": 1e-2}}``).
        tune_trials: trials of each sweep.
        tune_objective: the metric the best configuration maximises (``avg_accuracy``,
            ``generation_score``) or minimises (``generation_drop``).
        tune_tasks: how many of the most recent learned tasks the sweep trains (0: ``tune_every``).

    A round resolves its inputs from these settings like any sequence
    (:func:`cl_platform.suites.resolve_run_inputs`).
    """

    method: str = "mode"
    suite: Optional[str] = None
    model: Optional[str] = None
    spec: Optional[str] = None
    kd_stream: Optional[str] = None
    probe_stream: Optional[str] = None
    quick: bool = False
    steps: Optional[int] = None
    job_args: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=lambda: ["*"])
    min_rows: int = 0
    max_attempts: int = 3
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 600.0
    hook_every: int = 0
    hook_command: Optional[str] = None
    max_generation_drop: Optional[float] = None
    max_avg_forgetting: Optional[float] = None
    guard_action: str = "hold"
    tune_every: int = 0
    tune_space: dict[str, Any] = field(default_factory=lambda: {"lr": {"type": "loguniform", "low": 3e-4, "high": 1e-2}})
    tune_trials: int = 4
    tune_objective: str = "avg_accuracy"
    tune_tasks: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "LineageSettings":
        """Check every field; raises :class:`LineageConfigError` naming the bad one."""
        if not isinstance(self.method, str) or not _NAME_RE.fullmatch(self.method):
            raise LineageConfigError(f"lineage setting method={self.method!r} is not a method name")
        from cl_platform.suites import available_suites

        if self.suite is not None and self.suite not in available_suites():
            raise LineageConfigError(f"lineage setting suite={self.suite!r}: known suites are {', '.join(available_suites())}")
        if self.suite == "tasks" and not self.model:
            raise LineageConfigError("lineage setting suite='tasks' needs model= (a save_pretrained directory in the store)")
        for name in ("model", "spec", "kd_stream", "probe_stream"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise LineageConfigError(f"lineage setting {name}={getattr(self, name)!r} must be a string")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise LineageConfigError(f"lineage setting steps={self.steps!r} must be a positive integer")
        if not isinstance(self.job_args, list) or not all(isinstance(a, str) for a in self.job_args):
            raise LineageConfigError(f"lineage setting job_args={self.job_args!r} must be a list of strings")
        bad = [a for a in self.job_args if a.split("=", 1)[0] in RESERVED_JOB_FLAGS]
        if bad:
            raise LineageConfigError(f"lineage setting job_args: {bad} are set by the scheduler; use the lineage settings")
        check_job_args(self.job_args)
        if not self.include or not all(isinstance(p, str) and p for p in self.include):
            raise LineageConfigError(f"lineage setting include={self.include!r} must be a non-empty list of patterns")
        for name in ("min_rows", "max_attempts", "hook_every", "tune_every", "tune_tasks", "tune_trials"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "max_attempts" else 0):
                raise LineageConfigError(f"lineage setting {name}={v!r} must be an integer >= {1 if name == 'max_attempts' else 0}")
        if self.tune_trials < 1:
            raise LineageConfigError(f"lineage setting tune_trials={self.tune_trials!r} must be an integer >= 1")
        if self.tune_objective not in TUNE_OBJECTIVES:
            raise LineageConfigError(f"lineage setting tune_objective={self.tune_objective!r}: one of "
                                     f"{', '.join(TUNE_OBJECTIVES)}")
        searchable = tunable_settings()
        if not isinstance(self.tune_space, dict) or not self.tune_space or any(
                k not in searchable or not isinstance(v, dict) for k, v in self.tune_space.items()):
            raise LineageConfigError(f"lineage setting tune_space={self.tune_space!r} must map searchable settings "
                                     f"({', '.join(searchable)}) to distributions such as "
                                     "{'type': 'loguniform', 'low': 0.0003, 'high': 0.01}")
        for name in ("retry_base_seconds", "retry_max_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise LineageConfigError(f"lineage setting {name}={v!r} must be a number >= 0")
        for name in ("max_generation_drop", "max_avg_forgetting"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
                raise LineageConfigError(f"lineage setting {name}={v!r} must be a fraction in [0, 1] (or unset: off)")
        if self.guard_action not in GUARD_ACTIONS:
            raise LineageConfigError(f"lineage setting guard_action={self.guard_action!r}: one of {', '.join(GUARD_ACTIONS)}")
        if self.hook_every and not self.hook_command:
            raise LineageConfigError("lineage setting hook_every > 0 needs hook_command")
        return self

    def run_request(self, tasks: Sequence[str] = ()):
        """The :class:`~cl_platform.suites.RunRequest` of a round over ``tasks``."""
        from cl_platform.suites import DEFAULT_SUITE, RunRequest

        suite = self.suite or ("tasks" if self.model else DEFAULT_SUITE)
        return RunRequest(suite=suite, tasks=list(tasks), model=self.model, spec=self.spec,
                          kd_stream=self.kd_stream, probe_stream=self.probe_stream, quick=self.quick)

    def includes(self, task: str) -> bool:
        """True when ``task`` matches one of the :attr:`include` patterns."""
        return any(fnmatch.fnmatchcase(task, p) for p in self.include)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.retry_max_seconds, self.retry_base_seconds * 2 ** max(0, attempt - 1)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "lineage settings") -> "LineageSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LineageConfigError(f"{where}: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


def settings_path(lineage: str) -> str:
    return f"{lineage_dir(lineage)}/lineage.json"


#: Longest value of one setting shown in a difference report.
_MAX_SHOWN_CHARS = 200


def settings_from_command_line(overrides: Mapping[str, Any]) -> LineageSettings:
    """The settings in force: ``overrides`` (what the command line, the ConfigMap or the environment
    set) over the defaults; raises :class:`LineageConfigError` naming the bad setting."""
    return LineageSettings.from_dict(dict(overrides), where="command line")


def load_settings_record(store: Store, lineage: str) -> Optional[dict[str, Any]]:
    """The settings the last scheduler of ``lineage`` recorded (raw data, never validated nor
    obeyed); ``None`` when there is no readable record."""
    try:
        doc = json.loads(store.read_bytes(settings_path(lineage)).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    settings = doc.get("settings") if isinstance(doc, dict) else None
    return settings if isinstance(settings, dict) else None


def _shown(value: Any) -> Any:
    text = json.dumps(value, default=str)
    return value if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "..."


def settings_differences(recorded: Optional[Mapping[str, Any]], in_force: LineageSettings) -> dict[str, dict[str, Any]]:
    """``{setting: {"recorded": ..., "in_force": ...}}`` for every setting of the record whose value
    differs from the one in force (a recorded key that is no setting shows ``in_force: None``)."""
    if not recorded:
        return {}
    current = in_force.to_dict()
    return {str(k): {"recorded": _shown(v), "in_force": _shown(current.get(k))}
            for k, v in sorted(recorded.items(), key=lambda kv: str(kv[0])) if v != current.get(k)}


def record_settings(store: Store, lineage: str, settings: LineageSettings, *, holder: Optional[str] = None,
                    at: Optional[float] = None) -> dict[str, dict[str, Any]]:
    """Write ``lineages/<name>/lineage.json``: a record of the settings in force (for ``status``
    and for the next start's report). Returns the differences from the previous record.

    The record is data: the next scheduler compares its own settings with it and reports what
    differs; it never reads a setting from it.
    """
    diff = settings_differences(load_settings_record(store, lineage), settings)
    doc = {"lineage": lineage, "settings": settings.to_dict(), "recorded_by": holder, "recorded_at": at,
           "note": "a record of the settings in force; the scheduler takes its settings from its command line only"}
    store.write_json(settings_path(lineage), doc)
    return diff


__all__ = [
    "GUARD_ACTIONS",
    "LineageConfigError",
    "LineageSettings",
    "MAX_LINEAGE_CHARS",
    "QUICK_STEPS",
    "RESERVED_JOB_FLAGS",
    "TUNE_OBJECTIVES",
    "check_job_args",
    "lineage_dir",
    "load_settings_record",
    "record_settings",
    "settings_differences",
    "settings_from_command_line",
    "settings_path",
    "tunable_settings",
    "tune_sweep_doc",
    "tuned_job_args",
    "validate_lineage_name",
]
