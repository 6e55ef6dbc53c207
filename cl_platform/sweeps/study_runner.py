"""The driver of a study: every (order, seed) cell's sequence on Ray, as many at once as the cluster holds.

:func:`run_study` checks the study's settings against an earlier call of the same name, starts or
joins Ray, checks that one run's workers fit the cluster, builds the teacher cache once (shared by
every run), then runs each cell that has no ``results.json`` yet as a Ray task calling
:func:`cl_platform.train.sequence.run_sequence` (all methods in one run, resumed from its ledger
when an earlier call was interrupted); cells already finished are read back, not rerun. Runs go
side by side while their reservations fit: each run's workers, plus one CPU kept free for Ray
Data's read and map tasks (:data:`cl_platform.sweeps.runner.DATA_CPUS`). A run that fails is
named in the summary and left out of the aggregates; the others go on.

Writes ``<store>/studies/<name>/``: ``study.json`` (:func:`cl_platform.sweeps.study.study_document`),
``summary.md``, ``tables.csv`` (scope, method, metric, mean, std, n) and one ``plot_<metric>.png``
per metric (:mod:`cl_platform.sweeps.study_report`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence

from cl_platform.store import Store
from cl_platform.sweeps import study as S
from cl_platform.sweeps import study_report as SR
from cl_platform.sweeps.runner import DATA_CPUS
from cl_platform.train.config import SequenceConfig


class StudyChangedError(ValueError):
    """A study of this name was run with other settings."""


@dataclass
class StudyOutcome:
    """What :func:`run_study` returns: the study's name, URI, ``study.json`` object, files written, wall time."""

    name: str
    uri: str
    doc: dict[str, Any]
    files: dict[str, str]
    seconds: float


def study_prefix(name: str) -> str:
    """Store path of a study's outputs: ``studies/<name>``."""
    return f"studies/{name}"


def concurrent_runs(cluster: Mapping[str, float], num_workers: int, cpus_per_worker: float,
                    gpus_per_worker: float) -> int:
    """How many runs fit side by side in ``cluster`` (``ray.cluster_resources()``): each run's workers,
    plus :data:`DATA_CPUS` kept free for Ray Data (0: not even one run fits).

    >>> concurrent_runs({"CPU": 2.0}, 1, 1.0, 0.0), concurrent_runs({"CPU": 16.0, "GPU": 2.0}, 1, 2.0, 1.0)
    (1, 2)
    """
    fits = math.floor((float(cluster.get("CPU", 0.0)) - DATA_CPUS) / (num_workers * cpus_per_worker) + 1e-9)
    if gpus_per_worker > 0:
        fits = min(fits, math.floor(float(cluster.get("GPU", 0.0)) / (num_workers * gpus_per_worker) + 1e-9))
    return max(0, fits)


def cell_config(base: SequenceConfig, cell: Mapping[str, Any]) -> SequenceConfig:
    """The ``SequenceConfig`` of one cell: ``base`` with the cell's run, order and seed (method seed too)."""
    return replace(base, run=cell["run"], tasks=list(cell["order"]), seed=int(cell["seed"]),
                   method_config={**base.method_config, "seed": int(cell["seed"])})


def study_settings(base: SequenceConfig, methods: Sequence[str], order_seed: int) -> dict[str, Any]:
    """What must stay the same for a study's runs to be read back: methods, base order, order seed and
    every training and method setting except the per-cell run, order and seed."""
    cfg = base.to_dict()
    for key in ("run", "seed", "method", "teacher_cache", "from_checkpoint", "earlier_tasks"):
        cfg.pop(key, None)
    cfg["base_order"] = cfg.pop("tasks")
    cfg["method_config"] = {k: v for k, v in cfg["method_config"].items() if k != "seed"}
    return json.loads(json.dumps({"methods": list(methods), "order_seed": order_seed, **cfg}))


