"""The driver of a sweep: prepare the shared inputs once, run Ray Tune with Optuna, write the results.

:func:`run_sweep` does, in order and before any trial starts:

1. the store, the suite (written if absent), the base model (pre-trained if absent) and the task
   checks (a bad task is an immediate error naming it);
2. Ray (embedded, or the cluster of ``--ray-address`` / ``RAY_ADDRESS``) and the resource check:
   ``max_concurrent_trials x num_workers`` workers must fit the cluster, else a clear error;
3. the teacher cache, computed once per (base model, KD stream, K, T) and shared by every trial;

then runs the trials (:func:`cl_platform.sweeps.trial.sweep_trial`) under ``OptunaSearch`` (TPE;
single- or multi-objective) and ASHA on rounds, and writes ``<store>/sweeps/<name>/``
(:mod:`cl_platform.sweeps.results`).

Tune's own state (``tuner.pkl``, the experiment state, the Optuna searcher's state, per-trial logs
and TensorBoard event files) lives in a local directory of the machine that runs the sweep driver,
:func:`tune_experiment_dir`: ``~/.cache/cl_platform/tune/<sha256 of the store URL>/<name>/``, or
``<tune_dir>/...`` (``--tune-dir``). Never in the store: that state is pickles, and the store is a
shared bucket that anyone who may write tasks can write, so restoring Tune from it would run
whatever code a planted ``tuner.pkl`` names; and Tune pickles its ``storage_filesystem``, an S3
filesystem with the store's keys, into that state. ``resume=True`` restores from the local
directory only (with the Optuna searcher's state) and runs only the trials that had not finished:
a job retry on the same head resumes. On another machine there is no Tune state to restore, and
Tune cannot re-attach new trials to the old trials' runs (a trial's run is named after its Tune
trial id), so a resume there is refused with an error that names the machine and directory that
hold the state (resume there, or pass ``--tune-dir`` to a copy of it); the finished trials' runs
and ledgers stay in the store. A ``tune/`` directory that older versions kept in
``<store>/sweeps/<name>/`` is never read.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ray.tune import Callback

from cl_platform.store import Store
from cl_platform.sweeps.cleanup import release_orphaned_worker_groups
from cl_platform.sweeps.space import SweepSpec, default_point

#: Where Tune's state of older versions sits inside ``<store>/sweeps/<name>/`` (never read).
TUNE_DIR = "tune"
#: The default root of the local Tune directories (:func:`tune_experiment_dir`).
DEFAULT_TUNE_ROOT = os.path.join("~", ".cache", "cl_platform", "tune")
#: CPUs the Tune function of a trial reserves (it only drives the TorchTrainer).
TRIAL_FUNCTION_CPUS = 0.01
#: CPUs that must stay free besides the trials' reservations: Ray Data's read / map tasks each ask
#: for a whole CPU, and with none free a trial's data pipeline waits forever (measured: a 2-CPU
#: cluster with a 1-CPU worker plus a 0.01-CPU trial function hangs; 0.99 CPU per worker runs).
DATA_CPUS = 1.0


class SweepExistsError(ValueError):
    """The sweep already has Tune state and neither resume nor a new name was asked for."""


class SweepChangedError(ValueError):
    """``--resume`` with a sweep file whose space, orders or settings differ from the original's."""


class SweepStateElsewhereError(ValueError):
    """``--resume`` of a sweep whose Tune state is on another machine (or in another ``--tune-dir``)."""


def tune_experiment_dir(store_url: str, name: str, tune_dir: Optional[str] = None) -> str:
    """The local directory of a sweep's Tune state: ``<root>/<sha256(store URL)[:16]>/<name>``.

    ``root`` is ``tune_dir`` (``--tune-dir``), by default ``~/.cache/cl_platform/tune``; the store's
    hash keeps sweeps of the same name in different stores apart.
    """
    root = os.path.abspath(os.path.expanduser(tune_dir or DEFAULT_TUNE_ROOT))
    return os.path.join(root, hashlib.sha256(store_url.encode("utf-8")).hexdigest()[:16], name)


def _tune_record(experiment: str) -> dict[str, str]:
    """Where this call keeps the Tune state (``sweep.json``'s ``tune``; for people and for the error
    of a resume elsewhere: it is never used as a path)."""
    return {"host": socket.gethostname(), "dir": experiment}


