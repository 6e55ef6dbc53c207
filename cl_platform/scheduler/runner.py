"""Running a round: the sequence command (``python -m cl_platform.cli.sequence --from-run ... --tasks NAME``)
as a Ray job or a local process.

Two runners behind one small interface (:class:`Runner`):

- :class:`RayJobRunner` (``--ray-address http://head:8265``): submits through
  ``ray.job_submission.JobSubmissionClient`` with a deterministic submission id
  (``<run>-a<attempt>``) and the repository as ``working_dir``; the job shows in the Ray
  dashboard. A restarted scheduler finds it again by that id (re-attach), and a submission
  whose id already exists is not submitted twice.
- :class:`EmbeddedRunner` (no address): runs the job as a local process (which starts its own
  embedded Ray) in its own session, output to a log file. The process outlives a killed
  scheduler; a restarted one on the same host re-attaches by pid (checked against the process's
  start time, so a reused pid is not mistaken for it).

Both report a :class:`JobStatus`. Whether a round *succeeded* is decided from the run's ledger,
not the exit code alone (see :mod:`cl_platform.scheduler.loop`).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from cl_platform.scheduler.config import LineageSettings
from cl_platform.scheduler.state import InFlightRound

#: The round entry point: the sequence command line, a module of the installed package.
SEQUENCE_MODULE = "cl_platform.cli.sequence"


def round_command(python: str, job_script: Optional[str]) -> list[str]:
    """The command that runs a round: ``python -m`` :data:`SEQUENCE_MODULE`, or ``python job_script``."""
    return [python, job_script] if job_script else [python, "-m", SEQUENCE_MODULE]

#: Job states (Ray's names, plus two of our own).
PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"
NOT_FOUND = "NOT_FOUND"  # never submitted (a crash between the write-ahead record and the submission)
GONE = "GONE"  # embedded: the process is no longer there and its exit code is unknown (not our child)
ACTIVE = (PENDING, RUNNING)


@dataclass(frozen=True)
class JobStatus:
    """Where a round's job is.

    Attributes:
        state: one of ``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED``, ``STOPPED``,
            ``NOT_FOUND``, ``GONE``.
        returncode: the exit code when known.
        message: the runner's words (Ray's job message, "exit code 1", ...).
    """

    state: str
    returncode: Optional[int] = None
    message: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def round_args(settings: LineageSettings, store_url: str, *, task: str, run: str, from_run: Optional[str]) -> list[str]:
    """Sequence command arguments of one round (always ``--resume``: it creates or continues the run;
    always ``--evaluate-earlier 1``: the round also scores every task the lineage learned before it)."""
    args = ["--store", store_url, "--tasks", task, "--run", run, "--method", settings.method, "--resume",
            "--evaluate-earlier", "1"]
    if from_run:
        args += ["--from-run", from_run]
    args += ["--suite", settings.run_request().suite]
    for flag, value in (("--model", settings.model), ("--spec", settings.spec), ("--kd-stream", settings.kd_stream),
                        ("--probe-stream", settings.probe_stream)):
        if value:
            args += [flag, value]
    if settings.quick:
        args.append("--quick")
    if settings.steps is not None:
        args += ["--steps", str(settings.steps)]
    return args + list(settings.job_args)


class Runner(Protocol):
    """What the scheduler needs from a runner."""

    kind: str

    def submit(self, inflight: InFlightRound, args: list[str], store_url: str,
               module: Optional[str] = None) -> dict[str, Any]:
        """Start the round (or, with ``module``, ``python -m module args``: the lineage's sweep);
        returns fields to record in the in-flight record (pid, log, ...)."""

    def status(self, inflight: InFlightRound) -> JobStatus:
        """Where the round's job is now."""

    def logs_tail(self, inflight: InFlightRound, chars: int = 3000) -> str:
        """The end of the job's output (for failure reasons)."""

    def start_hook(self, command: str, hook_id: str, store_url: str) -> str:
        """Start a policy-hook command beside the lineage; returns its id (pid or submission id)."""


# ------------------------------------------------------------------------------ embedded


def _process_alive(pid: int, started: Optional[float]) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(p.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _foreign_status(inflight: InFlightRound, host: str) -> JobStatus:
    """:meth:`EmbeddedRunner.status` of a process on another host: RUNNING until its heartbeat is stale."""
    import time

    from cl_platform.train import ledger

    now = time.time()
    since = inflight.submitted_at or inflight.detected_at or 0.0
    what = "submitted" if inflight.submitted_at else "detected"
    if inflight.store:
        try:
            beat = ledger.read_heartbeat(inflight.store, inflight.run)
        except Exception as exc:  # unknown is not gone
            return JobStatus(RUNNING, message=f"on host {host}; its heartbeat cannot be read "
                                              f"({type(exc).__name__}: {exc}): presumed running")
        if beat is not None and float(beat["at"]) > since:
            since, what = float(beat["at"]), "last heartbeat"
    age = now - since
    if age < ledger.HEARTBEAT_STALE_SECONDS:
        return JobStatus(RUNNING, message=f"on host {host}, cannot be followed from here; {what} {age:.0f}s ago: presumed "
                                          f"running until {ledger.HEARTBEAT_STALE_SECONDS:g}s without a heartbeat")
    return JobStatus(GONE, message=f"the process ran on host {host}; {what} {age:.0f}s ago "
                                   f"(stale after {ledger.HEARTBEAT_STALE_SECONDS:g}s): presumed gone")


class EmbeddedRunner:
    """Runs rounds as local processes (each starts an embedded Ray).

    Args:
        log_dir: where each attempt's output goes (``<submission_id>.log``).
        job_script: a script to run instead of :data:`SEQUENCE_MODULE` (tests and benchmarks).
        python: the interpreter (default: this one).
        env: extra environment variables for the job.
    """

    kind = "embedded"

    def __init__(self, log_dir: str, *, job_script: Optional[str] = None, python: str = sys.executable,
                 env: Optional[dict[str, str]] = None) -> None:
        self.log_dir = os.path.abspath(log_dir)
        self.job_script = os.path.abspath(job_script) if job_script else None
        self.python = python
        self.env = dict(env or {})
        self._children: dict[str, subprocess.Popen] = {}

    def _spawn(self, argv: list[str], log_path: str) -> subprocess.Popen:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **self.env}
        with open(log_path, "ab") as log:
            return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def submit(self, inflight: InFlightRound, args: list[str], store_url: str,
               module: Optional[str] = None) -> dict[str, Any]:
        import psutil

        log_path = os.path.join(self.log_dir, f"{inflight.submission_id}.log")
        command = [self.python, "-m", module] if module else round_command(self.python, self.job_script)
        proc = self._spawn([*command, *args], log_path)
        self._children[inflight.submission_id] = proc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            started = None
        fields = {"pid": proc.pid, "pid_started": started, "host": socket.gethostname(), "log": log_path,
                  "store": store_url}
        # a pid file on local disk, written before the scheduler records the pid in the store: a
        # scheduler killed in between leaves its successor a way to find the process
        with open(self._pidfile(inflight), "w") as f:
            json.dump(fields, f)
        return fields

    def _pidfile(self, inflight: InFlightRound) -> str:
        return os.path.join(self.log_dir, f"{inflight.submission_id}.pid.json")

    def status(self, inflight: InFlightRound) -> JobStatus:
        """Where the attempt's process is.

        A child of this runner: its exit code. A process on this host: RUNNING while its pid is
        alive (with the recorded start time), else GONE. A process on another host (the record's
        ``host``, or the host in its ``holder`` when no process was recorded yet) cannot be seen
        from here, and is not GONE merely because of that. The rule: it is presumed RUNNING until
        its last sign of life is older than
        :data:`~cl_platform.train.ledger.HEARTBEAT_STALE_SECONDS`, then GONE. The last sign of life
        is the round's heartbeat (``runs/<run>/heartbeat.json``, rewritten by the round's process
        while it trains; :mod:`cl_platform.train.ledger`) in the store the record names, or when
        there is none yet (the process is still starting), the attempt's submission (or detection)
        time. A store that cannot be read says nothing: the process is still presumed running.
        GONE makes the loop read the run's ledger: learned if the round finished, else a retry.
        """
        proc = self._children.get(inflight.submission_id)
        if proc is not None:
            rc = proc.poll()
            if rc is None:
                return JobStatus(RUNNING)
            return JobStatus(SUCCEEDED if rc == 0 else FAILED, rc, f"exit code {rc}")
        here = socket.gethostname()
        if inflight.pid is None:
            try:
                with open(self._pidfile(inflight)) as f:
                    recorded = json.load(f)
            except (OSError, ValueError):
                holder = (inflight.holder or "").split(":")  # host:pid:random (new_holder_id)
                if len(holder) == 3 and holder[0] and holder[0] != here:
                    return _foreign_status(inflight, holder[0])
                return JobStatus(NOT_FOUND, message="no process was recorded for this attempt")
            inflight = InFlightRound(**{**inflight.__dict__, **recorded})
        if inflight.host and inflight.host != here:
            return _foreign_status(inflight, inflight.host)
        if _process_alive(inflight.pid, inflight.pid_started):
            return JobStatus(RUNNING, message=f"pid {inflight.pid} (started by an earlier scheduler)")
        return JobStatus(GONE, message=f"pid {inflight.pid} is no longer running")

    def logs_tail(self, inflight: InFlightRound, chars: int = 3000) -> str:
        if not inflight.log or not os.path.exists(inflight.log):
            return ""
        with open(inflight.log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", errors="replace")

    def start_hook(self, command: str, hook_id: str, store_url: str) -> str:
        proc = self._spawn(shlex.split(command), os.path.join(self.log_dir, f"{hook_id}.log"))
        return f"pid:{proc.pid}"


# ------------------------------------------------------------------------------ Ray jobs


class RayJobRunner:
    """Submits rounds through the Ray Jobs API (they show in the dashboard's Jobs view).

    Args:
        address: the dashboard address (``http://head:8265``).
        job_script: a script (relative to ``working_dir``) to run instead of :data:`SEQUENCE_MODULE`.
        working_dir: uploaded as every job's working dir (honours ``.gitignore``), e.g. a checkout
            whose files hook commands read; ``None``: none, the jobs run the package installed on
            the cluster.
        client: a ``JobSubmissionClient`` (built from ``address`` when ``None``; tests pass a fake).
    """

    kind = "ray-job"

    def __init__(self, address: str, *, job_script: Optional[str] = None, working_dir: Optional[str] = None,
                 client: Any = None) -> None:
        self.address = address
        self.working_dir = working_dir
        self.job_script = job_script
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.address)
        return self._client

    def _runtime_env(self, store_url: str) -> dict[str, Any]:
        """The runtime_env of a submitted job: the store's non-secret AWS settings and Ray switches.

        Never credentials (Ray serves a job's runtime_env to anyone who reaches its dashboard): the
        job's driver and workers get them from the cluster's environment (Kubernetes Secret, IRSA,
        instance profile, or the environment the local head was started with).
        """
        from cl_platform.train.resources import public_env_vars, runtime_env_for_store

        env = runtime_env_for_store(store_url)
        env_vars = {**env.get("env_vars", {}), "RAY_USAGE_STATS_ENABLED": "0",
                    # the round's driver passes the same AWS settings to ray.init again; let the job's own
                    # runtime env be merged with (overridden by) it instead of rejected as a conflict
                    "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
        env["env_vars"] = public_env_vars(env_vars)
        return {"working_dir": self.working_dir, **env} if self.working_dir else env

    #: Pauses between submissions the head answers "try again later" (a head whose job agent is
    #: still starting, or busy): seconds before each retry.
    SUBMIT_RETRY_SECONDS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0)

    def submit(self, inflight: InFlightRound, args: list[str], store_url: str,
               module: Optional[str] = None) -> dict[str, Any]:
        command = ["python", "-m", module] if module else round_command("python", self.job_script)
        entrypoint = shlex.join([*command, *args])
        for pause in (*self.SUBMIT_RETRY_SECONDS, None):
            try:
                self.client.submit_job(
                    entrypoint=entrypoint, submission_id=inflight.submission_id, runtime_env=self._runtime_env(store_url),
                    metadata={"cl_lineage_task": inflight.task, "cl_run": inflight.run, "cl_attempt": str(inflight.attempt)},
                )
            except Exception as exc:
                if "already exists" in str(exc):  # an earlier scheduler submitted this very attempt: follow it
                    break
                if pause is None or "try again later" not in str(exc):
                    raise
                time.sleep(pause)  # the head cannot take the job yet; the submission id keeps it idempotent
                continue
            break
        return {"host": socket.gethostname()}

    def status(self, inflight: InFlightRound) -> JobStatus:
        try:
            info = self.client.get_job_info(inflight.submission_id)
        except Exception as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return JobStatus(NOT_FOUND, message=str(exc))
            raise
        state = str(getattr(info.status, "value", info.status)).upper()
        return JobStatus(state, getattr(info, "driver_exit_code", None), getattr(info, "message", "") or "")

    def logs_tail(self, inflight: InFlightRound, chars: int = 3000) -> str:
        try:
            return self.client.get_job_logs(inflight.submission_id)[-chars:]
        except Exception as exc:
            return f"(logs unavailable: {exc})"

    def start_hook(self, command: str, hook_id: str, store_url: str) -> str:
        self.client.submit_job(entrypoint=command, submission_id=hook_id, runtime_env=self._runtime_env(store_url))
        return hook_id


__all__ = [
    "EmbeddedRunner",
    "JobStatus",
    "RayJobRunner",
    "Runner",
    "SEQUENCE_MODULE",
    "round_args",
    "round_command",
]
