"""Command line of ``jobs/sequence.py``: arguments -> :class:`SequenceConfig` -> :func:`run_sequence`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from cl_platform.methods import MethodConfig, available_methods
from cl_platform.models.modality import ModalitySpec, normalize_ranges
from cl_platform.store import Store, default_store_url
from cl_platform.train.config import SequenceConfig

QUICK = {"steps_per_task": 12, "probe_per_digit": 2, "log_every": 4}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobs/sequence.py",
        description="Train a unified model through a sequence of tasks with one or more continual-learning "
        "methods on Ray Train, and report accuracy, forgetting and image generation after every round.",
    )
    src = p.add_argument_group("tasks and model")
    src.add_argument("--suite", choices=["digits"], default=None,
                     help="built-in benchmark written into the store if absent (default when --tasks is not given)")
    src.add_argument("--tasks", default=None, help="comma-separated task names already in the store (task format)")
    src.add_argument("--order", default=None, help="comma-separated training order (a permutation of the tasks)")
    src.add_argument("--store", default=None, help=f"store URL (default {default_store_url()}); s3://bucket/prefix for S3")
    src.add_argument("--model", default=None, help="base model: store path/URI of a save_pretrained directory "
                     "(default: the digits base, pre-trained into the store if absent)")
    src.add_argument("--spec", default=None,
                     help="modality spec of the model's vocabulary: 'anole' or a JSON file of a ModalitySpec "
                     "(default: the model's config.json modality_spec)")
    src.add_argument("--image-token-ranges", default=None,
                     help="'lo:hi,lo:hi' image-token id ranges routed to the visual adapter (overrides the spec's)")
    src.add_argument("--kd-stream", default=None, help="generation stream for KD (digits: 'kd')")
    src.add_argument("--judge", default=None, help="store path of the generation judge (digits: built in)")
    m = p.add_argument_group("methods")
    m.add_argument("--method", default=None, help=f"one of {', '.join(available_methods())}")
    m.add_argument("--methods", default=None, help="comma-separated methods, each run with the same order and seeds")
    d = MethodConfig()
    m.add_argument("--r-text", type=int, default=d.r_text)
    m.add_argument("--r-image", type=int, default=d.r_image)
    m.add_argument("--num-experts", type=int, default=d.num_experts)
    m.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    m.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    m.add_argument("--kd-weight", type=float, default=d.kd_weight)
    m.add_argument("--kd-temperature", type=float, default=d.kd_temperature)
    m.add_argument("--kd-top-k", type=int, default=d.kd_top_k)
    t = p.add_argument_group("training")
    s = SequenceConfig(run="x", store="x", method="x", tasks=["x"], model_uri="x", spec={})
    t.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps per task (default {s.steps_per_task}; {QUICK['steps_per_task']} with --quick)")
    t.add_argument("--batch-size", type=int, default=s.batch_size)
    t.add_argument("--kd-batch-size", type=int, default=s.kd_batch_size)
    t.add_argument("--lr", type=float, default=s.lr)
    t.add_argument("--seed", type=int, default=s.seed)
    t.add_argument("--checkpoint-every", type=int, default=s.checkpoint_every, help="mid-round checkpoint every N steps")
    t.add_argument("--probe-per-digit", type=int, default=None,
                   help=f"default {s.probe_per_digit}; {QUICK['probe_per_digit']} with --quick")
    t.add_argument("--quick", action="store_true", help="few steps and a small probe (CI)")
    r = p.add_argument_group("Ray")
    r.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    r.add_argument("--cpus-per-worker", type=float, default=1.0)
    r.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0")
    r.add_argument("--threads-per-worker", type=int, default=s.torch_threads,
                   help="torch threads in each worker (default 0: one per whole CPU the worker reserves, at least one)")
    r.add_argument("--cache-rows", type=int, default=s.cache_rows,
                   help="keep a worker's shard of a task in memory after the first pass when it has at most "
                        f"this many rows (default {s.cache_rows}; 0 streams every pass)")
    r.add_argument("--max-failures", type=int, default=s.max_failures)
    r.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or an embedded local Ray)")
    run = p.add_argument_group("run")
    run.add_argument("--run", default=None, help="run name (default: <suite or tasks>-<methods>-<seed>)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run from its ledger")
    run.add_argument("--from-run", default=None, help="start from another run's final checkpoint (same methods)")
    return p


def _ranges(text: str) -> list[list[int]]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        try:
            out.append([int(lo), int(hi)])
        except ValueError:
            raise SystemExit(f"--image-token-ranges: {part!r} is not lo:hi") from None
    return normalize_ranges(out, what="--image-token-ranges")


def _spec_for(args, store: Store, model_uri: str) -> ModalitySpec:
    """The modality spec: ``--spec anole`` / ``--spec FILE.json``, else the model's config.json."""
    import json

    from cl_platform.models.modality import ANOLE

    if args.spec == "anole":
        return ANOLE
    if args.spec:
        with open(args.spec) as f:
            return ModalitySpec.from_dict(json.load(f))
    from cl_platform.train.checkpoint import store_path

    try:
        config = store.read_json(f"{store_path(store, model_uri)}/config.json")
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"--model {model_uri}: cannot read its config.json ({exc}); pass --spec") from None
    if not config.get("modality_spec"):
        raise ValueError(f"--model {model_uri}: its config.json has no modality_spec; pass --spec anole or --spec FILE.json")
    return ModalitySpec.from_dict(config["modality_spec"])


