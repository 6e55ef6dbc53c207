"""Helpers shared by :mod:`.ray_head` and :mod:`.s3_server`: settings, ports, state and env files, HTTP.

Standard library only (``ray-down.sh`` / ``s3-down.sh`` may run without the venv).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import socket
import sys
import urllib.request
from dataclasses import asdict
from typing import TypeVar

#: Environment variable naming the checkout the dev stack serves (``infra/local/venv.sh`` sets it).
REPO_ENV = "CL_REPO_DIR"

# Talk to 127.0.0.1 directly, whatever http_proxy / https_proxy say.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

T = TypeVar("T")


class Fail(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


def repo_dir() -> str:
    """The project checkout: ``$CL_REPO_DIR``, else the directory above the package when it is a
    source checkout (an editable install), else the current directory."""
    if os.environ.get(REPO_ENV):
        return os.path.abspath(os.environ[REPO_ENV])
    above = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return above if os.path.exists(os.path.join(above, "pyproject.toml")) else os.getcwd()


def local_dir_from(env_var: str, default_name: str) -> str:
    """``$env_var`` or ``<repo>/<default_name>``, absolute."""
    return os.path.abspath(os.environ.get(env_var) or os.path.join(repo_dir(), default_name))


def venv_dir() -> str:
    v = os.environ.get("VENV") or ".venv"
    return v if os.path.isabs(v) else os.path.join(repo_dir(), v)


def float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise Fail(f"{name}={raw!r} is not a number") from None


def port_free(port: int, hosts: tuple[str, ...] = ("127.0.0.1",)) -> bool:
    """True if nothing listens on ``port`` on any of ``hosts``."""
    for host in hosts:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As the servers themselves bind: TIME_WAIT leftovers of a stopped server do not count.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def kernel_port() -> int:
    """A port the kernel hands out for 127.0.0.1 (free when asked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def log_tail(path: str, lines: int) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def read_state(path: str, cls: type[T], what: str) -> T | None:
    """The dataclass ``cls`` recorded at ``path`` (None if there is none; unknown keys are dropped)."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise Fail(f"cannot read {path}: {exc}; remove it if no {what} is running") from None
    known = cls.__dataclass_fields__
    return cls(**{k: v for k, v in raw.items() if k in known})


def write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_state(path: str, state) -> None:
    write_atomic(path, json.dumps(asdict(state), indent=2) + "\n")


def remove_files(*paths: str) -> None:
    """Remove those of ``paths`` that exist (the records of a server that is gone)."""
    for path in paths:
        if os.path.exists(path):
            os.unlink(path)


def write_env_file(path: str, comments: list[str], values: dict[str, str]) -> None:
    """An env file: ``# comment`` lines, then ``export K=V`` lines (shell-quoted), for ``. <path>``."""
    lines = [f"# {c}" for c in comments] + [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    write_atomic(path, "\n".join(lines) + "\n")


def read_env_file(path: str) -> dict[str, str]:
    """Parse an env file written by :func:`write_env_file` (``export K=V`` lines, shell-quoted)."""
    out: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            if len(words) != 2 or words[0] != "export" or "=" not in words[1]:
                raise ValueError(f"{path}: not an `export K=V` line: {line!r}")
            key, _, value = words[1].partition("=")
            out[key] = value
    return out


def shown_path(path: str) -> str:
    """``path`` relative to the current directory when it is below it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def run_command(argv: list[str], commands: dict, prefix: str, module: str) -> int:
    """``main`` of a module: run ``commands[argv[1]]``; a :class:`Fail` prints ``<prefix>-<cmd>: error: ...``."""
    if len(argv) != 2 or argv[1] not in commands:
        print(f"usage: python -m {module} {'|'.join(commands)}", file=sys.stderr)
        return 2
    try:
        return commands[argv[1]]()
    except Fail as exc:
        print(f"{prefix}-{argv[1]}: error: {exc}", file=sys.stderr)
        return 1
