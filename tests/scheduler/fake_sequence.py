"""A stand-in for ``jobs/sequence.py`` in the scheduler's fast tests: same arguments, same ledger
and ``results.json`` contract, no Ray and no training.

It creates or resumes the run's ledger (``--from-run`` recorded as the parent), starts round 0,
optionally sleeps or fails, then finishes it with a fake checkpoint URI and writes a minimal
``results.json``. Every training attempt also drops ``fake/trained/<run>/<attempt>`` into the
store, so tests can count how often a task was trained.

Environment:
    FAKE_SLEEP: seconds to sleep inside the round (default 0).
    FAKE_FAIL_ATTEMPTS: attempts 1..N of every round fail (default 0).
    FAKE_FAIL_TASKS: comma-separated tasks whose rounds always fail.
    FAKE_GENERATION: ``task=score,...``: the generation score a task's round reports (default 0.5).

With ``--evaluate-earlier 1`` the round reports ``earlier_accuracy`` on the ``--from-run`` chain's
tasks: 0.75 minus 0.05 per round since the task was learned.

With ``--task-digest TASK=SHA256`` it verifies the task after the sleep, as the real job does
before reading it, and fails the round when the files changed.
"""

import argparse
import os
import sys
import time

from cl_platform.data.errors import TaskChangedError
from cl_platform.data.task_format import verify_dataset
from cl_platform.store import Store
from cl_platform.train.ledger import Ledger


def main() -> int:
    p = argparse.ArgumentParser()
    for flag in ("--store", "--tasks", "--run", "--method", "--from-run", "--suite", "--model", "--spec", "--kd-stream",
                 "--probe-stream", "--steps", "--evaluate-earlier", "--lr"):
        p.add_argument(flag)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--task-digest", action="append", default=[])
    args, _ = p.parse_known_args()
    store = Store(args.store)
    task = args.tasks
    config = {"method": args.method, "tasks": [task], "quick": args.quick, "steps": args.steps, "lr": args.lr}
    ledger = Ledger.open_or_create(store, args.run, task_order=[task], config=config, methods=[args.method],
                                   from_run=args.from_run, resume=args.resume)
    if ledger.is_complete(args.method):
        print(f"run {args.run}: already done")
        return 0
    rec = ledger.start_round(args.method, 0)
    print(f"run {args.run}: training {task} attempt {rec.attempt}", flush=True)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    for pair in args.task_digest:  # as the real job does before it reads the task (here: after the sleep)
        name, _, digest = pair.partition("=")
        try:
            verify_dataset(store, name, digest)
        except TaskChangedError as exc:
            ledger.fail_round(args.method, 0, f"TaskChangedError: {exc}")
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"verified {name}", flush=True)
    store.write_bytes(f"fake/trained/{args.run}/{rec.attempt}", f"{os.getpid()}\n".encode())
    failing = [t for t in os.environ.get("FAKE_FAIL_TASKS", "").split(",") if t]
    if rec.attempt <= int(os.environ.get("FAKE_FAIL_ATTEMPTS", "0")) or task in failing:
        ledger.fail_round(args.method, 0, "RuntimeError: fake failure")
        print("RuntimeError: fake failure", file=sys.stderr)
        return 1
    ckpt = store.uri(f"runs/{args.run}/{args.method}/round-00")
    generation = dict(pair.split("=") for pair in os.environ.get("FAKE_GENERATION", "").split(",") if pair)
    metrics = {"accuracy": [0.75], "generation_score": float(generation.get(task, 0.5)), "base_generation_score": 0.55,
               "loss": 1.0}
    if args.evaluate_earlier == "1" and ledger.earlier_tasks():  # each earlier task forgotten a little per round
        earlier = ledger.earlier_tasks()
        metrics["earlier_accuracy"] = {t: 0.75 - 0.05 * (len(earlier) - k) for k, t in enumerate(earlier)}
    ledger.finish_round(args.method, 0, checkpoint=ckpt, metrics=metrics)
    store.write_json(f"runs/{args.run}/results.json", {"methods": {args.method: {"metrics": {
        "avg_accuracy": 0.75, "avg_forgetting": 0.0, "bwt": 0.0, "fwt": 0.0, "generation_drop": 0.05}}}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
