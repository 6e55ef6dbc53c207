"""The driver of a continual-learning sequence: validate, prepare, fit on Ray Train, report.

``run_sequence`` checks every task before anything starts (a corrupt task is an immediate error
naming it), checks the requested workers against the cluster, computes the teacher cache once per
(base model, KD stream, K, T), then runs one ``TorchTrainer.fit`` whose loop trains each method in
turn through every round (:mod:`cl_platform.train.worker`), and finally writes ``results.json``
and the report.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

from cl_platform.data.task_format import dataset_dir, read_stream, read_task
from cl_platform.methods import MethodConfig, get_method
from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store
from cl_platform.train.config import SequenceConfig, auto_gpus_per_worker
from cl_platform.train.ledger import Ledger
from cl_platform.train import replay


def model_identity(store: Store, model_uri: str) -> str:
    """A stable id of a stored model directory: its URI and the sha256 of its config and file sizes."""
    prefix = model_uri[len(store.uri("")):].strip("/") if model_uri.startswith(store.uri("")) else None
    h = hashlib.sha256(model_uri.encode())
    if prefix is not None and store.exists(f"{prefix}/config.json"):
        h.update(store.read_bytes(f"{prefix}/config.json"))
        for name in store.list(prefix):
            h.update(f"{name}:{store.info(f'{prefix}/{name}').size}".encode())
    return h.hexdigest()


def prepare_teacher(store: Store, spec: ModalitySpec, *, model_uri: str, kd_stream: str, k: int, temperature: float,
                    mode: str = "auto", limit_gb: float = 4.0, actors: int = 1, gpus_per_actor: float = 0.0,
                    cpus_per_actor: float = 1.0, precision: str = "fp32",
                    log: Callable[[str], None] = print) -> Optional[str]:
    """The KD teacher of a run: the store prefix of its cache (built by a Ray Data job over
    ``actors`` actors if absent: :func:`cl_platform.train.teacher_build.build_teacher_cache`), or
    ``None`` for the online teacher (the workers run the frozen base themselves).

    ``mode`` ``auto`` estimates the cache from the KD stream's size and ``k`` and caches only when
    it fits ``limit_gb`` (:func:`cl_platform.methods.teacher.choose_teacher_mode`); the choice and
    its reason are logged. ``precision`` is the run's: a ``bf16`` run's cache comes from the base in
    bfloat16 (and is a cache of its own). Needs Ray running.
    """
    import pyarrow.compute as pc

    from cl_platform.methods.teacher import choose_teacher_mode
    from cl_platform.methods.teacher_cache import SHARD_INDEX, cache_key
    from cl_platform.train.teacher_build import build_teacher_cache

    k = min(k, spec.vocab_size)
    stream = read_stream(store, kd_stream, vocab_size=spec.vocab_size).data
    tokens = stream.column("tokens")
    positions = int(pc.sum(pc.list_value_length(tokens)).as_py() or 0)
    choice = choose_teacher_mode(mode, rows=stream.num_rows, positions=positions, k=k, limit_bytes=int(limit_gb * 2**30))
    log(f"teacher: {choice.reason}")
    if choice.mode == "online":
        return None
    manifest = store.read_json(f"streams/{kd_stream}/manifest.json")
    stream_id = f"{kd_stream}:" + hashlib.sha256(json.dumps(manifest.get("files", {}), sort_keys=True).encode()).hexdigest()
    base_id = model_identity(store, model_uri) + ("" if precision == "fp32" else f"@{precision}")
    key = cache_key(base_id, stream_id, k, temperature)
    prefix = f"cache/teacher/{key}"
    if store.exists(f"{prefix}/{SHARD_INDEX}"):
        log(f"teacher cache: reusing {store.uri(prefix)}")
        return prefix
    build_teacher_cache(store, model_uri, tokens, prefix=prefix, pad_id=spec.pad_id, k=k, temperature=temperature,
                        key=key, actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
                        precision=precision, log=log)
    return prefix


def teacher_of(store: Store, cfg: SequenceConfig, spec: ModalitySpec, *, log: Callable[[str], None] = print) -> Optional[str]:
    """:func:`prepare_teacher` with a run's settings (its workers' resources build the cache)."""
    mc = MethodConfig(**cfg.method_config)
    return prepare_teacher(store, spec, model_uri=cfg.model_uri, kd_stream=cfg.kd_stream, k=mc.kd_top_k,
                           temperature=mc.kd_temperature, mode=cfg.teacher_mode, limit_gb=cfg.teacher_cache_limit_gb,
                           actors=cfg.num_workers, gpus_per_actor=float(cfg.gpus_per_worker or 0.0),
                           cpus_per_actor=cfg.cpus_per_worker, precision=cfg.precision, log=log)


def validate_tasks(store: Store, tasks: Sequence[str], spec: ModalitySpec) -> None:
    """Read and validate every task (schema, sha256, vocabulary); raises naming the bad task."""
    if not tasks:
        raise ValueError("no tasks given")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"task order {list(tasks)} names a task twice")
    for t in tasks:
        task = read_task(store, t, vocab_size=spec.vocab_size)
        if task.spec_id != spec.spec_id:
            raise ValueError(f"task {t!r} was written for modality spec {task.spec_id!r}, the model uses {spec.spec_id!r}")


def check_method_capacity(cfg: SequenceConfig, methods: Sequence[str]) -> None:
    """Refuse before anything trains a sequence a method cannot hold: ``olora`` learns at most
    ``olora_slots`` tasks over its lineage (this run's tasks and the ones its --from-run chain learned)."""
    if "olora" in methods:
        slots = MethodConfig(**cfg.method_config).olora_slots
        needed = cfg.lineage_round(len(cfg.tasks))
        if needed > slots:
            raise ValueError(f"olora: {needed} tasks ({len(cfg.earlier_tasks or [])} learned before this run + "
                             f"{len(cfg.tasks)} in it) exceed MethodConfig.olora_slots (--olora-slots) = {slots}; "
                             "give it at least as many slots as tasks")


def fit_method(cfg: SequenceConfig, store: Store, *, callbacks: Optional[list] = None,
               log: Callable[[str], None] = print, verbose: bool = False) -> None:
    """One ``TorchTrainer.fit`` that walks every round of ``cfg.tasks`` with ``cfg.method``.

    Every round end reports ``method``, ``round``, ``task``, ``avg_accuracy`` (over the tasks
    trained so far), ``generation_score`` and ``generation_drop``; ``callbacks`` (e.g. Tune's
    ``TuneReportCallback``) receive those reports.
    """
    fit_methods([cfg], store, callbacks=callbacks, log=log, verbose=verbose)


def ray_run_name(methods: Sequence[str]) -> str:
    """Name of a fit's Ray Train run (``<store>/runs/<run>/ray/<name>``): its methods, joined by ``+``."""
    return "+".join(methods)


def _train_rows(store: Store, task: str) -> int:
    """Rows of ``task``'s train split, from its manifest."""
    return int(store.read_json(f"{dataset_dir(task)}/manifest.json")["rows"]["train"])


def fit_methods(cfgs: Sequence[SequenceConfig], store: Store, *, callbacks: Optional[list] = None,
                log: Callable[[str], None] = print, verbose: bool = False) -> None:
    """One ``TorchTrainer.fit`` whose loop trains each config's method in turn through every round.

    The configs differ only in ``method``, ``method_config`` and ``from_checkpoint``. The fit
    starts once and reads each task split once per worker for all of them (see
    :mod:`cl_platform.train.shards`), so several methods cost one fit's set-up. With
    ``replay_fraction`` > 0 the fit also reads the train split of every task some round replays
    (``replay_<task>``, whole in every worker; :mod:`cl_platform.train.replay`). Ray's routine
    per-report, per-checkpoint and per-dataset lines only with ``verbose``
    (:mod:`cl_platform.train.ray_logging`).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from cl_platform.data.pipeline import configure_data_context, stream_dataset, train_dataset
    from cl_platform.train.ray_logging import set_routine_logging, train_logging_config

    if not cfgs:
        raise ValueError("fit_methods needs at least one method config")
    cfg = cfgs[0]
    configure_data_context()
    set_routine_logging(verbose)
    spec = ModalitySpec.from_dict(cfg.spec)
    ranges = [list(r) for r in spec.image_token_ranges]
    datasets = {f"task_{i}": train_dataset(store, t, ranges) for i, t in enumerate(cfg.tasks)}
    rows = {f"task_{i}": _train_rows(store, t) for i, t in enumerate(cfg.tasks)}
    if any(get_method(c.method).needs_teacher for c in cfgs) and cfg.kd_stream:
        stream = read_stream(store, cfg.kd_stream, vocab_size=spec.vocab_size).data
        datasets["kd"] = stream_dataset(stream, ranges)
        rows["kd"] = stream.num_rows
    # the train splits some round replays, each read whole by every worker (none without replay)
    for t in replay.fit_replay_tasks(cfg.replay_fraction, cfg.batch_size, cfg.earlier_tasks, cfg.tasks):
        if not store.exists(f"{dataset_dir(t)}/manifest.json"):
            raise ValueError(f"replay: task {t!r}, learned before this run, is not in the store {store.uri('')}")
        datasets[replay.dataset_name(t)] = train_dataset(store, t, ranges)
        rows[replay.dataset_name(t)] = _train_rows(store, t)
    split = [n for n in datasets if not n.startswith(replay.DATASET_PREFIX)]
    fs, root = store.pyarrow_filesystem()
    storage = f"{root.rstrip('/')}/runs/{cfg.run}/ray"
    if store.is_local:
        fs = None
    from cl_platform.train.worker import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"methods": [c.to_dict() for c in cfgs], "rows": rows, "verbose": bool(verbose)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})},
        ),
        run_config=ray.train.RunConfig(
            name=ray_run_name([c.method for c in cfgs]), storage_path=storage, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks, logging_config=train_logging_config(verbose),
        ),
        datasets=datasets,
        # One worker needs no split: it reads each dataset itself instead of through a
        # SplitCoordinator actor per dataset (a process start each: about 2.8 s of CPU here).
        dataset_config=ray.train.DataConfig(datasets_to_split=split if cfg.num_workers > 1 else []),
    )
    trainer.fit()


def method_results(ledger: Ledger, method: str, num_tasks: int) -> dict[str, Any]:
    """Accuracy matrix, generation scores and base accuracy of a finished method, from the ledger, and
    its ranking matrix and base ranking accuracy when every round recorded them."""
    from cl_platform.train.worker import progress_from_ledger

    done = ledger.done_rounds(method)
    if sorted(done) != list(range(num_tasks)):
        raise RuntimeError(f"method {method!r}: rounds done {sorted(done)}, expected 0..{num_tasks - 1}")
    p = progress_from_ledger(ledger, method, num_tasks - 1)
    rounds = [ledger.record(method, r) for r in range(num_tasks)]
    ranking = ({"ranking_matrix": p["Rk"], "base_ranking_accuracy": p["base_rk"]}
               if "Rk" in p and p["base_rk"] is not None else {})
    return {"accuracy_matrix": p["R"], "generation_scores": p["G"], "base_accuracy": p["base_acc"], **ranking,
            "rounds": [{"round": rec.round, "task": rec.task, "attempt": rec.attempt, "checkpoint": rec.checkpoint,
                        "started_at": rec.started_at, "ended_at": rec.ended_at,
                        "train_seconds": rec.metrics.get("train_seconds"), "eval_seconds": rec.metrics.get("eval_seconds"),
                        "gradient_conflict": rec.metrics.get("gradient_conflict")}
                       for rec in rounds]}


def write_run_results(store: Store, cfg: SequenceConfig, methods: Sequence[str], config: dict[str, Any], *,
                      log: Callable[[str], None] = print, quiet: bool = False) -> dict[str, Any]:
    """``results.json`` and the report of a finished run, from its ledger; returns the results.

    Without a generation probe there are no generation scores, so the accuracies are printed and
    the ledger is where they stay. ``quiet`` logs only a report that could not be written (sweep trials).
    """
    from cl_platform.eval.report import build_results, format_table, write_report, write_results

    ledger = Ledger.open(store, cfg.run)
    per_method = {m: method_results(ledger, m, len(cfg.tasks)) for m in methods}
    if cfg.probe is None:
        log("no generation probe: no generation scores, so no results.json/report; "
            f"per-round accuracies are in {ledger.uri}")
        for m, res in per_method.items():
            log(f"[{m}] final accuracy " + " ".join(f"{t}={a:.2f}" for t, a in zip(cfg.tasks, res["accuracy_matrix"][-1])))
        return {"methods": per_method}
    results = build_results(cfg.run, list(cfg.tasks), config, per_method)
    prefix = f"runs/{cfg.run}"
    write_results(store, prefix, results)
    try:
        paths = write_report(store, prefix, results)
    except Exception as exc:  # a plotting problem must not lose results that are stored
        log(f"report of {cfg.run} not written: {exc}")
        paths = []
    if not quiet:
        log("")
        log(format_table(results))
        log(f"\ngeneration probe: {(cfg.probe or {}).get('description', '-')}")
        log(f"results: {store.uri(prefix + '/results.json')}")
        log(f"report:  {store.uri(paths[0]) if paths else '-'}")
    return results


def run_sequence(
    base_cfg: SequenceConfig,
    methods: Sequence[str],
    *,
    resume: bool = False,
    from_run: Optional[str] = None,
    ray_address: Optional[str] = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train every method through ``base_cfg.tasks`` and return the results dict (also stored).

    ``verbose`` keeps Ray's routine per-report, per-checkpoint and per-dataset lines on the terminal.

    ``resume`` continues an interrupted run from its ledger (finished rounds are not redone);
    ``from_run`` starts every method from that run's final adapter of the same method.
    ``base_cfg.gpus_per_worker`` ``None`` (auto) becomes 1 when the cluster has a GPU, else 0, once
    Ray is up (logged; the ledger records the resolved value).
    """
    from cl_platform.train.resources import init_ray, validate_resources

    store = Store(base_cfg.store)
    spec = ModalitySpec.from_dict(base_cfg.spec)
    for m in methods:
        get_method(m)  # unknown names fail here, listing the known ones
    t_start = time.time()
    from cl_platform.train.resources import runtime_env_for_store

    t_ray = time.time()
    started = init_ray(ray_address, runtime_env=runtime_env_for_store(store))
    ray_start_s = time.time() - t_ray
    try:
        if base_cfg.gpus_per_worker is None:  # auto: decided by the cluster Ray now knows
            import ray

            cluster = ray.cluster_resources()
            base_cfg = replace(base_cfg, gpus_per_worker=auto_gpus_per_worker(cluster))
            log(f"gpus_per_worker: {base_cfg.gpus_per_worker:g} (auto; the cluster has {cluster.get('GPU', 0):g} GPU)")
        # one whole CPU beyond the workers: each Ray Data read or map task asks for one
        validate_resources(base_cfg.num_workers, base_cfg.cpus_per_worker, base_cfg.gpus_per_worker, extra_cpus=1.0)
        if from_run is not None:  # rounds of the parent chain come first in the lineage (seeding, history)
            parent = Ledger.open(store, from_run)
            base_cfg = replace(base_cfg, earlier_tasks=parent.earlier_tasks() + list(parent.task_order) or None)
        check_method_capacity(base_cfg, methods)
        config = {**base_cfg.to_dict(), "methods": list(methods), "from_run": from_run}
        config.pop("method", None)
        ledger = Ledger.open_or_create(store, base_cfg.run, task_order=list(base_cfg.tasks), config=config,
                                       methods=list(methods), resume=resume, from_run=from_run)
        cache_path = None
        if any(get_method(m).needs_teacher for m in methods) and base_cfg.kd_stream:
            from cl_platform.data.pipeline import configure_data_context
            from cl_platform.train.ray_logging import set_routine_logging

            configure_data_context()  # the cache build is a Ray Data job on this driver
            set_routine_logging(verbose)
            cache_path = teacher_of(store, base_cfg, spec, log=log)
        todo = []
        for m in methods:
            if sorted(ledger.done_rounds(m)) == list(range(len(base_cfg.tasks))):
                log(f"[{m}] all {len(base_cfg.tasks)} rounds already done (ledger); skipping")
                continue
            start_ckpt = ledger.parent_checkpoint(m)
            if start_ckpt is not None:
                from cl_platform.train.checkpoint import store_path

                start_ckpt = store_path(store, start_ckpt)
            todo.append(replace(base_cfg, method=m, teacher_cache=cache_path, from_checkpoint=start_ckpt))
        fit_s = 0.0
        if todo:
            t0 = time.time()
            fit_methods(todo, store, log=log, verbose=verbose)
            fit_s = time.time() - t0
        # where the time went, for benchmarks/sequence_timing.py (Ray start and the fit; the rest is
        # the driver's own work: checks, teacher cache, report)
        store.write_json(f"runs/{base_cfg.run}/timing.json", {
            "ray_start_s": round(ray_start_s, 3), "fit_s": round(fit_s, 3), "driver_s": round(time.time() - t_start, 3),
            "methods_fitted": [c.method for c in todo]})
        results = write_run_results(store, base_cfg, methods, config, log=log)
        log(f"total {time.time() - t_start:.1f}s, of which the fit {fit_s:.1f}s")
        return results
    finally:
        if started:
            import ray

            ray.shutdown()