def _resume_elsewhere(name: str, recorded: Optional[dict], experiment: str) -> SweepStateElsewhereError:
    where = (f"it was written to {recorded.get('dir')!r} on host {recorded.get('host')!r}" if recorded else
             f"the store holds only the `{TUNE_DIR}/` directory of an older version, which is never read")
    return SweepStateElsewhereError(
        f"sweep {name!r} cannot be resumed here: its Tune state is not in {experiment} on {socket.gethostname()}; "
        f"{where}. Tune's state holds pickles, so it stays on the machine that wrote it and is never read from "
        "the store. Resume on that machine, or pass --tune-dir DIR where DIR/<store hash>/<sweep> is a copy of "
        "that directory, or give the sweep another `name` (the finished trials' runs stay in the store)")


def _check_same_spec(spec: SweepSpec, recorded: dict) -> None:
    import json

    now = json.loads(json.dumps(spec.to_dict()))  # the form sweep.json stores
    ignore = {"source", "description", "store"}
    diff = sorted(k for k in set(now) | set(recorded) if k not in ignore and now.get(k) != recorded.get(k))
    if diff:
        raise SweepChangedError(
            f"sweep {spec.name!r} was started with a different sweep file (differs at: {', '.join(diff)}); resume "
            "it with the same file, or give the changed sweep another `name`")


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` returns.

    Attributes:
        name: sweep name.
        uri: ``<store>/sweeps/<name>`` as a URI.
        trials: the rows of the trials table (:func:`cl_platform.sweeps.results.collect_trials`).
        files: store paths written (table, JSONs, plot, summary).
        interrupted: the sweep stopped before every trial finished (resume it with ``--resume``).
        seconds: wall time of this call.
        teacher_cache: store path of the shared teacher cache (``None``: the method has no KD).
    """

    name: str
    uri: str
    trials: list[dict[str, Any]]
    files: dict[str, str]
    interrupted: bool
    seconds: float
    teacher_cache: Optional[str] = None


@dataclass
class _Session:
    """Per-process options of the progress callback (Tune pickles callbacks into its state, so a
    resumed sweep gets the original callback objects back; they read these instead)."""

    log: Callable[[str], None] = print
    stop_after: Optional[int] = None
    num_rounds: int = 1
    total: int = 0
    started: float = field(default_factory=time.time)
    #: trials known to have ended (returned, stopped by ASHA, or ended in an earlier call); a trial
    #: Tune marks TERMINATED only because the sweep was interrupted is not among them.
    finished: set = field(default_factory=set)
    first_step: bool = True


_SESSION = _Session()


class SweepProgress(Callback):
    """Progress lines per trial start, round and end; optional resumable stop after N trials."""

    def setup(self, **info):
        self.trials = []
        self.index: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.completed_here = 0

    def _tag(self, trial) -> str:
        if trial.trial_id not in self.index:
            self.index[trial.trial_id] = len(self.index) + 1
        return f"trial {self.index[trial.trial_id]}/{_SESSION.total} {trial.trial_id}"

    def on_step_begin(self, iteration, trials, **info):
        if _SESSION.first_step:  # trials that had ended before a resume
            _SESSION.first_step = False
            _SESSION.finished.update(t.trial_id for t in trials if t.status == "TERMINATED")

    def on_step_end(self, iteration, trials, **info):
        self.trials = trials
        now = time.time()
        if now - getattr(self, "_last_reap", 0.0) > 3.0:  # stopped trials' worker groups (cleanup.py)
            self._last_reap = now
            release_orphaned_worker_groups(_SESSION.log)
        for t in trials:  # number trials in creation order, restored ones included
            self._tag(t)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.trials = trials
        self.started[trial.trial_id] = time.time()
        params = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.config.items()))
        _SESSION.log(f"[sweep] {self._tag(trial)} started: {params}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        extra = ""
        if result.get("orders", 1) > 1:
            extra = f" (mean of {result['orders']} orders, std acc {_pct(result.get('avg_accuracy_std'))})"
        _SESSION.log(f"[sweep] {self._tag(trial)} round {result.get('rounds_done')}/{_SESSION.num_rounds} "
                     f"'{result.get('task')}': avg accuracy {_pct(result.get('avg_accuracy'))}, "
                     f"generation drop {_pp(result.get('generation_drop'))}{extra}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.trials = trials
        rounds = (trial.last_result or {}).get("rounds_done", 0)
        how = "all rounds" if rounds == _SESSION.num_rounds else f"stopped early by ASHA after round {rounds}"
        secs = time.time() - self.started.get(trial.trial_id, time.time())
        _SESSION.log(f"[sweep] {self._tag(trial)} finished ({how}) in {secs:.0f}s; "
                     f"{time.time() - _SESSION.started:.0f}s since the sweep started")
        self.completed_here += 1
        _SESSION.finished.add(trial.trial_id)
        if _SESSION.stop_after is not None and self.completed_here >= _SESSION.stop_after:
            _SESSION.log(f"[sweep] stopping after {self.completed_here} trial(s) as asked; resume with --resume")
            _SESSION.stop_after = None
            os.kill(os.getpid(), signal.SIGINT)  # Tune's own graceful stop: state saved, resumable

    def on_trial_error(self, iteration, trials, trial, **info):
        self.trials = trials
        _SESSION.log(f"[sweep] {self._tag(trial)} failed: see {trial.path or trial.local_path}")

    def on_experiment_end(self, trials, **info):
        self.trials = trials


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _pp(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f} pp"


def sweep_prefix(name: str) -> str:
    """Store path of a sweep's results: ``sweeps/<name>``."""
    return f"sweeps/{name}"


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune search space of the sweep (OptunaSearch converts it to Optuna distributions)."""
    from ray import tune

    space: dict[str, Any] = {}
    for d in spec.space:
        if d.type == "choice":
            space[d.name] = tune.choice(list(d.values))
        elif d.type == "loguniform":
            space[d.name] = tune.loguniform(d.low, d.high)
        else:
            space[d.name] = tune.uniform(d.low, d.high)
    if spec.orders.per_trial == "search" and len(spec.orders.orders) > 1:
        space["order"] = tune.choice(list(range(len(spec.orders.orders))))
    return space


def _searcher(spec: SweepSpec):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    s = spec.search
    points = None
    if s.include_default:
        point = default_point(spec)
        if spec.orders.per_trial != "search" or len(spec.orders.orders) == 1:
            point.pop("order", None)
        points = [point]
    sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    if s.multi_objective:  # metric/mode lists go on OptunaSearch, not TuneConfig
        return OptunaSearch(metric=s.metrics, mode=s.modes, points_to_evaluate=points, sampler=sampler)
    return OptunaSearch(metric=s.metrics[0], mode=s.modes[0], points_to_evaluate=points, sampler=sampler)


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sched = spec.search.scheduler
    if sched.type == "none" or spec.num_rounds < 2:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric=spec.search.metrics[0], mode=spec.search.modes[0],
                         max_t=spec.num_rounds, grace_period=sched.grace_period,
                         reduction_factor=sched.reduction_factor,
                         # a trial at its last round finishes by itself (results and report written);
                         # stopping it there would only kill the fit while it wraps up
                         stop_last_trials=False)


def run_request(spec: SweepSpec):
    """The :class:`~cl_platform.suites.RunRequest` of a sweep file (its suite, model, streams, probe)."""
    from cl_platform.suites import RunRequest

    return RunRequest(suite=spec.suite, tasks=list(spec.tasks), model=spec.model, spec=spec.spec,
                      kd_stream=spec.kd_stream, probe_stream=spec.probe_stream, probe_size=spec.probe_size)


def prepare_inputs(spec: SweepSpec, store: Store, *, log: Callable[[str], None] = print):
    """The sweep's :class:`~cl_platform.suites.RunInputs` (no Ray needed); raises naming a bad input."""
    from cl_platform.suites import resolve_run_inputs

    return resolve_run_inputs(store, run_request(spec), log=lambda m: log(f"[sweep] {m}"))


def check_resources(spec: SweepSpec) -> None:
    """The concurrent trials' reservations must fit the cluster and leave a CPU for Ray Data.

    Asked: ``max_concurrent_trials x (num_workers x cpus_per_worker + 0.01)`` CPUs (the workers and
    the Tune functions) plus :data:`DATA_CPUS`; GPUs likewise. Raises
    :class:`~cl_platform.train.resources.InsufficientResourcesError` naming the sweep file's knobs.
    """
    from cl_platform.train.resources import InsufficientResourcesError, validate_resources

    c, r = spec.search.max_concurrent_trials, spec.resources
    try:
        validate_resources(c * r.num_workers, r.cpus_per_worker, r.gpus_per_worker,
                           extra_cpus=c * TRIAL_FUNCTION_CPUS + DATA_CPUS)
    except InsufficientResourcesError as exc:
        raise InsufficientResourcesError(
            f"sweep {spec.name!r}: search.max_concurrent_trials {c} x resources.num_workers {r.num_workers} "
            f"(x {r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU each), plus {TRIAL_FUNCTION_CPUS:g} CPU per "
            f"trial function and {DATA_CPUS:g} CPU kept free for Ray Data, do not fit: {exc}. Lower "
            "search.max_concurrent_trials or resources in the sweep file (on one small machine: "
            "max_concurrent_trials 1, num_workers 1, cpus_per_worker 0.99)",
            resource=exc.resource, asked=exc.asked, available=exc.available,
        ) from None


def build_plan(spec: SweepSpec, inputs, teacher_cache: Optional[str]):
    """The :class:`~cl_platform.sweeps.trial.TrialPlan` shared by every trial."""
    from cl_platform.methods import MethodConfig
    from cl_platform.sweeps.space import sweep_params
    from cl_platform.sweeps.trial import TrialPlan

    method_fixed = {k: v for k, v in spec.fixed.items() if sweep_params()[k].target == "method"}
    training_fixed = {k: v for k, v in spec.fixed.items() if k not in method_fixed}
    seed = training_fixed.get("seed", 0)
    method_config = {**MethodConfig().to_dict(), **method_fixed, "seed": seed}
    fields = inputs.sequence_fields()
    sequence = {
        "model_uri": fields["model_uri"], "spec": fields["spec"], "kd_stream": fields["kd_stream"],
        "probe": fields["probe"], "teacher_cache": teacher_cache, "num_workers": spec.resources.num_workers,
        "cpus_per_worker": spec.resources.cpus_per_worker, "gpus_per_worker": spec.resources.gpus_per_worker,
        **training_fixed,
    }
    return TrialPlan(sweep=spec.name, store=inputs.store.url, method=spec.method,
                     orders=[list(o) for o in spec.orders.orders], per_trial=spec.orders.per_trial,
                     sequence=sequence, method_config=method_config)


def run_sweep(
    spec: SweepSpec,
    *,
    store: Optional[str] = None,
    resume: bool = False,
    ray_address: Optional[str] = None,
    stop_after: Optional[int] = None,
    tune_dir: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run (or with ``resume`` continue) the sweep ``spec``; see the module docstring.

    Args:
        spec: the parsed sweep file.
        store: store URL overriding ``spec.store``.
        resume: continue an interrupted sweep from its Tune state (finished trials are kept).
        ray_address: Ray cluster to use (default ``RAY_ADDRESS``, else an embedded local Ray).
        stop_after: stop, resumably, once this many trials have finished in this call.
        tune_dir: root of the local directory of Tune's state (:func:`tune_experiment_dir`).
        log: progress sink.

    Raises:
        SweepExistsError: a fresh start over existing state (``resume`` of nothing starts the sweep).
        SweepChangedError: ``resume`` with a changed sweep file.
        SweepStateElsewhereError: ``resume`` of a sweep whose Tune state is not in this machine's
            directory (see the module docstring).
        InsufficientResourcesError: the trials' workers cannot fit the cluster.
        TaskValidationError, ValueError: a bad task, model or stream (named).
    """
    from ray import tune

    from cl_platform.methods import MethodConfig, get_method
    from cl_platform.sweeps import results as R
    from cl_platform.sweeps.trial import sweep_trial
    from cl_platform.train.resources import init_ray, runtime_env_for_store
    from cl_platform.train.sequence import prepare_teacher

    t0 = time.time()
    st = Store(store or spec.store)
    prefix = sweep_prefix(spec.name)
    experiment = tune_experiment_dir(st.url, spec.name, tune_dir)
    has_state = os.path.isfile(os.path.join(experiment, "tuner.pkl"))  # local: written by this machine's Tune
    # sweep.json is written once Tune's state exists (below): with it, the sweep has trials somewhere
    recorded = st.read_json(f"{prefix}/sweep.json") if st.exists(f"{prefix}/sweep.json") else None
    legacy = st.exists(f"{prefix}/{TUNE_DIR}")
    if legacy:
        log(f"[sweep] ignoring {st.uri(f'{prefix}/{TUNE_DIR}')}: Tune state of an older version kept in the store; "
            "it holds pickles and is never read")
    if resume and not has_state:
        if recorded is not None or legacy:
            raise _resume_elsewhere(spec.name, (recorded or {}).get("tune"), experiment)
        # like a run's ledger: --resume of nothing starts it (safe for job retries)
        log(f"[sweep] {spec.name}: no earlier Tune state in {experiment}; starting it")
        resume = False
    if not resume and (has_state or recorded is not None or legacy):
        raise SweepExistsError(f"sweep {spec.name!r} already has results at {st.uri(prefix)}"
                               + (f" and Tune state in {experiment}" if has_state else "")
                               + "; pass --resume to continue it, or choose another `name`")
    if resume and recorded is not None:
        _check_same_spec(spec, recorded.get("spec", {}))
    log(f"[sweep] {spec.name}: {spec.search.num_samples} trials of {spec.method} over {spec.num_rounds} tasks "
        f"({', '.join(spec.tasks)}), {len(spec.orders.orders)} order(s) {spec.orders.per_trial}; objectives "
        + ", ".join(f"{m} ({mode})" for m, mode in spec.search.objectives) + f"; store {st.uri()}")
    inputs = prepare_inputs(spec, st, log=log)
    started = init_ray(ray_address, runtime_env=runtime_env_for_store(st))
    try:
        check_resources(spec)
        cache = None
        if get_method(spec.method).needs_teacher and inputs.kd_stream:
            mc = MethodConfig(**{**MethodConfig().to_dict(), **{k: v for k, v in spec.fixed.items()
                                                                if k in ("kd_top_k", "kd_temperature")}})
            from cl_platform.data.pipeline import configure_data_context
            from cl_platform.train.ray_logging import set_routine_logging

            configure_data_context()  # the cache build is a Ray Data job on this driver
            set_routine_logging(False)
            cache = prepare_teacher(st, inputs.spec, model_uri=inputs.model_uri, kd_stream=inputs.kd_stream,
                                    k=mc.kd_top_k, temperature=mc.kd_temperature,
                                    mode=spec.fixed.get("teacher_mode", "auto"),
                                    limit_gb=float(spec.fixed.get("teacher_cache_limit_gb", 4.0)),
                                    precision=spec.fixed.get("precision", "fp32"),
                                    log=lambda m: log(f"[sweep] {m}"))
        plan = build_plan(spec, inputs, cache)

        _SESSION.log, _SESSION.stop_after, _SESSION.num_rounds = log, stop_after, spec.num_rounds
        _SESSION.total, _SESSION.started = spec.search.num_samples, time.time()
        _SESSION.finished, _SESSION.first_step = set(), True
        progress = SweepProgress()
        trainable = tune.with_resources(tune.with_parameters(sweep_trial, plan=plan.to_dict()),
                                        {"cpu": TRIAL_FUNCTION_CPUS})
        # Tune's state on this machine only, no storage_filesystem (it would be pickled with the
        # store's keys): see the module docstring
        if resume:
            log(f"[sweep] resuming from {experiment} (finished trials are kept; unfinished ones run again)")
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, restart_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(spec),
                tune_config=tune.TuneConfig(search_alg=_searcher(spec), scheduler=_scheduler(spec),
                                            num_samples=spec.search.num_samples,
                                            max_concurrent_trials=spec.search.max_concurrent_trials,
                                            reuse_actors=False),
                run_config=tune.RunConfig(name=os.path.basename(experiment), storage_path=os.path.dirname(experiment),
                                          callbacks=[progress], verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=0)),
            )
        st.write_json(f"{prefix}/sweep.json", {"spec": spec.to_dict(), "plan": plan.to_dict(),
                                               "tune": _tune_record(experiment)})
        grid = tuner.fit()
        trials = _trials_of(grid, tuner)
        rows = R.collect_trials(st, spec, plan, trials, finished=_SESSION.finished)
        files = R.write_sweep_results(st, prefix, spec, rows, seconds=time.time() - t0, teacher_cache=cache,
                                      tune=_tune_record(experiment))
        interrupted = any(r["state"] == "unfinished" for r in rows) or len(rows) < spec.search.num_samples
        log("")
        log(R.format_summary(spec, rows, st.uri(prefix)))
        log(f"[sweep] {'interrupted' if interrupted else 'done'} in {time.time() - t0:.0f}s; results in "
            f"{st.uri(prefix)}" + ("; continue with --resume" if interrupted else ""))
        log(f"[sweep] Tune state and TensorBoard logs (on this machine): tensorboard --logdir {experiment}")
        return SweepOutcome(name=spec.name, uri=st.uri(prefix), trials=rows, files=files, interrupted=interrupted,
                            seconds=time.time() - t0, teacher_cache=cache)
    finally:
        if started:
            import ray

            ray.shutdown()


def _trials_of(grid, tuner) -> list:
    """Every trial of the experiment (restored ones included) with status and config."""
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = list(getattr(analysis, "trials", None) or [])
    if not trials:
        raise RuntimeError("Tune returned no trials; see the Tune logs in the sweep's local Tune directory")
    return trials
