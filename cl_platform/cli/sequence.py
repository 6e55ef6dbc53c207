"""Command line of ``jobs/sequence.py`` / ``cl-sequence``: arguments -> run inputs + :class:`SequenceConfig` -> :func:`run_sequence`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from cl_platform.methods import MethodConfig, available_methods
from cl_platform.models.modality import normalize_ranges
from cl_platform.store import Store, default_store_url
from cl_platform.suites import RunRequest, available_suites, resolve_run_inputs
from cl_platform.train.config import SequenceConfig

QUICK = {"steps_per_task": 12, "log_every": 4}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a unified model through a sequence of tasks with one or more continual-learning "
        "methods on Ray Train, and report accuracy, forgetting and image generation after every round.",
    )
    src = p.add_argument_group("tasks and model")
    src.add_argument("--suite", choices=available_suites(), default=None,
                     help="where tasks, model and probe come from: a built-in benchmark written into the store if "
                          "absent, or 'tasks' (your tasks and model in the store; the default with --tasks/--model)")
    src.add_argument("--tasks", default=None, help="comma-separated task names already in the store (task format)")
    src.add_argument("--order", default=None, help="comma-separated training order (a permutation of the tasks)")
    src.add_argument("--store", default=None, help=f"store URL (default {default_store_url()}); s3://bucket/prefix for S3")
    src.add_argument("--model", default=None, help="base model: store path/URI of a save_pretrained directory "
                     "(default: the suite's base model)")
    src.add_argument("--spec", default=None,
                     help="modality spec of the model's vocabulary: 'anole' or a JSON file of a ModalitySpec "
                     "(default: from the model's config.json)")
    src.add_argument("--image-token-ranges", default=None,
                     help="'lo:hi,lo:hi' image-token id ranges routed to the visual adapter (overrides the spec's)")
    src.add_argument("--kd-stream", default=None, help="generation stream for KD (default: the suite's)")
    src.add_argument("--probe-stream", default=None,
                     help="held-out generation stream of the image-token likelihood probe "
                          "(default: the suite's probe; for 'tasks', <kd stream>-probe when present)")
    src.add_argument("--probe-size", type=int, default=None,
                     help="size of the generation probe: images per class of a judge probe, rows of the "
                          "likelihood probe (default: the suite's; smaller with --quick)")
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
    s = SequenceConfig(run="x", store="x", method="x", tasks=["x"], model_uri="x", spec={})  # the defaults
    t.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps per task (default {s.steps_per_task}; {QUICK['steps_per_task']} with --quick)")
    t.add_argument("--batch-size", type=int, default=s.batch_size)
    t.add_argument("--kd-batch-size", type=int, default=s.kd_batch_size)
    t.add_argument("--lr", type=float, default=s.lr)
    t.add_argument("--seed", type=int, default=s.seed)
    t.add_argument("--checkpoint-every", type=int, default=s.checkpoint_every, help="mid-round checkpoint every N steps")
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
    request = RunRequest(suite=args.suite, tasks=_csv(args.tasks), order=_csv(args.order), model=args.model,
                         spec=args.spec, kd_stream=args.kd_stream, probe_stream=args.probe_stream,
                         probe_size=args.probe_size, quick=args.quick,
                         image_token_ranges=_ranges(args.image_token_ranges) if args.image_token_ranges else None)
    inputs = resolve_run_inputs(store, request)
    print(inputs.describe(), flush=True)
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else 0.0
    run_name = args.run or f"{inputs.suite}-{'-'.join(methods)}-s{args.seed}".replace("_", "-")
    mc = MethodConfig(r_text=args.r_text, r_image=args.r_image, num_experts=args.num_experts, lora_alpha=args.lora_alpha,
                      lora_dropout=args.lora_dropout, kd_weight=args.kd_weight, kd_temperature=args.kd_temperature,
                      kd_top_k=args.kd_top_k, seed=args.seed)
    cfg = SequenceConfig(
        run=run_name, method=methods[0], **inputs.sequence_fields(), method_config=mc.to_dict(),
        steps_per_task=args.steps if args.steps is not None else SequenceConfig.steps_per_task, batch_size=args.batch_size,
        kd_batch_size=args.kd_batch_size, lr=args.lr, seed=args.seed, checkpoint_every=args.checkpoint_every,
        num_workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=gpus,
        max_failures=args.max_failures, torch_threads=args.threads_per_worker, cache_rows=args.cache_rows,
    )
    if args.quick:  # fewer steps, unless --steps says otherwise
        if args.steps is None:
            cfg.steps_per_task = QUICK["steps_per_task"]
        cfg.log_every = QUICK["log_every"]
    from cl_platform.train.sequence import run_sequence

    run_sequence(cfg, methods, resume=args.resume, from_run=args.from_run, ray_address=args.ray_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
