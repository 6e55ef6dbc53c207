"""``lineage.json`` is data: whoever writes to the bucket cannot choose what a scheduler runs.

Attacks of the hardening issue, from outside: a writer plants ``lineages/<name>/lineage.json`` with
a hook command (a shell command that would create a marker file), job arguments and another base
model, then a scheduler starts with no settings flags (a deployment that passes none). The
scheduler must run with its own settings, learn the good task, report the planted differences and
never run the hook. Abbreviated flags must not reach reserved settings either.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from cl_platform.cli.scheduler import main as scheduler_main
from cl_platform.cli.sequence import build_parser as sequence_parser
from cl_platform.scheduler.events import parse_events
from cl_platform.store import Store
from tests.support.sched_helpers import FAKE_JOB, small_task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _scheduler(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "scheduler.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=timeout)


def test_a_planted_hook_and_job_args_are_reported_never_run(store_url, tmp_path):
    store = Store(store_url)
    marker = tmp_path / "hook-ran"
    planted = {"method": "mode", "hook_every": 1, "hook_command": f"touch {shlex.quote(str(marker))}",
               "job_args": ["--workers", "64"], "model": "models/someone-elses", "suite": "tasks", "quick": True}
    store.write_json("lineages/prod/lineage.json", {"lineage": "prod", "settings": planted})
    small_task(store, "good")

    proc = _scheduler("run", "--store", store_url, "--lineage", "prod", "--once", "--poll-seconds", "0.2",
                      "--log-dir", str(tmp_path / "logs"), "--job-script", FAKE_JOB)

    assert proc.returncode == 0, proc.stderr
    events = parse_events(proc.stdout)
    assert not marker.exists()
    assert not [e for e in events if e["event"] == "hook_started"]
    differ = [e for e in events if e["event"] == "settings_differ"]
    assert differ, proc.stdout
    seen = differ[0]["differences"]
    assert seen["hook_command"]["in_force"] is None and "touch" in seen["hook_command"]["recorded"]
    assert seen["job_args"] == {"recorded": ["--workers", "64"], "in_force": []}
    assert seen["model"]["in_force"] is None
    # the round ran with the command line's settings (no planted job args, the default suite)
    submitted = [e for e in events if e["event"] == "submitted"]
    assert [e["task"] for e in submitted] == ["good"]
    ledger = store.read_json(f"runs/{submitted[0]['run']}/ledger.json")
    assert ledger["config"]["quick"] is False
    state = store.read_json("lineages/prod/state.json")
    assert [t["task"] for t in state["learned"]] == ["good"] and state["hooks"] == []
    # the record now holds the settings in force
    assert store.read_json("lineages/prod/lineage.json")["settings"]["hook_command"] is None


def test_a_planted_record_that_is_not_settings_is_harmless(tmp_path):
    url = f"file://{tmp_path}/store"
    store = Store(url)
    store.write_bytes("lineages/l/lineage.json", b"[" * 100_000)
    small_task(store, "good")
    proc = _scheduler("run", "--store", url, "--lineage", "l", "--once", "--poll-seconds", "0.2",
                      "--log-dir", str(tmp_path / "logs"), "--job-script", FAKE_JOB)
    assert proc.returncode == 0, proc.stderr
    assert [e["task"] for e in parse_events(proc.stdout) if e["event"] == "finished"] == ["good"]
    status = _scheduler("status", "--store", url, "--lineage", "l", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["settings"]["method"] == "mode"


@pytest.mark.parametrize("job_args, words", [
    ("--mod models/evil", "unrecognized arguments: --mod"),
    ("--ru other-run", "unrecognized arguments: --ru"),
    ("--from-ru other-run", "unrecognized arguments: --from-ru"),
    ("--model models/evil", "set by the scheduler"),
    ("--store=s3://elsewhere", "set by the scheduler"),
    ("--working-dir /", "unrecognized arguments: --working-dir"),
])
def test_job_args_cannot_reach_reserved_flags(tmp_path, capsys, job_args, words):
    code = scheduler_main(["run", "--store", f"file://{tmp_path}/store", "--lineage", "l", "--once",
                           f"--job-args={job_args}", "--job-script", FAKE_JOB])
    assert code == 2 and words in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "store" / "runs")


def test_no_parser_accepts_abbreviations(tmp_path, capsys):
    with pytest.raises(SystemExit):
        scheduler_main(["run", "--store", f"file://{tmp_path}/store", "--lin", "l", "--once"])
    assert "--lin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sequence_parser().parse_args(["--mod", "models/evil"])
    with pytest.raises(SystemExit):
        sequence_parser().parse_args(["--from-ru", "x"])
