"""Command line of ``jobs/sequence.py`` / ``cl-sequence``: arguments -> run inputs + :class:`SequenceConfig` -> :func:`run_sequence`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from cl_platform.data.task_format import verify_dataset
from cl_platform.fields import namespace_kwargs
from cl_platform.methods import MethodConfig, available_methods
from cl_platform.models.modality import normalize_ranges
from cl_platform.store import Store, default_store_url
from cl_platform.suites import RunRequest, available_suites, resolve_run_inputs
from cl_platform.train.config import SequenceConfig, add_setting_arguments

QUICK = {"steps_per_task": 12, "log_every": 4}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
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
    src.add_argument("--clip-model", default=None,
                     help="with --vqgan: measure image generation as the CLIP image alignment of generated images "
                          "(a CLIP save_pretrained directory, local or in the store; default: $CL_CLIP_PROBE_MODEL)")
    src.add_argument("--vqgan", default=None,
                     help="the VQ-GAN image decoder for --clip-model: an Anole checkpoint directory or its vqgan "
                          "file (default: $CL_CLIP_PROBE_VQGAN)")
    src.add_argument("--task-digest", action="append", type=_task_digest, default=[], metavar="TASK=SHA256",
                     help="train TASK only if its manifest.json has this sha256 and every file it lists still "
                          "matches it, checked before anything is read (the scheduler passes the digest it validated); "
                          "repeatable")
    src.add_argument("--probe-size", type=int, default=None,
                     help="size of the generation probe: images per class of a judge probe, rows of the "
                          "likelihood probe (default: the suite's; smaller with --quick)")
    groups = add_setting_arguments(p, notes={k: f"{v} with --quick" for k, v in QUICK.items()})
    groups["methods"].add_argument("--method", default=None, help=f"one of {', '.join(available_methods())}")
    groups["methods"].add_argument("--methods", default=None,
                                   help="comma-separated methods, each run with the same order and seeds")
    groups["training"].add_argument("--quick", action="store_true", help="few steps and a small probe (CI)")
    groups["Ray"].add_argument("--ray-address", default=None,
                               help="Ray cluster address (default: RAY_ADDRESS or an embedded local Ray)")
    run = p.add_argument_group("run")
    run.add_argument("--run", default=None, help="run name (default: <suite or tasks>-<methods>-<seed>)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run from its ledger")
    run.add_argument("--from-run", default=None, help="start from another run's final checkpoint (same methods)")
    run.add_argument("--verbose", action="store_true",
                     help="also Ray's routine lines (each training report, checkpoint and dataset execution)")
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


def _task_digest(text: str) -> tuple[str, str]:
    name, sep, digest = text.partition("=")
    if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise argparse.ArgumentTypeError(f"{text!r} is not TASK=<sha256: 64 lower-case hex characters>")
    return name, digest


def _csv(text: Optional[str]) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()] if text else []


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: user errors (bad task, too many workers, existing run, ...) exit 2 with one message."""
    try:
        return _main(argv)
    except ValueError as exc:  # TaskValidationError, InsufficientResourcesError, LedgerError, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The parsed command line; ``--quick`` changes the defaults of :data:`QUICK` (their flags still win)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def methods_of(args: argparse.Namespace) -> list[str]:
    """The methods of a parsed command line (``--methods``, else ``--method``, else mode)."""
    return _csv(args.methods) or ([args.method] if args.method else ["mode"])


def run_request(args: argparse.Namespace) -> RunRequest:
    """The :class:`RunRequest` of a parsed command line (suite, tasks, order, model, streams, probe)."""
    return RunRequest(suite=args.suite, tasks=_csv(args.tasks), order=_csv(args.order), model=args.model,
                      spec=args.spec, kd_stream=args.kd_stream, probe_stream=args.probe_stream,
                      probe_size=args.probe_size, quick=args.quick, clip_model=args.clip_model, vqgan=args.vqgan,
                      image_token_ranges=_ranges(args.image_token_ranges) if args.image_token_ranges else None)


def sequence_config(args: argparse.Namespace, inputs, run: str, methods: Sequence[str]) -> SequenceConfig:
    """The run's :class:`SequenceConfig` from a parsed command line and the resolved inputs."""
    training = namespace_kwargs(SequenceConfig, args)
    mc = MethodConfig(**namespace_kwargs(MethodConfig, args), seed=training["seed"])
    return SequenceConfig(run=run, method=methods[0], **inputs.sequence_fields(), method_config=mc.to_dict(),
                          **training)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    store = Store(args.store)
    for task, digest in args.task_digest:  # before anything of the task is read
        verify_dataset(store, task, digest)
    methods = methods_of(args)
    inputs = resolve_run_inputs(store, run_request(args))
    print(inputs.describe(), flush=True)
    run_name = args.run or f"{inputs.suite}-{'-'.join(methods)}-s{args.seed}".replace("_", "-")
    cfg = sequence_config(args, inputs, run_name, methods)
    from cl_platform.train.sequence import run_sequence

    run_sequence(cfg, methods, resume=args.resume, from_run=args.from_run, ray_address=args.ray_address,
                 verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
