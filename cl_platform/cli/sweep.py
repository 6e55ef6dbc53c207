"""Command line of ``sweeps/sweep.py`` / ``cl-sweep``: a sweep file -> :func:`cl_platform.sweeps.runner.run_sweep`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Sweep a continual-learning method's hyperparameters (KD weight, experts, LoRA ranks, lr) "
        "across task orders with Ray Tune + Optuna; writes a trials table, the best configuration(s) / Pareto set, "
        "a Pareto-front plot and a summary to <store>/sweeps/<name>/.",
    )
    p.add_argument("--config", required=True, help="sweep YAML file (e.g. one of sweeps/*.yaml)")
    p.add_argument("--store", default=None, help="store URL (overrides the file's `store`)")
    p.add_argument("--name", default=None, help="sweep name (overrides the file's `name`)")
    p.add_argument("--num-samples", type=int, default=None, help="number of trials (overrides search.num_samples)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep: finished trials are kept, unfinished ones run again")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, set by `ray job submit`, else an embedded Ray)")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop (resumably, like Ctrl-C) once N trials have finished in this call")
    p.add_argument("--tune-dir", default=None, metavar="DIR",
                   help="local directory of Tune's state and TensorBoard logs, on the machine running this "
                   "command (never the store): DIR/<store hash>/<name>/ (default ~/.cache/cl_platform/tune)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; user errors (bad sweep file, task, resources, existing sweep) exit 2 with one message.
    An interrupted sweep exits 130 after writing what it has."""
    from cl_platform.sweeps.space import load_sweep, parse_sweep

    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        spec = load_sweep(args.config)
        if args.name or args.num_samples is not None:
            import yaml

            with open(args.config, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
            if args.name:
                doc["name"] = args.name
            if args.num_samples is not None:
                doc.setdefault("search", {})["num_samples"] = args.num_samples
            spec = parse_sweep(doc, source=args.config)
        from cl_platform.sweeps.runner import run_sweep

        outcome = run_sweep(spec, store=args.store, resume=args.resume, ray_address=args.ray_address,
                            stop_after=args.stop_after, tune_dir=args.tune_dir)
    except ValueError as exc:  # SweepConfigError, TaskValidationError, InsufficientResourcesError, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 130 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