def _csv(text: Optional[str]) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()] if text else []


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: user errors (bad task, too many workers, existing run, ...) exit 2 with one message."""
    try:
        return _main(argv)
    except ValueError as exc:  # TaskValidationError, InsufficientResourcesError, LedgerError, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    store = Store(args.store)
    methods = _csv(args.methods) or ([args.method] if args.method else ["mode"])
    tasks = _csv(args.tasks)
    suite = args.suite or (None if tasks else "digits")
    judge, kd_stream, model_uri, spec = args.judge, args.kd_stream, args.model, None
    if suite == "digits":
        from cl_platform.suites.digits import vocab as V
        from cl_platform.suites.digits.pretrain import ensure_base_model
        from cl_platform.suites.digits.publish import JUDGE_PKL, read_suite_info, write_suite

        from cl_platform.suites.digits.publish import SUITE_JSON

        if not store.exists(SUITE_JSON):
            write_suite(store)
        info = read_suite_info(store)
        tasks = tasks or list(info["task_order"])
        spec = V.DIGITS_SPEC
        kd_stream = kd_stream or "kd"
        judge = judge or JUDGE_PKL
        if model_uri is None:
            model_uri = ensure_base_model(store).uri
    if model_uri is None:
        raise SystemExit("--model is required with --tasks (or use --suite digits)")
    if "://" not in model_uri:
        model_uri = store.uri(model_uri)
    if spec is None:
        spec = _spec_for(args, store, model_uri)
    if args.image_token_ranges:
        spec = ModalitySpec.from_dict({**spec.to_dict(), "image_token_ranges": _ranges(args.image_token_ranges)})
    order = _csv(args.order) or tasks
    if sorted(order) != sorted(tasks):
        raise SystemExit(f"--order {order} is not a permutation of the tasks {tasks}")
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else 0.0
    run_name = args.run or f"{suite or 'tasks'}-{'-'.join(methods)}-s{args.seed}".replace("_", "-")
    mc = MethodConfig(r_text=args.r_text, r_image=args.r_image, num_experts=args.num_experts, lora_alpha=args.lora_alpha,
                      lora_dropout=args.lora_dropout, kd_weight=args.kd_weight, kd_temperature=args.kd_temperature,
                      kd_top_k=args.kd_top_k, seed=args.seed)
    cfg = SequenceConfig(
        run=run_name, store=store.url, method=methods[0], tasks=order, model_uri=model_uri, spec=spec.to_dict(),
        method_config=mc.to_dict(), kd_stream=kd_stream, judge=judge,
        probe_per_digit=args.probe_per_digit if args.probe_per_digit is not None else SequenceConfig.probe_per_digit,
        steps_per_task=args.steps if args.steps is not None else SequenceConfig.steps_per_task, batch_size=args.batch_size, kd_batch_size=args.kd_batch_size, lr=args.lr,
        seed=args.seed, checkpoint_every=args.checkpoint_every, num_workers=args.workers,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=gpus, max_failures=args.max_failures,
        torch_threads=args.threads_per_worker, cache_rows=args.cache_rows,
    )
    if args.quick:  # fewer steps and a smaller probe, unless --steps / --probe-per-digit say otherwise
        if args.steps is None:
            cfg.steps_per_task = QUICK["steps_per_task"]
        if args.probe_per_digit is None:
            cfg.probe_per_digit = QUICK["probe_per_digit"]
        cfg.log_every = QUICK["log_every"]
    from cl_platform.train.sequence import run_sequence

    run_sequence(cfg, methods, resume=args.resume, from_run=args.from_run, ray_address=args.ray_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
