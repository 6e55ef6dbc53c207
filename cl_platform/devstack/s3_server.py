"""Start, stop and describe one local S3 endpoint (moto's server) for the platform (``make s3-up`` / ``s3-down``).

Usage: ``python -m cl_platform.devstack.s3_server up|down|status|env`` (the ``infra/local/s3-up.sh``
/ ``s3-down.sh`` wrappers pick the project's venv). Standard library only, like :mod:`.ray_head`: the server is
moto's own ``moto_server`` executable from the venv, and the bucket is created with one plain
HTTP ``PUT`` (moto does not check signatures), so this file imports neither moto nor boto3.

``up`` starts ``moto_server -H 127.0.0.1 -p PORT`` in a new process session (so nothing else
shares its process group), waits until it answers, creates the bucket, and writes two files in
the state dir:

- ``s3.json``: pid, port, endpoint, bucket, store URL, start time (what ``down`` needs);
- ``env``: ``export`` lines with the variables the platform reads (``cl_platform/store.py``):
  ``AWS_ENDPOINT_URL`` (and ``AWS_ENDPOINT_URL_S3``, which the store prefers when both are set),
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` / ``AWS_REGION``,
  ``AWS_EC2_METADATA_DISABLED=true``, ``NO_PROXY`` (a proxy must not intercept 127.0.0.1) and
  ``CL_STORE=s3://<bucket>/<prefix>``. ``. .s3_local/env`` and every command of the platform
  talks to the local bucket.

Running ``up`` again while the server answers only prints where it is. ``down`` stops that server
and only it (the recorded pid, checked against its command line first so a reused pid is never
signalled), SIGTERM then SIGKILL, and removes ``s3.json`` and ``env``. moto keeps everything in
memory: the bucket's contents are gone after ``down``.

Environment overrides (defaults in brackets):

- ``S3_LOCAL_DIR`` [``<repo>/.s3_local``]: state dir (``s3.json``, ``env``, ``moto.log``).
- ``S3_LOCAL_PORT`` [4566 if free, else any free port]: the port on 127.0.0.1; when set, it
  must be free. (4566 is the port developers know from LocalStack as "local AWS".)
- ``S3_LOCAL_BUCKET`` [``cl-local``], ``S3_LOCAL_PREFIX`` [``cl``]: ``CL_STORE`` is
  ``s3://<bucket>/<prefix>``.
- ``VENV`` [``<repo>/.venv``]: where ``bin/moto_server`` is.
- ``S3_UP_TIMEOUT_S`` [30]: how long ``up`` waits for the server to answer.
- ``S3_DOWN_GRACE_S`` [5]: how long ``down`` waits after SIGTERM before SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from cl_platform.devstack import procs
from cl_platform.devstack.procs import Fail, float_env, kernel_port, read_env_file, venv_dir  # noqa: F401

STATE_FILE = "s3.json"
ENV_FILE = "env"
DEFAULT_PORT = 4566
DEFAULT_BUCKET = "cl-local"
DEFAULT_PREFIX = "cl"
# moto accepts any credentials; these are the values its own docs and our tests use.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
# S3's bucket-name rule (lower case, 3-63 characters, no leading/trailing dot or dash).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass
class S3State:
    """What ``up`` records in ``<state dir>/s3.json``.

    Attributes:
        pid: the ``moto_server`` process (also its process group and session).
        port: its port on 127.0.0.1; endpoint_url: ``http://127.0.0.1:<port>``.
        bucket: the bucket created at start; store_url: ``s3://<bucket>/<prefix>`` (``CL_STORE``).
        command: the server's command line (checked before ``down`` signals the pid).
        env_file: the file of ``export`` lines; log: the server's output; started_at: ISO time (UTC).
    """

    pid: int
    port: int
    endpoint_url: str
    bucket: str
    store_url: str
    command: list[str]
    env_file: str
    log: str
    started_at: str


# ---------------------------------------------------------------------------- settings


def local_dir() -> str:
    return procs.local_dir_from("S3_LOCAL_DIR", ".s3_local")


def bucket_and_prefix() -> tuple[str, str]:
    bucket = os.environ.get("S3_LOCAL_BUCKET") or DEFAULT_BUCKET
    prefix = (os.environ.get("S3_LOCAL_PREFIX", DEFAULT_PREFIX) or "").strip("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise Fail(f"S3_LOCAL_BUCKET={bucket!r} is not a valid bucket name (lower case letters, numbers, '.', '-')")
    if prefix and not all(re.fullmatch(r"[A-Za-z0-9._-]+", p) and p not in (".", "..") for p in prefix.split("/")):
        raise Fail(f"S3_LOCAL_PREFIX={prefix!r}: use '/'-separated names of letters, numbers, '.', '_', '-'")
    return bucket, prefix


def port_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:``port``."""
    return procs.port_free(port)


