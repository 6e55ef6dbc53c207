"""Start, stop and describe one local Ray head for ``ray job submit`` (``make ray-up`` / ``ray-down``).

Usage: ``python -m cl_platform.devstack.ray_head up|down|status`` (the ``infra/local/ray-up.sh`` /
``ray-down.sh`` wrappers pick the project's venv). Standard library only (and ``cl_platform.store``
to resolve the store URL): no Ray import, fast to start.

``up`` starts ``ray start --head`` with the dashboard on 127.0.0.1, the project's ``.venv/bin``
first on PATH (so a job's ``python`` is the venv's), ``RAY_USAGE_STATS_ENABLED=0`` and
``RAY_AUTH_MODE=disabled``, in a new process session, and records the head in
``<local dir>/head.json`` (process group, pids, session, addresses). It returns once the
dashboard's job API answers. Running it again while the head is up only prints the addresses.

``up`` also writes ``<local dir>/env`` (``. .ray_local/env``) with ``CL_STORE``, the store jobs on
this head use: ``$CL_STORE`` when set for ``up``, else ``file://<repo>/.cl_store``, the store
``make demo`` fills. A submitted job runs in Ray's copy of its ``--working-dir`` and refuses a
local store there (``cl_platform.store``), so the printed ``ray job submit`` passes ``--store``.
``CL_STORE`` itself is kept out of the head's environment: a job uses the store it names.

Credentials: the head is started with the caller's environment (less the variables above), AWS
credentials included (``. .s3_local/env`` before ``make ray-up`` for the local S3 server). Job
drivers and Ray workers on the head inherit them from there; the platform never passes them in a
job's ``runtime_env``, which the dashboard shows. Its dashboard listens on 127.0.0.1 only, with
Ray's token authentication off.

``down`` stops only that head: the recorded process group plus every descendant of its members
(job drivers run in sessions of their own), SIGTERM first, SIGKILL after a grace period. It never
runs ``ray stop``, which would kill every Ray process on the machine.

Environment overrides (defaults in brackets):

- ``RAY_LOCAL_DIR`` [``<repo>/.ray_local``]: state file and Ray's ``--temp-dir``. If the path is
  too long for Ray's unix sockets (107 bytes), Ray's temp dir moves to a short dir under /tmp.
- ``RAY_DASHBOARD_PORT`` [8265]: dashboard / job API port on 127.0.0.1 (must be free).
- ``RAY_HEAD_PORT`` [6380 if free, else any free port]: GCS port.
- ``RAY_NUM_CPUS`` / ``RAY_NUM_GPUS`` [detected]: resources of the head.
- ``VENV`` [``<repo>/.venv``]: the virtual environment put first on PATH.
- ``RAY_UP_TIMEOUT_S`` [120]: how long ``up`` waits for the dashboard.
- ``RAY_DOWN_GRACE_S`` [8]: how long ``down`` waits after SIGTERM before SIGKILL.
- ``CL_STORE`` [``file://<repo>/.cl_store``]: the store written to the env file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
from dataclasses import dataclass

from cl_platform.devstack import procs
from cl_platform.devstack.procs import Fail, float_env, kernel_port, venv_dir

STATE_FILE = "head.json"
ENV_FILE = "env"
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_HEAD_PORT = 6380
# Ray's session dir names are ~40-45 characters and the longest socket path below one is
# "/sockets/plasma_store" (21); AF_UNIX paths must stay under 108 bytes.
MAX_TEMP_DIR_CHARS = 107 - 1 - 45 - 21


@dataclass
class HeadState:
    """What ``up`` records in ``<local dir>/head.json``.

    Attributes:
        pgid: process group (and session) id of the head's processes.
        pids: the head's processes when it came up.
        temp_dir: Ray's ``--temp-dir``; session_dir / session_name: this head's session.
        gcs_address: ``host:port`` a driver can ``ray.init`` to.
        dashboard_url: ``http://127.0.0.1:<port>``; also the ``RAY_ADDRESS`` for ``ray job submit``.
        head_port, dashboard_port, client_port, agent_port: ports it listens on.
        python: the ``python`` jobs get; venv: the venv on PATH; started_at: ISO time (UTC).
        log: output of ``ray start``.
        store_url: the ``CL_STORE`` of the env file; env_file: its path.
    """

    pgid: int
    pids: list[int]
    temp_dir: str
    session_dir: str
    session_name: str
    gcs_address: str
    dashboard_url: str
    head_port: int
    dashboard_port: int
    client_port: int
    agent_port: int
    python: str
    venv: str
    started_at: str
    log: str = ""
    store_url: str = ""
    env_file: str = ""


# ---------------------------------------------------------------------------- settings


def local_dir() -> str:
    return procs.local_dir_from("RAY_LOCAL_DIR", ".ray_local")


def _int_env(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Fail(f"{name}={raw!r} is not an integer") from None
    if not 0 < value < 65536 and name.endswith("_PORT"):
        raise Fail(f"{name}={value} is not a valid port")
    return value


def port_free(port: int) -> bool:
    """True if nothing listens on ``port`` (checked on 127.0.0.1 and on all interfaces)."""
    return procs.port_free(port, ("127.0.0.1", "0.0.0.0"))


def free_port(exclude: set[int] = frozenset()) -> int:
    """An unused port from the kernel's ephemeral range (outside Ray's 10002-19999 worker range)."""
    for _ in range(50):
        port = kernel_port()
        if port not in exclude and not 10002 <= port <= 19999 and port_free(port):
            return port
    raise Fail("could not find a free port")


def ray_temp_dir(base: str) -> str:
    """``base`` itself, or a short ``/tmp/ray_local_<hash>`` when ``base`` is too long for sockets."""
    if len(base) <= MAX_TEMP_DIR_CHARS:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:10]
    return f"/tmp/ray_local_{digest}"


# ---------------------------------------------------------------------------- processes


def _ps() -> list[tuple[int, int, int, int, str]]:
    """(pid, ppid, pgid, sid, stat) of every process; sid is -1 where ``ps`` has no ``sid`` (macOS)."""
    proc = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,pgid=,sid=,stat="], capture_output=True, text=True)
    has_sid = proc.returncode == 0
    if not has_sid:
        proc = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,pgid=,stat="], capture_output=True, text=True)
        if proc.returncode != 0:
            raise Fail(f"`ps` failed: {proc.stderr.strip()}")
    rows = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        try:
            if has_sid and len(parts) >= 5:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), parts[4]))
            elif not has_sid and len(parts) >= 4:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2]), -1, parts[3]))
        except ValueError:
            continue
    return rows


def head_processes(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the head started as session/group ``pgid``.

    Members of the process group or of the session (Ray workers make groups of their own inside
    it), plus every descendant of those (job drivers start sessions of their own).
    """
    rows = [r for r in _ps() if not r[4].startswith("Z")]
    children: dict[int, list[int]] = {}
    for pid, ppid, _, _, _ in rows:
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, _, group, sid, _ in rows if group == pgid or sid == pgid}
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return sorted(found)


