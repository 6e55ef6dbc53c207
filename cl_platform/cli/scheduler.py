"""Command line of ``jobs/scheduler.py`` / ``cl-scheduler`` / ``python -m cl_platform.cli.scheduler``.

    run    --store URL --lineage NAME [--ray-address ADDR] [--poll-seconds S] [--once] [settings ...]
    status --store URL --lineage NAME [--json]
    tune   --store URL --sweep-json JSON      (the lineage's every-K sweep: a job the scheduler submits)

``run`` watches ``<store>/tasks/`` and trains every new valid task once on top of the lineage's
latest model; see :mod:`cl_platform.scheduler.loop`. Its lines on stdout are JSON events
(:mod:`cl_platform.scheduler.events`). Exit codes: 0 done, 1 a round failed for good (``--once``),
2 bad arguments or settings, 3 ``--lease-wait`` ran out, 4 the lease was lost (``--once``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import sys
from typing import Any, Optional, Sequence

from cl_platform.scheduler.config import LineageConfigError, settings_from_command_line, validate_lineage_name
from cl_platform.scheduler.lease import DEFAULT_TTL, Lease, new_holder_id
from cl_platform.store import Store, default_store_url
from cl_platform.suites import available_suites


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help=f"store URL (default {default_store_url()}); s3://bucket/prefix for S3")
    p.add_argument("--lineage", required=True, help="lineage name: the chain of rounds this scheduler extends")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Start a continual-learning round whenever a new task lands in the store, once per task, "
                    "on top of the lineage's latest model; quarantine bad tasks; report status.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", allow_abbrev=False,
                         help="watch the store and train new tasks (JSON event lines on stdout)")
    _common(run)
    run.add_argument("--ray-address", default=None,
                     help="Ray dashboard address (http://head:8265): rounds are Ray jobs; default: embedded Ray per round")
    run.add_argument("--poll-seconds", type=float, default=10.0, help="pause between scans of tasks/ (default 10)")
    run.add_argument("--follow-seconds", type=float, default=2.0, help="pause between checks of a running round")
    run.add_argument("--once", action="store_true", help="handle what is in the store now, then exit (cron, tests)")
    run.add_argument("--lease-ttl", type=float, default=DEFAULT_TTL, help=f"lease lifetime in seconds (default {DEFAULT_TTL:g})")
    run.add_argument("--lease-wait", type=float, default=None,
                     help="with --once: give up (exit 3) after waiting this long for another scheduler's lease")
    run.add_argument("--log-dir", default=None, help="local folder for round logs and pid files "
                     "(default ~/.cache/cl_platform/scheduler/<store hash>/<lineage>)")
    run.add_argument("--job-script", default=None, help=argparse.SUPPRESS)  # tests and benchmarks: a stand-in job
    run.add_argument("--working-dir", default=None,
                     help="with --ray-address: upload this folder as every job's working dir (e.g. '.', a checkout whose "
                          "files hook commands read); default none: rounds run the package installed on the cluster")
    s = run.add_argument_group("lineage settings (from these flags only; recorded in lineages/<name>/lineage.json "
                               "for status, never read back)")
    s.add_argument("--method", default=None, help="continual-learning method (default mode)")
    s.add_argument("--suite", choices=available_suites(), default=None,
                   help="where each round's model and probe come from (default: 'tasks' with --model, else the built-in benchmark)")
    s.add_argument("--model", default=None, help="store path of the base model (a save_pretrained directory)")
    s.add_argument("--spec", default=None, help="modality spec: 'anole' or a ModalitySpec JSON file (default: the model's config)")
    s.add_argument("--kd-stream", default=None, help="KD stream of every round (default: the suite's)")
    s.add_argument("--probe-stream", default=None, help="held-out stream of the generation probe (default: the suite's)")
    s.add_argument("--quick", action="store_true", default=None, help="pass --quick to every round")
    s.add_argument("--steps", type=int, default=None, help="optimiser steps per round")
    s.add_argument("--job-args", default=None, help="further jobs/sequence.py arguments, e.g. '--kd-weight 0.5 --workers 2'")
    s.add_argument("--include", default=None, help="comma-separated name patterns of the tasks to learn (default *)")
    s.add_argument("--min-rows", type=int, default=None, help="policy: quarantine tasks with fewer train rows")
    s.add_argument("--max-attempts", type=int, default=None, help="attempts per round before a task is failed (default 3)")
    s.add_argument("--retry-base-seconds", type=float, default=None, help="backoff before the 2nd attempt, doubling (default 30)")
    s.add_argument("--retry-max-seconds", type=float, default=None, help="backoff cap (default 600)")
    s.add_argument("--hook-every", type=int, default=None, help="policy hook: run --hook-command after every K learned tasks")
    s.add_argument("--hook-command", default=None,
                   help="hook command (e.g. a sweep); placeholders {store} {lineage} {run} {tasks} {n}")
    s.add_argument("--max-generation-drop", type=float, default=None,
                   help="guard rail: a round whose generation score falls more than this below the base's crosses it")
    s.add_argument("--max-avg-forgetting", type=float, default=None,
                   help="guard rail: a round after which the lineage's average forgetting exceeds this crosses it")
    s.add_argument("--guard-action", default=None,
                   help="a crossing: 'hold' keeps the lineage on the previous adapter (default), 'warn' promotes it "
                        "with a warning")
    s.add_argument("--tune-every", type=int, default=None,
                   help="after every K learned tasks sweep the recent tasks; the best configuration becomes the "
                        "settings of the next rounds (default 0: never)")
    s.add_argument("--tune-space", default=None,
                   help="the sweep's search space as JSON, e.g. '{\"lr\": {\"type\": \"loguniform\", \"low\": 3e-4, "
                        "\"high\": 1e-2}}' (the default)")
    s.add_argument("--tune-trials", type=int, default=None, help="trials per sweep (default 4)")
    s.add_argument("--tune-objective", default=None,
                   help="avg_accuracy (default) or generation_score (maximised), generation_drop (minimised)")
    s.add_argument("--tune-tasks", type=int, default=None, help="recent tasks each sweep trains (default: --tune-every)")
    tune = sub.add_parser("tune", allow_abbrev=False, help=argparse.SUPPRESS)
    tune.add_argument("--store", default=None)
    tune.add_argument("--sweep-json", required=True)
    st = sub.add_parser("status", allow_abbrev=False,
                        help="what the lineage learned, what is in flight, quarantined and failed")
    _common(st)
    st.add_argument("--json", action="store_true", help="print the status as one JSON object")
    return p


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The lineage settings the command line sets explicitly."""
    out: dict[str, Any] = {}
    for key in ("method", "steps", "spec", "kd_stream", "probe_stream", "min_rows", "max_attempts",
                "retry_base_seconds", "retry_max_seconds", "hook_every", "hook_command", "max_generation_drop",
                "max_avg_forgetting", "guard_action", "tune_every", "tune_trials", "tune_objective", "tune_tasks"):
        v = getattr(args, key)
        if v is not None:
            out[key] = v
    if args.model is not None:
        out["model"], out["suite"] = args.model, args.suite
    elif args.suite is not None:
        out["suite"] = args.suite
    if args.quick:
        out["quick"] = True
    if args.job_args is not None:
        out["job_args"] = shlex.split(args.job_args)
    if args.include is not None:
        out["include"] = [x.strip() for x in args.include.split(",") if x.strip()]
    if args.tune_space is not None:
        try:
            out["tune_space"] = json.loads(args.tune_space)
        except ValueError as exc:
            raise LineageConfigError(f"--tune-space {args.tune_space!r} is not JSON: {exc}") from None
    return out


