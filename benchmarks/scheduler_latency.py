"""Detection latency of the scheduler: from a task's ``_READY`` written to its round submitted.

Starts ``jobs/scheduler.py run`` (a daemon polling every ``--poll-seconds``) on a fresh store,
publishes ``--tasks`` small tasks one at a time at random moments between polls, and reads the
scheduler's ``submitted`` events. Rounds run a stand-in job (``tests/scheduler/fake_sequence.py``:
the ledger contract of ``jobs/sequence.py`` without training) so the numbers measure detection,
validation and submission, not training; each task is published after the previous round
finished, as when tasks arrive slower than they train.

The issue's bound is ``poll interval + 5 s``. Prints one line per task, then one JSON line last::

    python benchmarks/scheduler_latency.py [--poll-seconds 2] [--tasks 5] [--backend file|s3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from cl_platform.data.task_format import write_task  # noqa: E402
from cl_platform.scheduler.events import parse_events  # noqa: E402
from cl_platform.store import Store  # noqa: E402
from cl_platform.suites.digits.vocab import DIGITS_SPEC  # noqa: E402

STANDIN_JOB = os.path.join(REPO, "tests", "scheduler", "fake_sequence.py")


def publish(store: Store, name: str) -> float:
    """Write a small valid task; returns the wall-clock time right after its ``_READY`` landed."""
    rows = 32
    train = {"tokens": [[1, 30, DIGITS_SPEC.sep_id, 31, 2]] * rows, "answer_start": [3] * rows}
    ev = {"prompt_tokens": [[1, 30, DIGITS_SPEC.sep_id]] * 4, "answer_tokens": [[31, 2]] * 4}
    write_task(store, name, train, ev, spec_id=DIGITS_SPEC.spec_id)
    return time.time()


def start_moto() -> tuple[object, dict[str, str], str]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update(env)
    os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
    return server, env, "s3://bench/latency"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--poll-seconds", type=float, default=2.0)
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--backend", choices=["file", "s3"], default="file", help="file:// store, or S3 on a local moto server")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="cl-sched-bench-")
    server = None
    if args.backend == "s3":
        server, _, url = start_moto()
    else:
        url = f"file://{tmp}/store"
    store = Store(url)
    out_path = os.path.join(tmp, "scheduler.out")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "jobs", "scheduler.py"), "run", "--store", url, "--lineage", "bench",
             "--poll-seconds", str(args.poll_seconds), "--follow-seconds", "0.2", "--log-dir", os.path.join(tmp, "logs"),
             "--job-script", STANDIN_JOB], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    events = lambda name: [e for e in parse_events(open(out_path).read()) if e["event"] == name]  # noqa: E731

    def wait_for(pred, timeout: float, what: str):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = pred()
            if got:
                return got
            if proc.poll() is not None:
                raise SystemExit(f"scheduler exited ({proc.returncode}) before {what}:\n{open(out_path).read()[-3000:]}")
            time.sleep(0.02)
        raise SystemExit(f"timed out waiting for {what}:\n{open(out_path).read()[-3000:]}")

    latencies = []
    try:
        wait_for(lambda: events("lease_acquired"), 60, "the lease")
        for i in range(args.tasks):
            time.sleep(rng.uniform(0, args.poll_seconds))  # land at a random phase of the poll cycle
            name = f"bench-{i:03d}"
            t_ready = publish(store, name)
            sub = wait_for(lambda: [e for e in events("submitted") if e["task"] == name], 60 + args.poll_seconds, name)[0]
            lat = sub["time"] - t_ready
            latencies.append(lat)
            print(f"{name}: _READY -> submitted {lat:.2f}s", flush=True)
            wait_for(lambda: [e for e in events("finished") if e["task"] == name], 120, f"{name} to finish")
    finally:
        proc.terminate()
        proc.wait(30)
        if server is not None:
            server.stop()
    bound = args.poll_seconds + 5.0
    print(json.dumps({
        "benchmark": "scheduler_latency", "backend": args.backend, "poll_seconds": args.poll_seconds,
        "tasks": len(latencies), "latency_s": {"min": round(min(latencies), 3), "median": round(statistics.median(latencies), 3),
                                               "max": round(max(latencies), 3)},
        "bound_s": bound, "within_bound": max(latencies) <= bound,
    }))
    return 0 if max(latencies) <= bound else 1


if __name__ == "__main__":
    sys.exit(main())