def is_our_head(state: "HeadState", members: list[int]) -> bool:
    """True if ``members`` (found by ``state.pgid``) are still this head (guards against a reused pgid).

    Some member's command line must mention the head's session or temp dir (the GCS server,
    raylet and monitor carry them).
    """
    members = set(members)
    out = subprocess.run(["ps", "-A", "-o", "pid=,args="], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in members:
            if state.session_dir in parts[1] or state.temp_dir in parts[1]:
                return True
    return False


def live_head(state: "HeadState") -> list[int]:
    """The head's live processes, or [] when it is gone (or its pgid now belongs to others)."""
    pids = head_processes(state.pgid)
    return pids if pids and is_our_head(state, pids) else []


def _names(pids: list[int]) -> dict[int, str]:
    """Executable names (``ps`` comm) of ``pids``."""
    out = subprocess.run(["ps", "-A", "-o", "pid=,comm="], capture_output=True, text=True, check=True).stdout
    wanted, names = set(pids), {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in wanted:
            names[int(parts[0])] = os.path.basename(parts[1].strip())
    return names


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# ---------------------------------------------------------------------------- state


def state_path() -> str:
    return os.path.join(local_dir(), STATE_FILE)


def env_path() -> str:
    return os.path.join(local_dir(), ENV_FILE)


def store_url() -> str:
    """The store jobs on the head use: ``$CL_STORE``, else the checkout's ``.cl_store``, as a full URL."""
    from cl_platform.store import DEFAULT_STORE_DIRNAME, STORE_ENV, Store

    raw = os.environ.get(STORE_ENV) or os.path.join(procs.repo_dir(), DEFAULT_STORE_DIRNAME)
    try:
        return Store(raw).url
    except ValueError as exc:
        raise Fail(f"{STORE_ENV}={raw!r}: {exc}") from None


def submit_command(state: HeadState, store: str) -> str:
    """The ``ray job submit`` of a quick sequence of the default suite on this head, writing into ``store``."""
    return (f"RAY_ADDRESS={state.dashboard_url} ray job submit --working-dir . -- "
            f"python jobs/sequence.py --store {store} --quick")


def write_env_file(state: HeadState) -> None:
    procs.write_env_file(state.env_file, [
        "Written by `make ray-up` (python -m cl_platform.devstack.ray_head): the local Ray head. "
        "Removed by `make ray-down`.",
        "CL_STORE: the store jobs on this head write to and read the base model from (`make demo`'s).",
        f"Use it with:  . {procs.shown_path(state.env_file)}   then",
        "  " + submit_command(state, '"$CL_STORE"'),
    ], {"CL_STORE": state.store_url})


def read_state() -> HeadState | None:
    return procs.read_state(state_path(), HeadState, "head")


def write_state(state: HeadState) -> None:
    procs.write_state(state_path(), state)


_HTTP = procs.HTTP


def dashboard_info(url: str, timeout: float = 2.0) -> dict | None:
    """``/api/version`` of a dashboard (None if it does not answer)."""
    try:
        with _HTTP.open(f"{url}/api/version", timeout=timeout) as r:
            return json.loads(r.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def jobs_api_ready(url: str, timeout: float = 2.0) -> bool:
    """True once the dashboard's job API (a separate dashboard module) answers."""
    try:
        with _HTTP.open(f"{url}/api/jobs/", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def print_addresses(state: HeadState, *, header: str) -> None:
    print(header)
    print(f"  dashboard:    {state.dashboard_url}")
    print(f"  store:        CL_STORE={state.store_url}   (also in {procs.shown_path(state.env_file)})")
    print("                a job names its store: a local one inside the job's working-dir copy is refused")
    print(f"  submit jobs:  {submit_command(state, shlex.quote(state.store_url))}")
    print(f"  drivers:      ray.init(address=\"{state.gcs_address}\")  (GCS address)")
    print(f"  jobs' python: {state.python}")
    print(f"  session:      {state.session_dir}")
    print(f"  state:        {state_path()} (head pgid {state.pgid})")
    print("  stop it with: make ray-down   (not `ray stop`: that kills every Ray process on this machine)")


# ---------------------------------------------------------------------------- commands


def up() -> int:
    state = read_state()
    if state is not None:
        alive = live_head(state)
        if alive and dashboard_info(state.dashboard_url):
            if not state.env_file or not os.path.exists(state.env_file):
                state.store_url, state.env_file = state.store_url or store_url(), env_path()
                write_state(state)
                write_env_file(state)
            print_addresses(state, header=f"Ray head already running (pids {', '.join(map(str, alive))}).")
            return 0
        if alive:
            raise Fail(
                f"a Ray head recorded in {state_path()} still has processes ({alive}) but its dashboard "
                f"{state.dashboard_url} does not answer; run ray-down.sh first"
            )
        print(f"ray-up: removing the stale record of a head that is gone ({state_path()})")
        procs.remove_files(state_path(), state.env_file or env_path())

    store = store_url()
    venv = venv_dir()
    ray_bin = os.path.join(venv, "bin", "ray")
    python = os.path.join(venv, "bin", "python")
    if not os.access(ray_bin, os.X_OK):
        raise Fail(f"no Ray CLI at {ray_bin}: create the venv first (make venv) or set VENV")

    dash_port = _int_env("RAY_DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT)
    if not port_free(dash_port):
        raise Fail(
            f"port {dash_port} (dashboard) is already in use on this machine, perhaps by another Ray head; "
            "stop that, or choose another port with RAY_DASHBOARD_PORT=<port>"
        )
    head_port = _int_env("RAY_HEAD_PORT", None)
    if head_port is None:
        head_port = DEFAULT_HEAD_PORT if port_free(DEFAULT_HEAD_PORT) else free_port({dash_port})
    elif not port_free(head_port):
        raise Fail(f"RAY_HEAD_PORT={head_port} is already in use; choose another port")
    client_port = free_port({dash_port, head_port})
    agent_port = free_port({dash_port, head_port, client_port})

    base = local_dir()
    temp_dir = ray_temp_dir(base)
    os.makedirs(base, exist_ok=True)
    os.makedirs(temp_dir, exist_ok=True)
    if temp_dir != base:
        print(f"ray-up: {base} is too long a path for Ray's sockets; Ray's temp dir is {temp_dir}")

    env = dict(os.environ)
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = venv
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "disabled"
    env.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "PYTHONHOME", "CL_STORE"):
        env.pop(name, None)  # a client-side address must not leak into the head (and its jobs); jobs name their store

    cmd = [
        ray_bin, "start", "--head",
        "--node-ip-address", "127.0.0.1",
        "--port", str(head_port),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dash_port),
        "--include-dashboard", "true",
        "--ray-client-server-port", str(client_port),
        "--dashboard-agent-listen-port", str(agent_port),
        "--min-worker-port", "0", "--max-worker-port", "0",  # OS-assigned: no clash with another head
        "--temp-dir", temp_dir,
        "--disable-usage-stats",
    ]
    num_cpus = _int_env("RAY_NUM_CPUS", None)
    num_gpus = _int_env("RAY_NUM_GPUS", None)
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]

    log_path = os.path.join(base, "ray-start.log")
    print(f"ray-up: starting a Ray head (dashboard 127.0.0.1:{dash_port}, GCS port {head_port}); log {log_path}")
    with open(log_path, "w") as log:
        # A new session: the head's processes share one process group that ray-down can signal
        # without touching any other Ray on the machine.
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=procs.repo_dir())
    pgid = proc.pid
    timeout = float_env("RAY_UP_TIMEOUT_S", 120.0)
    deadline = time.monotonic() + timeout

    def abort(reason: str) -> Fail:
        pids = head_processes(pgid)
        _signal(pids, signal.SIGKILL)
        return Fail(f"{reason}\n--- last lines of {log_path} ---\n{procs.log_tail(log_path, 25)}")

    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise abort(f"`ray start` did not return within {timeout:.0f} s") from None
    if rc != 0:
        raise abort(f"`ray start` failed (exit status {rc})")

    url = f"http://127.0.0.1:{dash_port}"
    info = None
    while time.monotonic() < deadline:
        info = dashboard_info(url)
        if info and jobs_api_ready(url):
            break
        time.sleep(0.5)
    else:
        raise abort(f"the dashboard at {url} did not answer within {timeout:.0f} s")

    session_dir = os.path.realpath(os.path.join(temp_dir, "session_latest"))
    session_name = info.get("session_name", os.path.basename(session_dir))
    if os.path.basename(session_dir) != session_name:
        raise abort(f"the dashboard at {url} belongs to session {session_name}, not to the head just started")
    try:
        with open(os.path.join(temp_dir, "ray_current_cluster")) as f:
            gcs_address = f.read().strip()
    except OSError:
        gcs_address = f"127.0.0.1:{head_port}"

    state = HeadState(
        pgid=pgid,
        pids=head_processes(pgid),
        temp_dir=temp_dir,
        session_dir=session_dir,
        session_name=session_name,
        gcs_address=gcs_address,
        dashboard_url=url,
        head_port=head_port,
        dashboard_port=dash_port,
        client_port=client_port,
        agent_port=agent_port,
        python=python,
        venv=venv,
        started_at=procs.now_iso(),
        log=log_path,
        store_url=store,
        env_file=env_path(),
    )
    write_state(state)
    write_env_file(state)
    print_addresses(state, header=f"Ray head is up (Ray {info.get('ray_version', '?')}, {len(state.pids)} processes).")
    return 0


def down() -> int:
    state = read_state()
    if state is None:
        print(f"ray-down: no local Ray head recorded in {local_dir()}; nothing to stop")
        return 0
    grace = float_env("RAY_DOWN_GRACE_S", 8.0)
    targets = live_head(state)  # identity checked once; then the group is followed as it shrinks
    if not targets:
        print(f"ray-down: the head recorded in {state_path()} is already gone")
        procs.remove_files(state_path(), state.env_file or env_path())
        return 0
    print(f"ray-down: stopping the local Ray head (pgid {state.pgid}, {len(targets)} processes)")
    # The order `ray stop` uses: the raylet first (its agents and workers follow it), then the
    # rest, the GCS server last; SIGTERM each bucket and wait for it, then SIGKILL what is left.
    names = _names(targets)
    buckets = [
        lambda pid: names.get(pid) == "raylet",
        lambda pid: names.get(pid) not in ("raylet", "gcs_server"),
        lambda pid: names.get(pid) == "gcs_server",
    ]
    for in_bucket in buckets:
        bucket = [p for p in head_processes(state.pgid) if in_bucket(p)]
        _signal(bucket, signal.SIGTERM)
        deadline = time.monotonic() + grace / len(buckets)
        while bucket and time.monotonic() < deadline:
            time.sleep(0.1)
            alive_now = set(head_processes(state.pgid))
            bucket = [p for p in bucket if p in alive_now]
    alive = head_processes(state.pgid)
    if alive:
        print(f"ray-down: {len(alive)} processes still up after SIGTERM; sending SIGKILL")
        _signal(alive, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive and time.monotonic() < deadline:
            time.sleep(0.25)
            alive = head_processes(state.pgid)
    if alive:
        raise Fail(f"processes {alive} of the head did not exit; the record stays in {state_path()}")
    procs.remove_files(state_path(), state.env_file or env_path())
    print(f"ray-down: stopped; logs stay in {state.session_dir}")
    return 0


def status() -> int:
    state = read_state()
    if state is None:
        print(f"no local Ray head recorded in {local_dir()} (start one with make ray-up)")
        return 0
    alive = live_head(state)
    if alive and dashboard_info(state.dashboard_url):
        print_addresses(state, header=f"Ray head running (pids {', '.join(map(str, alive))}).")
        return 0
    print(f"the head recorded in {state_path()} is {'not answering' if alive else 'gone'}; run ray-down.sh")
    return 1


def main(argv: list[str]) -> int:
    return procs.run_command(argv, {"up": up, "down": down, "status": status}, "ray", "cl_platform.devstack.ray_head")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
