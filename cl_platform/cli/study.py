"""Command line of ``jobs/study.py`` / ``cl-study``: every (task order, seed) sequence of a set of methods on
Ray, then mean ± std of every metric over them (:func:`cl_platform.sweeps.study_runner.run_study`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from cl_platform.cli import sequence as seq
from cl_platform.store import Store
from cl_platform.suites import resolve_run_inputs

#: cl-sequence flags that name one run, which a study does not take (it names and resumes its runs itself).
NOT_FOR_A_STUDY = {"run": "--run", "resume": "--resume", "from_run": "--from-run", "task_digest": "--task-digest"}


def build_parser() -> argparse.ArgumentParser:
    p = seq.build_parser()
    p.description = ("Run a set of continual-learning methods over several task orders and seeds on Ray (every "
                     "method of one (order, seed) in one run, runs side by side as the cluster allows) and report "
                     "mean ± std of every metric, per order and overall, under <store>/studies/<name>/. Takes "
                     "every cl-sequence flag except " + ", ".join(NOT_FOR_A_STUDY.values()) + ".")
    g = p.add_argument_group("study")
    g.add_argument("--orders", type=int, default=1,
                   help="task orders: the suite's (or --order's) first, then seeded permutations (default 1)")
    g.add_argument("--seeds", type=int, default=1, help="seeds per order: --seed, --seed + 1, ... (default 1)")
    g.add_argument("--order-seed", type=int, default=0, help="seed of the permutations of orders 1.. (default 0)")
    g.add_argument("--name", default=None,
                   help="study name: <store>/studies/<name>/, runs <name>-o<order>-s<seed> (default: "
                        "<suite>-<methods>[-quick]); a rerun reads finished runs back and continues the others")
    g.add_argument("--max-concurrent", type=int, default=None,
                   help="at most this many runs at once (default: as many as the cluster's CPUs/GPUs hold)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The parsed command line (``--quick`` as in cl-sequence); ``ValueError`` for a bad study argument."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**seq.QUICK)
        args = parser.parse_args(argv)
    given = [flag for dest, flag in NOT_FOR_A_STUDY.items() if getattr(args, dest) not in (None, False, [])]
    if given:
        raise ValueError(f"{', '.join(given)}: not a study flag (a study names its runs <name>-o<order>-s<seed> and "
                         "always reads finished runs back and continues unfinished ones)")
    for flag, value in (("--orders", args.orders), ("--seeds", args.seeds)):
        if value < 1:
            raise ValueError(f"{flag} {value}: need at least 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ValueError(f"--max-concurrent {args.max_concurrent}: need at least 1")
    if args.order_seed < 0:
        raise ValueError(f"--order-seed {args.order_seed}: need a seed >= 0")
    if args.name is not None:
        from cl_platform.sweeps.study import check_study_name

        check_study_name(args.name)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: bad arguments and user errors (bad task, runs that do not fit, ...) exit 2 with one message."""
    try:
        return _main(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    store = Store(args.store)
    methods = seq.methods_of(args)
    inputs = resolve_run_inputs(store, seq.run_request(args))
    print(inputs.describe(), flush=True)
    name = args.name or f"{inputs.suite}-{'-'.join(methods)}{'-quick' if args.quick else ''}".replace("_", "-")
    base = seq.sequence_config(args, inputs, name, methods)
    from cl_platform.sweeps.study_runner import run_study

    outcome = run_study(base, methods, name=name, orders=args.orders, seeds=args.seeds, order_seed=args.order_seed,
                        max_concurrent=args.max_concurrent, ray_address=args.ray_address, verbose=args.verbose,
                        log=lambda m: print(m, flush=True))
    return 1 if outcome.doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