def _check_same(name: str, recorded: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    diff = sorted(k for k in set(now) | set(recorded) if now.get(k) != recorded.get(k))
    if diff:
        raise StudyChangedError(f"study {name!r} was run with other settings (they differ at: {', '.join(diff)}); "
                                "run it with the same settings to add to it, or give this one another --name")


def _cell_task(cfg: dict[str, Any], methods: list[str], verbose: bool) -> None:
    """One cell's sequence (the body of a Ray task)."""
    from cl_platform.train.sequence import run_sequence

    cfg = SequenceConfig.from_dict(cfg)
    run_sequence(cfg, methods, resume=True, log=lambda m: print(f"[{cfg.run}] {m}", flush=True), verbose=verbose)


def _error_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def run_study(
    base: SequenceConfig,
    methods: Sequence[str],
    *,
    name: str,
    orders: int,
    seeds: int,
    order_seed: int = 0,
    max_concurrent: Optional[int] = None,
    ray_address: Optional[str] = None,
    verbose: bool = False,
    log: Callable[[str], None] = print,
) -> StudyOutcome:
    """Run (or continue) the study ``name``: ``orders`` task orders (``base.tasks`` first, then
    permutations seeded by ``order_seed``) x ``seeds`` seeds (from ``base.seed``), every method in
    each run. See the module docstring. Raises :class:`StudyChangedError`, or the resource check's
    ``InsufficientResourcesError``, before any run starts.
    """
    import ray

    from cl_platform.eval.report import read_results
    from cl_platform.methods import get_method
    from cl_platform.models.modality import ModalitySpec
    from cl_platform.train.config import auto_gpus_per_worker
    from cl_platform.train.resources import init_ray, runtime_env_for_store, validate_resources
    from cl_platform.train.sequence import teacher_of

    t0 = time.time()
    S.check_study_name(name)
    for m in methods:
        get_method(m)
    store = Store(base.store)
    prefix = study_prefix(name)
    order_list = S.study_orders(base.tasks, orders, order_seed)
    if orders > math.factorial(len(base.tasks)):
        log(f"[study] {len(base.tasks)} tasks have only {math.factorial(len(base.tasks))} orders; some orders repeat")
    seed_list = S.study_seeds(base.seed, seeds)
    cells = S.study_cells(name, order_list, seed_list)
    settings = study_settings(base, methods, order_seed)
    if store.exists(f"{prefix}/study.json"):
        _check_same(name, store.read_json(f"{prefix}/study.json").get("settings", {}), settings)
    todo = [c for c in cells if not store.exists(f"runs/{c['run']}/results.json")]
    log(f"[study] {name}: {', '.join(methods)} over {len(order_list)} order(s) x {len(seed_list)} seed(s) = "
        f"{len(cells)} runs ({len(cells) - len(todo)} already finished, read back); store {store.uri()}")
    for k, o in enumerate(order_list):
        log(f"[study]   order {k}: {', '.join(o)}")
    errors: dict[str, str] = {}
    if todo:
        started = init_ray(ray_address, runtime_env=runtime_env_for_store(store))
        try:
            if base.gpus_per_worker is None:
                base = replace(base, gpus_per_worker=auto_gpus_per_worker(ray.cluster_resources()))
            validate_resources(base.num_workers, base.cpus_per_worker, base.gpus_per_worker, extra_cpus=DATA_CPUS)
            fits = concurrent_runs(ray.cluster_resources(), base.num_workers, base.cpus_per_worker,
                                   base.gpus_per_worker)
            width = max(1, min(fits, max_concurrent or fits, len(todo)))
            log(f"[study] {len(todo)} run(s) to do, {width} at a time (the cluster holds {fits})")
            if any(get_method(m).needs_teacher for m in methods) and base.kd_stream:
                from cl_platform.data.pipeline import configure_data_context
                from cl_platform.train.ray_logging import set_routine_logging

                configure_data_context()  # the cache build is a Ray Data job on this driver
                set_routine_logging(verbose)
                teacher_of(store, base, ModalitySpec.from_dict(base.spec), log=lambda m: log(f"[study] {m}"))
            errors = _run_cells(base, list(methods), todo, width, len(cells), verbose=verbose, log=log)
        finally:
            if started:
                ray.shutdown()
    runs = []
    for c in cells:
        if store.exists(f"runs/{c['run']}/results.json"):
            runs.append({**c, "status": S.DONE, "metrics": S.run_metrics(read_results(store, f"runs/{c['run']}"))})
        else:
            runs.append({**c, "status": S.FAILED, "error": errors.get(c["run"], "no results.json")})
    doc = S.study_document(name, methods=methods, orders=order_list, seeds=seed_list, runs=runs, settings=settings,
                           order_seed=order_seed)
    files = write_study(store, prefix, doc)
    metrics = SR.metric_names(doc)
    log("")
    log(f"[study] {name}: mean ± std (ddof {doc['std_ddof']}, values x 100) over {len(runs) - len(doc['failed'])} "
        f"finished run(s)")
    log(SR.format_table(doc["overall"], metrics))
    for f in doc["failed"]:
        log(f"[study] failed, left out: {f['run']}: {f['error']}")
    log(f"[study] done in {time.time() - t0:.0f}s; summary {store.uri(files['summary'])}")
    return StudyOutcome(name=name, uri=store.uri(prefix), doc=doc, files=files, seconds=time.time() - t0)


def _run_cells(base: SequenceConfig, methods: list[str], todo: list[dict[str, Any]], width: int, total: int, *,
               verbose: bool, log: Callable[[str], None]) -> dict[str, str]:
    """Run the cells as Ray tasks, ``width`` at a time; returns run -> error of the runs that failed."""
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(_cell_task)
    queue = list(todo)
    pending: dict[Any, tuple[dict[str, Any], float]] = {}
    errors: dict[str, str] = {}
    done = total - len(todo)
    while queue or pending:
        while queue and len(pending) < width:
            c = queue.pop(0)
            pending[task.remote(cell_config(base, c).to_dict(), methods, verbose)] = (c, time.time())
            log(f"[study] run {c['run']} started: order {c['order_index']} ({', '.join(c['order'])}), seed {c['seed']}")
        ready, _ = ray.wait(list(pending), num_returns=1)
        c, t = pending.pop(ready[0])
        done += 1
        try:
            ray.get(ready[0])
            log(f"[study] run {done}/{total} {c['run']} finished in {time.time() - t:.0f}s")
        except Exception as exc:  # one failed run must not stop the others; it is named in the summary
            errors[c["run"]] = _error_line(exc)
            log(f"[study] run {done}/{total} {c['run']} FAILED after {time.time() - t:.0f}s: {errors[c['run']]}")
    return errors


def tables_csv(doc: Mapping[str, Any]) -> str:
    """Every aggregate as CSV rows: scope (``all`` or ``order <k>``), method, metric, mean, std, n."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["scope", "method", "metric", "mean", "std", "n"])
    scopes = [("all", doc["overall"])] + [(f"order {o['order_index']}", o["methods"]) for o in doc["per_order"]]
    for scope, agg in scopes:
        for method, per in agg.items():
            for metric, s in per.items():
                w.writerow([scope, method, metric, s["mean"], "" if s["std"] is None else s["std"], s["n"]])
    return buf.getvalue()


def write_study(store: Store, prefix: str, doc: Mapping[str, Any]) -> dict[str, str]:
    """Write ``study.json``, ``tables.csv``, the PNGs and ``summary.md`` under ``prefix``; returns their paths."""
    files = {"study": f"{prefix}/study.json", "tables": f"{prefix}/tables.csv", "summary": f"{prefix}/summary.md"}
    store.write_json(files["study"], doc)
    store.write_bytes(files["tables"], tables_csv(doc).encode())
    images = SR.study_images(doc) if doc["overall"] else {}
    for metric, png in images.items():
        files[SR.image_name(metric)] = f"{prefix}/{SR.image_name(metric)}"
        store.write_bytes(files[SR.image_name(metric)], png)
    store.write_bytes(files["summary"], SR.render_summary(doc, {m: SR.image_name(m) for m in images}).encode())
    return files
