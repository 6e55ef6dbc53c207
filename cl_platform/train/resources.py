"""Connecting to Ray and checking a training request against the cluster before a fit.

A Ray Train fit whose workers do not fit the cluster waits forever for resources instead of
failing, so jobs call :func:`validate_resources` right after
:func:`init_ray` and before building the trainer:

    started = init_ray(args.address, runtime_env=runtime_env_for_store(args.store))
    try:
        validate_resources(args.workers, 1, args.gpus_per_worker)
        use_gpu = use_gpu_auto()
        ...
    finally:
        if started:
            ray.shutdown()

:func:`init_ray` either connects to an existing cluster (an address, or ``RAY_ADDRESS`` as set
for a job started with ``ray job submit``) or starts an embedded local Ray with its own temp
dir, no dashboard and no usage stats, and says which it did, so only the process that started
Ray shuts it down.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import ray

from cl_platform.store import Store

# Ray rounds resource quantities to 1e-4; compare with a tolerance below that.
_EPS = 1e-6

# Any of these set: AWS credentials need no instance metadata (see init_ray).
_NO_INSTANCE_METADATA_NEEDED = ("AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class InsufficientResourcesError(ValueError):
    """A training request asks for more CPUs or GPUs than the Ray cluster has.

    Attributes:
        resource: ``"CPU"`` or ``"GPU"``.
        asked: the total amount asked for.
        available: the cluster's total amount.
    """

    def __init__(self, message: str, *, resource: str, asked: float, available: float) -> None:
        super().__init__(message)
        self.resource = resource
        self.asked = asked
        self.available = available

    def __reduce__(self):  # keep the fields across pickling (Ray ships exceptions between processes)
        return (_rebuild_insufficient, (self.args[0], self.resource, self.asked, self.available))


def _rebuild_insufficient(message: str, resource: str, asked: float, available: float) -> InsufficientResourcesError:
    return InsufficientResourcesError(message, resource=resource, asked=asked, available=available)


@dataclass(frozen=True)
class ClusterCapacity:
    """What the Ray cluster has (totals, not what is free right now).

    Attributes:
        cpus: total CPUs over all alive nodes.
        gpus: total GPUs over all alive nodes.
        nodes: per alive node, ``(cpus, gpus)``.
    """

    cpus: float
    gpus: float
    nodes: list[tuple[float, float]] = field(default_factory=list)


def cluster_capacity() -> ClusterCapacity:
    """Totals from ``ray.cluster_resources()`` and per-node amounts from ``ray.nodes()``."""
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised: call init_ray() (or ray.init()) before checking resources")
    totals = ray.cluster_resources()
    nodes = [
        (float(n.get("Resources", {}).get("CPU", 0.0)), float(n.get("Resources", {}).get("GPU", 0.0)))
        for n in ray.nodes()
        if n.get("Alive", n.get("alive", False))
    ]
    return ClusterCapacity(cpus=float(totals.get("CPU", 0.0)), gpus=float(totals.get("GPU", 0.0)), nodes=nodes)


def _num(x: float) -> str:
    return str(int(round(x))) if abs(x - round(x)) < _EPS else f"{x:g}"


def _qty(x: float, unit: str) -> str:
    return f"{_num(x)} {unit}" + ("" if abs(x - 1) < _EPS else "s")


def validate_resources(
    num_workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    *,
    extra_cpus: float = 0.0,
) -> ClusterCapacity:
    """Check that ``num_workers`` training workers (plus ``extra_cpus``) fit the Ray cluster.

    Call after :func:`init_ray`. Checks the cluster totals (``ray.cluster_resources()``) and that
    the workers can be placed node by node (a worker's CPUs and GPUs must fit on one node).
    Returns the :class:`ClusterCapacity` it checked against.

    Args:
        num_workers: training workers (>= 1).
        cpus_per_worker: CPUs each worker reserves (>= 0).
        gpus_per_worker: GPUs each worker reserves (>= 0; above 1 it must be a whole number).
        extra_cpus: CPUs needed besides the workers (e.g. Ray Data tasks feeding them).

    Raises:
        InsufficientResourcesError: the request does not fit; the message names what was asked
            and what the cluster has, e.g. ``asked for 8 workers x 1 CPU = 8 CPUs, the cluster
            has 2 CPUs; lower --workers or add nodes``.
        ValueError: an argument is out of range (named in the message).
        RuntimeError: Ray is not initialised.

    Totals, not free resources, are compared: a request that fits but is blocked by other jobs
    waits for them rather than failing.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    for name, value in (("cpus_per_worker", cpus_per_worker), ("gpus_per_worker", gpus_per_worker), ("extra_cpus", extra_cpus)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if gpus_per_worker > 1 and abs(gpus_per_worker - round(gpus_per_worker)) > _EPS:
        raise ValueError(f"gpus_per_worker above 1 must be a whole number (Ray's rule), got {gpus_per_worker!r}")

    cap = cluster_capacity()
    workers = f"{num_workers} worker{'s' if num_workers != 1 else ''}"

    cpus_asked = num_workers * cpus_per_worker + extra_cpus
    if cpus_asked > cap.cpus + _EPS:
        extra = f" + {_qty(extra_cpus, 'CPU')} besides the workers" if extra_cpus > 0 else ""
        raise InsufficientResourcesError(
            f"asked for {workers} x {_qty(cpus_per_worker, 'CPU')}{extra} = {_qty(cpus_asked, 'CPU')}, "
            f"the cluster has {_qty(cap.cpus, 'CPU')}; lower --workers or add nodes",
            resource="CPU", asked=cpus_asked, available=cap.cpus,
        )
    gpus_asked = num_workers * gpus_per_worker
    if gpus_asked > cap.gpus + _EPS:
        raise InsufficientResourcesError(
            f"asked for {workers} x {_qty(gpus_per_worker, 'GPU')} = {_qty(gpus_asked, 'GPU')}, "
            f"the cluster has {_qty(cap.gpus, 'GPU')}; lower --workers or --gpus-per-worker "
            "(0 trains on CPU), or add GPU nodes",
            resource="GPU", asked=gpus_asked, available=cap.gpus,
        )

    # Node by node: how many workers fit on each (a worker's bundle cannot span nodes).
    def fits(cpus: float, gpus: float) -> float:
        per = [math.floor((have + _EPS) / need) for have, need in ((cpus, cpus_per_worker), (gpus, gpus_per_worker)) if need > 0]
        return min(per) if per else math.inf

    placeable = sum(fits(c, g) for c, g in cap.nodes) if cap.nodes else math.inf
    if placeable < num_workers:
        shown = ", ".join(f"{_qty(c, 'CPU')}/{_qty(g, 'GPU')}" for c, g in cap.nodes)
        resource = "GPU" if gpus_per_worker > 0 and all(g + _EPS < gpus_per_worker for _, g in cap.nodes) else "CPU"
        raise InsufficientResourcesError(
            f"asked for {workers} x ({_qty(cpus_per_worker, 'CPU')}, {_qty(gpus_per_worker, 'GPU')}), "
            f"but only {int(placeable)} such worker(s) fit on the cluster's nodes ({shown}): a worker's "
            "resources must fit on one node; lower --workers or the per-worker resources, or add nodes",
            resource=resource, asked=num_workers * (gpus_per_worker if resource == "GPU" else cpus_per_worker),
            available=cap.gpus if resource == "GPU" else cap.cpus,
        )
    return cap


def use_gpu_auto() -> bool:
    """True when the Ray cluster has GPUs (call after :func:`init_ray`)."""
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised: call init_ray() (or ray.init()) first")
    return float(ray.cluster_resources().get("GPU", 0.0)) > 0


def default_temp_dir() -> str:
    """Temp dir for an embedded Ray: ``<system tmp>/cl_ray_<uid>`` (short: Ray's socket paths
    must stay under 107 bytes)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"cl_ray_{uid}")


def init_ray(
    address: str | None = None,
    *,
    temp_dir: str | None = None,
    num_cpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> bool:
    """Connect to Ray or start an embedded local Ray; True if this call started Ray.

    - Ray already initialised in this process: nothing is done; returns False.
    - ``address`` (or else ``RAY_ADDRESS``, which ``ray job submit`` sets for the job's driver)
      given: connect to that cluster (GCS ``host:port``, ``auto`` or ``ray://``); returns False.
      An ``http://`` address is the dashboard's (what ``ray job submit`` wants) and cannot be
      connected to: ``ValueError`` saying what to do instead.
    - Otherwise start a local Ray in this process: its own temp dir (``temp_dir``, default
      :func:`default_temp_dir`), no dashboard (so the State API's absence is not logged every
      second: :mod:`cl_platform.train.ray_logging`), usage stats off (``RAY_USAGE_STATS_ENABLED=0``),
      ``num_cpus`` CPUs (default: all); returns True, and the caller should ``ray.shutdown()``.
      Its workers inherit this process's environment, AWS credentials included.

    ``runtime_env`` is passed to ``ray.init`` (e.g. :func:`runtime_env_for_store`).
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a token given: Ray's own choice (token auth)
    if any(os.environ.get(name) for name in _NO_INSTANCE_METADATA_NEEDED):
        # static keys or a non-AWS endpoint: skip the instance-metadata lookups (slow off EC2); left
        # alone otherwise, so that an instance profile still gives credentials
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address:
        if address.startswith(("http://", "https://")):
            raise ValueError(
                f"Ray address {address!r} is a dashboard (job submission) address: submit the job with "
                f"`RAY_ADDRESS={address} ray job submit --working-dir . -- python ...`, or connect a driver "
                "directly with the cluster's GCS address (host:port, printed by `make ray-up`), or unset "
                "RAY_ADDRESS to run on an embedded local Ray"
            )
        ray.init(address=address, **kwargs)
        return False
    temp_dir = temp_dir or default_temp_dir()
    os.makedirs(temp_dir, exist_ok=True)
    from cl_platform.train.ray_logging import SETUP_HOOK

    kwargs["runtime_env"] = {**kwargs.get("runtime_env", {}), "worker_process_setup_hook": SETUP_HOOK}
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=os.path.abspath(temp_dir),
        **kwargs,
    )
    return True


#: The AWS settings a Ray ``runtime_env`` may carry for an S3 store: where the store is and how
#: to reach it, never who one is. Credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
#: ``AWS_SESSION_TOKEN``, ``AWS_SECURITY_TOKEN``, ...) are not forwarded: Ray's job API and
#: dashboard show a runtime_env to anyone who can reach them. ``AWS_PROFILE`` is not forwarded
#: either: a profile is a file on the machine that named it, and a worker takes its credentials
#: from its own environment.
FORWARDED_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
)

#: Parts of a variable name that mark it as a secret: such a variable never enters a runtime_env.
SECRET_NAME_PARTS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")


def is_secret_env_name(name: str) -> bool:
    """True if the variable ``name`` looks like it holds a secret (:data:`SECRET_NAME_PARTS`)."""
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def public_env_vars(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the variables whose names look secret (:func:`is_secret_env_name`)."""
    return {k: v for k, v in env.items() if not is_secret_env_name(k)}


def runtime_env_for_store(store: Store | str | None) -> dict[str, Any]:
    """A Ray ``runtime_env`` giving workers this process's non-secret AWS settings for an S3 store.

    For an ``s3://`` store: ``{"env_vars": {...}}`` with those of :data:`FORWARDED_AWS_SETTINGS`
    that are set here (endpoint, region, ``AWS_EC2_METADATA_DISABLED``); ``{}`` when none is. For
    a local store (or ``None``, the default local store): ``{}``.

    Never credentials: a runtime_env is visible in the job's metadata (dashboard, ``ray job``
    commands) to anyone who can reach the cluster. Workers get their credentials the way the
    cluster gives them: processes started by a local ``ray.init()`` or by ``make ray-up`` inherit
    the environment of the process that started Ray; Kubernetes pods get the AWS variables from
    the Secret (``envFrom``) or an IAM role for the service account (IRSA); VMs an instance
    profile. The store's pyarrow filesystem resolves them there (``Store.pyarrow_filesystem``).
    """
    url = store.url if isinstance(store, Store) else (store or "")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("s3", "s3a"):
        return {}
    env = public_env_vars({k: os.environ[k] for k in FORWARDED_AWS_SETTINGS if os.environ.get(k)})
    return {"env_vars": dict(sorted(env.items()))} if env else {}


__all__ = [
    "ClusterCapacity",
    "FORWARDED_AWS_SETTINGS",
    "InsufficientResourcesError",
    "SECRET_NAME_PARTS",
    "cluster_capacity",
    "default_temp_dir",
    "init_ray",
    "is_secret_env_name",
    "public_env_vars",
    "runtime_env_for_store",
    "use_gpu_auto",
    "validate_resources",
]