def check_tune_settings(settings: Any, lineage: str) -> None:
    """Parse the lineage's sweep as a sweep file would be (space, trials, objective), before anything runs."""
    from cl_platform.scheduler.config import tune_sweep_doc
    from cl_platform.suites import get_suite
    from cl_platform.sweeps.space import parse_sweep

    if not settings.tune_every:
        return
    suite = settings.run_request().suite
    tasks = list(get_suite(suite).default_tasks[:1]) or ["task"]
    parse_sweep(tune_sweep_doc(settings, f"{lineage[:28]}-tune-1", tasks), source="lineage settings tune_*")


def cmd_tune(args: argparse.Namespace) -> int:
    """Run one lineage sweep (its file given as JSON data, parsed as a sweep file)."""
    from cl_platform.sweeps.runner import run_sweep
    from cl_platform.sweeps.space import parse_sweep

    try:
        doc = json.loads(args.sweep_json)
    except ValueError as exc:
        raise ValueError(f"--sweep-json is not JSON: {exc}") from None
    outcome = run_sweep(parse_sweep(doc, source="--sweep-json"), store=args.store)
    return 130 if outcome.interrupted else 0


def default_log_dir(store: Store, lineage: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cl_platform", "scheduler", hashlib.sha256(store.url.encode()).hexdigest()[:10], lineage)


def cmd_run(args: argparse.Namespace) -> int:
    from cl_platform.scheduler.events import EventLog
    from cl_platform.scheduler.loop import Scheduler, SchedulerOptions
    from cl_platform.scheduler.runner import EmbeddedRunner, RayJobRunner

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    store = Store(args.store)
    lineage = validate_lineage_name(args.lineage)
    settings = settings_from_command_line(settings_overrides(args))
    check_tune_settings(settings, lineage)
    if args.ray_address:
        runner = RayJobRunner(args.ray_address, job_script=args.job_script, working_dir=args.working_dir)
    else:
        runner = EmbeddedRunner(args.log_dir or default_log_dir(store, lineage), job_script=args.job_script)
    holder = new_holder_id()
    lease = Lease(store, lineage, holder, ttl=args.lease_ttl)
    events = EventLog(lineage, holder)
    opts = SchedulerOptions(poll_seconds=args.poll_seconds, follow_seconds=args.follow_seconds, once=args.once,
                            lease_wait_seconds=args.lease_wait)
    scheduler = Scheduler(store, lineage, settings, runner, lease=lease, events=events, options=opts)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: scheduler.stop())
    return scheduler.run()


def cmd_status(args: argparse.Namespace) -> int:
    from cl_platform.scheduler.status import build_status, format_status

    store = Store(args.store)
    status = build_status(store, validate_lineage_name(args.lineage))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; bad arguments or settings exit 2 with one message."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            for name in ("poll_seconds", "follow_seconds", "lease_ttl"):
                if getattr(args, name) <= 0:
                    raise LineageConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
            return cmd_run(args)
        if args.command == "tune":
            return cmd_tune(args)
        return cmd_status(args)
    except (LineageConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "default_log_dir", "main", "settings_overrides"]


if __name__ == "__main__":
    sys.exit(main())