def choose_port() -> int:
    raw = os.environ.get("S3_LOCAL_PORT")
    if raw:
        try:
            port = int(raw)
        except ValueError:
            raise Fail(f"S3_LOCAL_PORT={raw!r} is not an integer") from None
        if not 0 < port < 65536:
            raise Fail(f"S3_LOCAL_PORT={port} is not a valid port")
        if not port_free(port):
            raise Fail(f"port {port} (S3_LOCAL_PORT) is already in use; pick another or unset S3_LOCAL_PORT")
        return port
    if port_free(DEFAULT_PORT):
        return DEFAULT_PORT
    return kernel_port()


def server_command(port: int) -> list[str]:
    """``moto_server`` of the venv (or ``python -m moto.server`` where the script is missing)."""
    exe = os.path.join(venv_dir(), "bin", "moto_server")
    if os.access(exe, os.X_OK):
        return [exe, "-H", "127.0.0.1", "-p", str(port)]
    python = os.path.join(venv_dir(), "bin", "python")
    if not os.access(python, os.X_OK):
        raise Fail(f"no moto_server or python in {venv_dir()}: create the venv first (make venv) or set VENV")
    probe = subprocess.run([python, "-c", "import moto.server"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise Fail(f"moto's server is not installed in {venv_dir()}: pip install 'moto[server]' (the dev extra has it)")
    return [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


# ---------------------------------------------------------------------------- HTTP

_HTTP = procs.HTTP


def answers(endpoint: str, timeout: float = 2.0) -> bool:
    """True once the server answers S3's ListBuckets (``GET /``)."""
    try:
        with _HTTP.open(f"{endpoint}/", timeout=timeout) as r:
            return r.status == 200 and b"ListAllMyBucketsResult" in r.read()
    except (urllib.error.URLError, OSError):
        return False


def create_bucket(endpoint: str, bucket: str) -> None:
    """``PUT /<bucket>``; a bucket that already exists is fine."""
    req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT", data=b"")
    try:
        with _HTTP.open(req, timeout=10) as r:
            r.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if "BucketAlreadyOwnedByYou" not in body and "BucketAlreadyExists" not in body:
            raise Fail(f"creating bucket {bucket!r} at {endpoint} failed: HTTP {exc.code} {body[:300]}") from None


# ---------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> str | None:
    """The command line of ``pid`` (None if it is gone or a zombie)."""
    out = subprocess.run(["ps", "-o", "stat=,args=", "-p", str(pid)], capture_output=True, text=True)
    line = out.stdout.strip()
    if out.returncode != 0 or not line:
        return None
    stat, _, args = line.partition(" ")
    return None if stat.startswith("Z") else args.strip()


def is_our_server(state: S3State) -> bool:
    """True while the recorded pid is alive and is still the server ``up`` started (same port)."""
    args = _cmdline(state.pid)
    return bool(args) and "moto" in args and f"-p {state.port}" in args


# ---------------------------------------------------------------------------- state files


def state_path() -> str:
    return os.path.join(local_dir(), STATE_FILE)


def env_path() -> str:
    return os.path.join(local_dir(), ENV_FILE)


def read_state() -> S3State | None:
    return procs.read_state(state_path(), S3State, "server")


def env_vars(state: S3State) -> dict[str, str]:
    """The variables the env file exports (the order is the file's)."""
    no_proxy = [x for x in (os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or "").split(",") if x]
    no_proxy = ",".join(dict.fromkeys(no_proxy + ["127.0.0.1", "localhost"]))
    return {
        "AWS_ENDPOINT_URL": state.endpoint_url,
        "AWS_ENDPOINT_URL_S3": state.endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
        "CL_STORE": state.store_url,
    }


def write_env_file(state: S3State) -> None:
    procs.write_env_file(state.env_file, [
        "Written by `make s3-up` (python -m cl_platform.devstack.s3_server): the local moto S3 endpoint.",
        "Use it with:  . .s3_local/env   (then --store \"$CL_STORE\"). Removed by `make s3-down`.",
    ], env_vars(state))


def print_where(state: S3State, *, header: str) -> None:
    print(header)
    print(f"  endpoint:  {state.endpoint_url}  (pid {state.pid})")
    print(f"  store:     {state.store_url}")
    print(f"  env file:  {state.env_file}")
    print(f"  use it:    . {procs.shown_path(state.env_file)}   (then --store \"$CL_STORE\")")
    print("  stop it:   make s3-down   (moto keeps the bucket in memory: its contents go with it)")


# ---------------------------------------------------------------------------- commands


def up() -> int:
    state = read_state()
    if state is not None:
        if is_our_server(state) and answers(state.endpoint_url):
            if not os.path.exists(state.env_file):
                write_env_file(state)
            print_where(state, header="local S3 already running.")
            return 0
        if is_our_server(state):
            raise Fail(f"the server recorded in {state_path()} (pid {state.pid}) does not answer; run s3-down.sh first")
        print(f"s3-up: removing the stale record of a server that is gone ({state_path()})")
        procs.remove_files(state_path(), env_path())

    bucket, prefix = bucket_and_prefix()
    port = choose_port()
    cmd = server_command(port)
    base = local_dir()
    os.makedirs(base, exist_ok=True)
    log_path = os.path.join(base, "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    print(f"s3-up: starting moto's S3 server on {endpoint}; log {log_path}")
    with open(log_path, "w") as log:
        # A session of its own: `down` signals this pid only, and the terminal's Ctrl-C does not reach it.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=base)

    def abort(reason: str) -> Fail:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        return Fail(f"{reason}\n--- last lines of {log_path} ---\n{procs.log_tail(log_path, 20)}")

    timeout = float_env("S3_UP_TIMEOUT_S", 30.0)
    deadline = time.monotonic() + timeout
    while not answers(endpoint, timeout=1.0):
        if proc.poll() is not None:
            raise abort(f"moto_server exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise abort(f"moto_server did not answer on {endpoint} within {timeout:.0f} s")
        time.sleep(0.2)
    try:
        create_bucket(endpoint, bucket)
    except Fail as exc:
        raise abort(str(exc)) from None

    state = S3State(
        pid=proc.pid,
        port=port,
        endpoint_url=endpoint,
        bucket=bucket,
        store_url=f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
        command=cmd,
        env_file=env_path(),
        log=log_path,
        started_at=procs.now_iso(),
    )
    procs.write_state(state_path(), state)
    write_env_file(state)
    print_where(state, header=f"local S3 is up (bucket {bucket}).")
    return 0


def down() -> int:
    state = read_state()
    if state is None:
        print(f"s3-down: no local S3 server recorded in {local_dir()}; nothing to stop")
        return 0
    if not is_our_server(state):
        print(f"s3-down: the server recorded in {state_path()} (pid {state.pid}) is already gone")
    else:
        print(f"s3-down: stopping moto_server (pid {state.pid}, {state.endpoint_url})")
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + float_env("S3_DOWN_GRACE_S", 5.0)
        while is_our_server(state) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_our_server(state):
            print("s3-down: still running after SIGTERM; sending SIGKILL")
            os.kill(state.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while is_our_server(state) and time.monotonic() < deadline:
                time.sleep(0.1)
        if is_our_server(state):
            raise Fail(f"moto_server (pid {state.pid}) did not exit; the record stays in {state_path()}")
    procs.remove_files(state_path(), state.env_file)
    print("s3-down: stopped")
    return 0


def status() -> int:
    state = read_state()
    if state is None:
        print(f"no local S3 server recorded in {local_dir()} (start one with make s3-up)")
        return 0
    if is_our_server(state) and answers(state.endpoint_url):
        print_where(state, header="local S3 running.")
        return 0
    print(f"the server recorded in {state_path()} is {'not answering' if is_our_server(state) else 'gone'}; run s3-down.sh")
    return 1


def env() -> int:
    """Print the env file's path (for ``. $(python -m cl_platform.devstack.s3_server env)``)."""
    state = read_state()
    if state is None or not os.path.exists(state.env_file):
        raise Fail(f"no local S3 server recorded in {local_dir()} (start one with make s3-up)")
    print(state.env_file)
    return 0


def main(argv: list[str]) -> int:
    return procs.run_command(argv, {"up": up, "down": down, "status": status, "env": env}, "s3",
                             "cl_platform.devstack.s3_server")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
