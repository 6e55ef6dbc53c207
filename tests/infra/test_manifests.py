"""infra/: the image, the KubeRay manifests, the cluster launcher config and docs/cluster.md agree
with the code (read statically: no Docker engine, cluster or network here).

- every YAML under infra/ parses (multi-document aware);
- every entry point a RayJob, the scheduler Deployment, cluster.yaml's commands or
  docs/cluster.md's commands name exists, and its own argument parser accepts the arguments
  (the scheduler's ``--job-args`` too, through the round command it builds);
- GPU requests equal ``--workers`` x ``--gpus-per-worker`` of the job commands (for a sweep:
  the sweep file's workers x GPUs x concurrent trials);
- the Ray version of the image tags, ``rayVersion`` fields, the Dockerfile's base image and the
  installed Ray agree, and lie in pyproject.toml's range;
- the kustomization lists every manifest;
- security: Ray's token authentication on every Ray pod (and the scheduler holds the token), no
  dashboard on 0.0.0.0, the bucket's credentials by ``envFrom`` from the Secret only, and no AWS
  secret written anywhere in infra/ but the Secret's placeholders.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
CLUSTER_YAML = INFRA / "aws" / "cluster.yaml"
DOCS = REPO / "docs" / "cluster.md"


# ------------------------------------------------------------------------------------ reading


def _yaml_docs(path: Path) -> list[Any]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _k8s_objects() -> dict[str, list[dict]]:
    """kind -> the objects of that kind in infra/k8s (the kustomization excluded)."""
    out: dict[str, list[dict]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _yaml_docs(path):
            out.setdefault(doc["kind"], []).append(doc)
    return out


def _one(kind: str, name: Optional[str] = None) -> dict:
    objs = [o for o in _k8s_objects().get(kind, []) if name is None or o["metadata"]["name"] == name]
    assert len(objs) == 1, f"expected one {kind} {name or ''} in infra/k8s, found {len(objs)}"
    return objs[0]


def _dockerfile_args() -> dict[str, str]:
    """``ARG NAME=default`` values of the Dockerfile (the first default of each name)."""
    args: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"\s*ARG\s+([A-Za-z_]\w*)=(\S+)", line)
        if m:
            args.setdefault(m.group(1), m.group(2))
    return args


def _resolve(text: str, values: dict[str, str]) -> str:
    """Expand ``${NAME}`` from ``values`` (Dockerfile ARG syntax)."""
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)


def _pinned_ray() -> str:
    return _dockerfile_args()["RAY_VERSION"]


def _app_dir() -> str:
    """The project's path in the image (``ENV APP_DIR=...``): manifests name entry points under it."""
    m = re.search(r"^ENV\s+APP_DIR=(\S+)", DOCKERFILE.read_text(), re.M)
    assert m, "infra/docker/Dockerfile must set ENV APP_DIR=<project path in the image>"
    return m.group(1).rstrip("/")


def _configmap() -> dict[str, str]:
    return _one("ConfigMap", "cl-settings")["data"]


# --------------------------------------------------------------------------- commands in text


def _commands_in_lines(lines: list[str]) -> list[str]:
    """Shell commands that start a Python entry point (``python ...`` / ``ray job submit ...``),
    with ``\\`` continuations joined."""
    out, current = [], None
    starts = re.compile(r"^(\w+=\S+\s+)*(ray job submit|python3?|\.venv/bin/python)\b")
    for raw in lines:
        line = raw.strip()
        if current is not None:
            current += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                out.append(current)
                current = None
            continue
        if starts.match(line):
            if line.endswith("\\"):
                current = line.rstrip("\\").strip()
            else:
                out.append(line)
    return out


def _cluster_yaml_commands() -> list[str]:
    comments = [line.lstrip()[1:] for line in CLUSTER_YAML.read_text().splitlines() if line.lstrip().startswith("#")]
    return _commands_in_lines(comments)


def _docs_commands() -> list[str]:
    if not DOCS.exists():
        return []
    lines, inside = [], False
    for line in DOCS.read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside:
            lines.append(line)
    return _commands_in_lines(lines)


# ----------------------------------------------------------------------- entry-point parsing


@dataclass
class Launch:
    """A parsed entry-point invocation.

    Attributes:
        entry: the entry point (``jobs/sequence.py`` or ``-m cl_platform.suites.mode_official``).
        args: the parsed arguments.
        gpus: GPUs the job asks Ray for (None: it trains nothing itself).
        cpus_per_worker / gpus_per_worker: per Ray Train worker (None: not a training job).
    """

    entry: str
    args: argparse.Namespace
    gpus: Optional[float] = None
    cpus_per_worker: Optional[float] = None
    gpus_per_worker: Optional[float] = None


def _load_script(rel: str):
    spec = importlib.util.spec_from_file_location("_entry_" + re.sub(r"\W", "_", rel), REPO / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(parse: Callable[[list[str]], argparse.Namespace], argv: list[str], what: str) -> argparse.Namespace:
    """``parse(argv)``, turning argparse's exit into a failure that shows its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(argv)
    except SystemExit as exc:
        pytest.fail(f"{what}: its parser refused {shlex.join(argv)} (exit {exc.code}):\n{err.getvalue()}")


def _sequence(argv: list[str], what: str) -> Launch:
    from cl_platform.cli.sequence import build_parser

    args = _parse(build_parser().parse_args, argv, what)
    gpw = args.gpus_per_worker if args.gpus_per_worker is not None else 0.0
    return Launch("jobs/sequence.py", args, gpus=args.num_workers * gpw, cpus_per_worker=args.cpus_per_worker,
                  gpus_per_worker=gpw)


def _scheduler(argv: list[str], what: str) -> Launch:
    """The scheduler's arguments, and the round command its settings produce (parsed by
    jobs/sequence.py's parser): the GPUs are the rounds'."""
    from cl_platform.cli.scheduler import build_parser, settings_overrides
    from cl_platform.scheduler.config import LineageSettings
    from cl_platform.scheduler.runner import round_args

    args = _parse(build_parser().parse_args, argv, what)
    if args.command != "run":
        return Launch("jobs/scheduler.py", args)
    settings = LineageSettings.from_dict(settings_overrides(args), where=what)
    rnd = round_args(settings, args.store or "s3://bucket/prefix", task="probe", run=f"{args.lineage}-2-probe",
                     from_run=f"{args.lineage}-1-first")
    inner = _sequence(rnd, f"{what} (a round it submits: jobs/sequence.py {shlex.join(rnd)})")
    return Launch("jobs/scheduler.py", args, gpus=inner.gpus, cpus_per_worker=inner.cpus_per_worker,
                  gpus_per_worker=inner.gpus_per_worker)


def _sweep(argv: list[str], what: str) -> Launch:
    from cl_platform.cli.sweep import build_parser
    from cl_platform.sweeps.space import load_sweep

    args = _parse(build_parser().parse_args, argv, what)
    config = _repo_path(args.config)
    assert config.is_file(), f"{what}: --config {args.config} does not exist in the repository"
    spec = load_sweep(str(config))
    r = spec.resources
    return Launch("sweeps/sweep.py", args, gpus=r.num_workers * r.gpus_per_worker * spec.search.max_concurrent_trials,
                  cpus_per_worker=r.cpus_per_worker, gpus_per_worker=r.gpus_per_worker)


def _pretrain(argv: list[str], what: str) -> Launch:
    # jobs/pretrain_base.py exposes parse_args(argv), not a parser builder.
    return Launch("jobs/pretrain_base.py", _parse(_load_script("jobs/pretrain_base.py").parse_args, argv, what))


def _drop_task(argv: list[str], what: str) -> Launch:
    parser = _load_script("infra/local/drop_task.py").build_parser()
    return Launch("infra/local/drop_task.py", _parse(parser.parse_args, argv, what))


def _importer(argv: list[str], what: str) -> Launch:
    from cl_platform.suites.mode_official import build_parser

    return Launch("-m cl_platform.suites.mode_official", _parse(build_parser().parse_args, argv, what))


#: Entry points the manifests and docs may name, and how to parse their arguments. A command naming
#: any other entry point fails the test: add its parser here.
ENTRY_POINTS: dict[str, Callable[[list[str], str], Launch]] = {
    "jobs/sequence.py": _sequence,
    "jobs/scheduler.py": _scheduler,
    "sweeps/sweep.py": _sweep,
    "jobs/pretrain_base.py": _pretrain,
    "infra/local/drop_task.py": _drop_task,
    "-m cl_platform.suites.mode_official": _importer,
}


def _repo_path(path: str) -> Path:
    """A path as a manifest names it (in the image under APP_DIR, or relative to the repo root)."""
    app = _app_dir() + "/"
    rel = path[len(app):] if path.startswith(app) else path
    assert not os.path.isabs(rel), f"{path}: absolute paths must lie under the image's APP_DIR {app}"
    return REPO / rel


def launch_of(argv: list[str], what: str) -> Optional[Launch]:
    """Parse the Python entry point that ``argv`` starts (after ``--`` for ``ray job submit``);
    None for ``python -c``."""
    if "submit" in argv and "--" in argv:
        argv = argv[argv.index("--") + 1:]
    while argv and re.fullmatch(r"\w+=\S*", argv[0]):  # leading VAR=value assignments
        argv = argv[1:]
    assert argv and re.fullmatch(r"(\S*/)?python3?", argv[0]), f"{what}: no python command in {shlex.join(argv)}"
    if argv[1] == "-c":
        return None
    if argv[1] == "-m":
        entry, rest = f"-m {argv[2]}", argv[3:]
        module = argv[2]
        assert importlib.util.find_spec(module) is not None, f"{what}: module {module} does not exist"
    else:
        script = _repo_path(argv[1])
        assert script.is_file(), f"{what}: entry point {argv[1]} does not exist in the repository"
        entry, rest = str(script.relative_to(REPO)), argv[2:]
    assert entry in ENTRY_POINTS, f"{what}: no parser known for entry point {entry}; add it to ENTRY_POINTS"
    return ENTRY_POINTS[entry](rest, what)


def _expand_k8s(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command/args (unknown names stay as written)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


# ----------------------------------------------------------------------------- pod resources


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _gpu_of(container: dict) -> float:
    res = container.get("resources", {})
    limit = float(res.get("limits", {}).get("nvidia.com/gpu", 0))
    request = res.get("requests", {}).get("nvidia.com/gpu")
    # Kubernetes: GPUs go in limits; a request, if given, must equal the limit.
    assert request is None or float(request) == limit, f"{container['name']}: GPU request {request} != limit {limit}"
    return limit


def _cpu_of(container: dict) -> float:
    raw = str(container.get("resources", {}).get("limits", {}).get("cpu", "0"))
    return float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)


def _worker_groups(ray_cluster_spec: dict, what: str) -> list[tuple[int, float, float]]:
    """Per GPU worker group: (replicas, GPUs per pod, CPUs per pod); checks the groups are static."""
    out = []
    for g in ray_cluster_spec.get("workerGroupSpecs", []):
        reps = g.get("replicas", 1)
        assert g.get("minReplicas", reps) == reps == g.get("maxReplicas", reps), (
            f"{what}: worker group {g['groupName']} must be static (replicas = minReplicas = maxReplicas): "
            "jobs/sequence.py checks workers against the nodes alive when it starts"
        )
        pods = _containers(g["template"])
        out.append((reps, sum(_gpu_of(c) for c in pods), sum(_cpu_of(c) for c in pods)))
    head = _containers(ray_cluster_spec["headGroupSpec"]["template"])
    assert sum(_gpu_of(c) for c in head) == 0, f"{what}: the head is a CPU pod"
    return out


def _check_capacity(launch: Launch, groups: list[tuple[int, float, float]], what: str) -> None:
    total = sum(r * g for r, g, _ in groups)
    assert launch.gpus == total, (
        f"{what}: the job asks for {launch.gpus:g} GPUs (--workers x --gpus-per-worker), "
        f"the cluster's worker groups have {total:g}"
    )
    for _, gpus, cpus in groups:
        if gpus and launch.gpus_per_worker:
            workers_per_pod = gpus / launch.gpus_per_worker
            assert cpus >= workers_per_pod * launch.cpus_per_worker, (
                f"{what}: a pod with {gpus:g} GPUs and {cpus:g} CPUs cannot hold {workers_per_pod:g} workers "
                f"of {launch.cpus_per_worker:g} CPUs"
            )


# ==================================================================================== tests


def _all_yaml() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("path", _all_yaml(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_under_infra_parses(path):
    docs = _yaml_docs(path)
    assert docs, f"{path}: no YAML documents"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_kustomization_lists_every_manifest():
    kust = _yaml_docs(K8S / "kustomization.yaml")[0]
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"kustomization.yaml: missing {sorted(present - listed)}, listing absent {sorted(listed - present)}"
    for name in listed:
        for doc in _yaml_docs(K8S / name):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{name}: not a Kubernetes object"
            if doc["kind"] in ("RayCluster", "RayJob"):
                assert doc["apiVersion"] == "ray.io/v1", f"{name}: KubeRay objects use ray.io/v1"


def test_ray_version_is_pinned_once_and_matches_everywhere():
    from packaging.specifiers import SpecifierSet

    pinned = _pinned_ray()
    installed = importlib.metadata.version("ray")
    assert pinned == installed, f"infra/docker/Dockerfile pins Ray {pinned}, the venv has Ray {installed}"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_req = next(d for d in deps if re.match(r"ray\b", d))
    spec = SpecifierSet(re.sub(r"^ray(\[[^\]]*\])?", "", ray_req))
    assert pinned in spec, f"Ray {pinned} is outside pyproject.toml's range {ray_req!r}"

    # The base image: Ray's official image of that version, a CUDA flavour, a Python the project supports.
    args = _dockerfile_args()
    base = next(_resolve(line.split()[1], args) for line in DOCKERFILE.read_text().splitlines() if line.startswith("FROM "))
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-cu(\d+)", base)
    assert m, f"Dockerfile FROM {base}: want rayproject/ray:<ray>-py3XX-cuXXX"
    assert m.group(1) == pinned
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"3.{m.group(2)}" in SpecifierSet(requires), f"image Python 3.{m.group(2)} outside requires-python {requires}"
    # torch: the version the project is tested with, from the wheel index of the image's CUDA flavour.
    assert args["TORCH_VERSION"] == importlib.metadata.version("torch").split("+")[0]
    assert _resolve(args["TORCH_INDEX_URL"], args).endswith(f"/cu{m.group(3)}")

    # Every image tag ends in -ray<version>; every rayVersion field is that version.
    tag_re = re.compile(rf".*:\S+-ray{re.escape(pinned)}$")
    images = []
    for kind, objs in _k8s_objects().items():
        for obj in objs:
            spec_ = obj.get("spec", {})
            if kind == "RayCluster":
                assert spec_["rayVersion"] == pinned, f"RayCluster {obj['metadata']['name']}: rayVersion"
            if kind == "RayJob":
                assert spec_["rayClusterSpec"]["rayVersion"] == pinned, f"RayJob {obj['metadata']['name']}: rayVersion"
            images += re.findall(r"'image': '([^']+)'", repr(obj))
    assert images, "no container images in infra/k8s"
    assert len(set(images)) == 1, f"infra/k8s uses several images: {sorted(set(images))}"
    kust = _yaml_docs(K8S / "kustomization.yaml")[0]
    for entry in kust.get("images", []):
        assert entry["name"] == images[0].split(":")[0]
        images.append(f"{entry.get('newName', entry['name'])}:{entry['newTag']}")
    images.append(_yaml_docs(CLUSTER_YAML)[0]["docker"]["image"])
    for image in images:
        assert tag_re.match(image), f"image {image}: its tag must end in -ray{pinned}"
    assert f"ray.__version__ == '{pinned}'" in CLUSTER_YAML.read_text(), "cluster.yaml's setup check names another Ray"


def test_rayjobs_parse_and_request_exactly_their_gpus():
    cm = _configmap()
    jobs = _k8s_objects().get("RayJob", [])
    assert {j["metadata"]["name"] for j in jobs} >= {"cl-sequence-anole", "cl-sweep-anole"}
    entries = set()
    for job in jobs:
        name = job["metadata"]["name"]
        spec = job["spec"]
        assert spec.get("suspend") is True, f"RayJob {name}: created suspended (apply -k must not start GPU jobs)"
        launch = launch_of(shlex.split(spec["entrypoint"]), f"RayJob {name}")
        entries.add(launch.entry)
        assert launch.args.store == cm["CL_STORE"], f"RayJob {name}: --store differs from the ConfigMap's CL_STORE"
        _check_capacity(launch, _worker_groups(spec["rayClusterSpec"], f"RayJob {name}"), f"RayJob {name}")
        if launch.entry == "jobs/sequence.py":
            assert launch.args.spec == "anole" and launch.args.method == "mode"
            assert launch.args.model.startswith(cm["CL_STORE"] + "/"), f"RayJob {name}: the model comes from the bucket"
            assert launch.args.resume, f"RayJob {name}: --resume, so a retry continues the run"
    assert entries == {"jobs/sequence.py", "sweeps/sweep.py"}


def test_scheduler_deployment_targets_the_ray_cluster_with_its_gpus():
    cm = _configmap()
    dep = _one("Deployment", "cl-scheduler")
    (container,) = _containers(dep["spec"]["template"])
    argv = [_expand_k8s(a, cm) for a in container["command"] + container["args"]]
    unresolved = [a for a in argv if re.search(r"\$\(\w+\)", a)]
    assert not unresolved, f"scheduler args name variables the ConfigMap lacks: {unresolved}"
    launch = launch_of(argv, "Deployment cl-scheduler")
    assert launch.entry == "jobs/scheduler.py" and launch.args.command == "run"
    cluster = _one("RayCluster")
    head_svc = f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert launch.args.ray_address == head_svc, f"--ray-address {launch.args.ray_address}: KubeRay's head service is {head_svc}"
    assert launch.args.store == cm["CL_STORE"]
    _check_capacity(launch, _worker_groups(cluster["spec"], "RayCluster"), "scheduler rounds on the RayCluster")


def test_every_ray_and_scheduler_container_gets_settings_and_credentials():
    secret = _one("Secret", "cl-s3-credentials")
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(secret["stringData"].values()) == {"REPLACE_ME"}, "secret.yaml holds placeholders only"
    found = 0
    for obj in _k8s_objects().get("RayCluster", []) + _k8s_objects().get("RayJob", []) + _k8s_objects()["Deployment"]:
        spec = obj["spec"].get("rayClusterSpec", obj["spec"])
        templates = ([spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
                     if "headGroupSpec" in spec else [spec["template"]])
        for t in templates:
            for c in _containers(t):
                found += 1
                refs = {(k, v["name"]) for e in c.get("envFrom", []) for k, v in e.items()}
                assert refs == {("configMapRef", "cl-settings"), ("secretRef", "cl-s3-credentials")}, (
                    f"{obj['kind']} {obj['metadata']['name']} container {c['name']}: envFrom {refs}"
                )
    assert found == 7, f"expected 7 containers (3 Ray clusters x head + GPU group, the scheduler), found {found}"
    assert len(_ray_pod_templates()) == 6, "every Ray pod (heads and GPU groups) gets the Secret by envFrom"


def _ray_pod_templates() -> list[tuple[str, dict, dict]]:
    """(what, the RayCluster spec it belongs to, pod template) of every Ray pod in infra/k8s."""
    out = []
    for obj in _k8s_objects().get("RayCluster", []) + _k8s_objects().get("RayJob", []):
        spec = obj["spec"].get("rayClusterSpec", obj["spec"])
        what = f"{obj['kind']} {obj['metadata']['name']}"
        out.append((f"{what} head", spec, spec["headGroupSpec"]["template"]))
        out += [(f"{what} group {g['groupName']}", spec, g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


def _env_of(container: dict) -> dict[str, dict]:
    """A container's ``env`` entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


def _token_env(container: dict) -> Optional[str]:
    """The Secret a container's RAY_AUTH_TOKEN comes from, if it sets RAY_AUTH_MODE=token (else None)."""
    env = _env_of(container)
    if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
        return None
    ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    return ref.get("name")


def test_ray_token_auth_on_every_ray_pod_and_the_scheduler():
    """Every Ray pod runs with RAY_AUTH_MODE=token: the token from a Secret in its env, or KubeRay's
    authOptions (RayJobs: the operator must hold the token to follow the job); the scheduler holds
    the token of the cluster it submits to."""
    secrets = {o["metadata"]["name"]: o for o in _k8s_objects()["Secret"]}
    cluster_tokens = set()
    for what, spec, template in _ray_pod_templates():
        by_operator = spec.get("authOptions", {}).get("mode") == "token"
        for c in _containers(template):
            token_secret = _token_env(c)
            assert by_operator or token_secret, f"{what} container {c['name']}: no RAY_AUTH_MODE=token"
            if token_secret:
                assert token_secret in secrets, f"{what}: RAY_AUTH_TOKEN from Secret {token_secret}, not in infra/k8s"
                assert "auth_token" in secrets[token_secret]["stringData"]
                cluster_tokens.add(token_secret)
            assert not (by_operator and "RAY_AUTH_TOKEN" in _env_of(c)), f"{what}: authOptions and a token of its own"
    for rayjob in _k8s_objects()["RayJob"]:
        assert rayjob["spec"]["rayClusterSpec"].get("authOptions") == {"mode": "token"}, rayjob["metadata"]["name"]
    (scheduler,) = _containers(_one("Deployment", "cl-scheduler")["spec"]["template"])
    assert _token_env(scheduler) in cluster_tokens, "the scheduler must hold raycluster.yaml's token"
    assert set(secrets["cl-ray-auth"]["stringData"].values()) == {"REPLACE_ME"}, "a placeholder only"


def test_dashboards_listen_on_the_pod_ip_not_everywhere():
    """No 0.0.0.0: each head binds the IP of its pod (from the downward API) and, as KubeRay's
    default probes ask localhost:8265, brings probes that ask that IP."""
    heads = [(w, t) for w, _, t in _ray_pod_templates() if w.endswith(" head")]
    assert len(heads) == 3
    for obj in _k8s_objects().get("RayCluster", []) + _k8s_objects().get("RayJob", []):
        spec = obj["spec"].get("rayClusterSpec", obj["spec"])
        host = spec["headGroupSpec"]["rayStartParams"].get("dashboard-host")
        m = re.fullmatch(r"\$\((\w+)\)", host or "")
        assert m, f"{obj['metadata']['name']}: dashboard-host {host!r}: want $(VAR), the pod's IP"
        (head,) = _containers(spec["headGroupSpec"]["template"])
        field = _env_of(head).get(m.group(1), {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        assert field == "status.podIP", f"{obj['metadata']['name']}: {m.group(1)} must be the pod's IP"
        for probe in ("readinessProbe", "livenessProbe"):
            command = " ".join(head.get(probe, {}).get("exec", {}).get("command", []))
            assert f"http://${m.group(1)}:8265/" in command, f"{obj['metadata']['name']}: {probe} must ask the pod's IP"
    for path in sorted(INFRA.rglob("*.yaml")):
        text = path.read_text()
        assert not re.search(r"dashboard[-_]host\W+0\.0\.0\.0", text), f"{path}: a dashboard on 0.0.0.0"


def _secret_literals(node: Any, where: str) -> list[str]:
    """Places under ``node`` that give a secret-looking variable (an upper-case name, or a container's
    ``env`` entry) a literal value, or hold an AWS key in a string; a Secret's data aside."""
    from cl_platform.train.resources import is_secret_env_name

    found = []
    if isinstance(node, dict):
        if node.get("kind") == "Secret":
            return []
        name = node.get("name")
        if isinstance(name, str) and "value" in node and is_secret_env_name(name):
            found.append(f"{where}: env {name} has a literal value (use valueFrom / envFrom a Secret)")
        for key, value in node.items():
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", str(key)) and is_secret_env_name(key) and isinstance(value, (str, int)):
                found.append(f"{where}: {key}: a literal")
            found += _secret_literals(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _secret_literals(value, f"{where}[{i}]")
    elif isinstance(node, str) and re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b|AWS_SECRET_ACCESS_KEY=\S", node):
        found.append(f"{where}: an AWS key in a string")
    return found


def test_no_aws_secret_in_any_manifest_but_the_secret_template():
    found = []
    for path in sorted(INFRA.rglob("*.yaml")):
        for i, doc in enumerate(_yaml_docs(path)):
            found += _secret_literals(doc, f"{path.relative_to(REPO)}#{i}")
        comments = "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
        assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", comments), f"{path}: an access key in a comment"
    assert not found, "\n".join(found)
    secret = _one("Secret", "cl-s3-credentials")
    assert set(secret["stringData"].values()) <= {"REPLACE_ME"}


def test_secret_literal_check_finds_them():
    docs = [{"kind": "Pod", "spec": {"containers": [{"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}]}},
            {"kind": "ConfigMap", "data": {"AWS_SESSION_TOKEN": "t"}},
            {"kind": "X", "args": ["--key", "AKIAABCDEFGHIJKLMNOP"]}]
    assert [len(_secret_literals(d, "t")) for d in docs] == [1, 1, 1]
    assert _secret_literals({"kind": "Secret", "stringData": {"AWS_SECRET_ACCESS_KEY": "x"}}, "t") == []
    assert _secret_literals({"env": [{"name": "RAY_AUTH_TOKEN", "valueFrom": {}}]}, "t") == []


def test_cluster_launcher_secures_ray():
    cfg = _yaml_docs(CLUSTER_YAML)[0]
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    rays = [c for c in starts if "ray start" in c]
    assert len(rays) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in rays), rays
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    assert cfg["file_mounts"].get("/home/ray/.ray/auth_token") == "~/.ray/auth_token", "the token on every node"
    assert all("RAY_AUTH_MODE=token" in c for c in _cluster_yaml_commands() if "ray job submit" in c)


def test_cluster_launcher_config_and_its_commands():
    cfg = _yaml_docs(CLUSTER_YAML)[0]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    assert head.get("resources", {}).get("GPU", 0) == 0, "the head is a CPU node"
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    for t in workers:
        assert t["min_workers"] == t["max_workers"], "GPU node types are static (sequence.py checks alive nodes)"
        assert "GPU" in t.get("resources", {}), "declare each worker type's GPUs (the test compares them with the jobs)"
    total_gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in workers)
    groups = [(t["max_workers"], float(t["resources"]["GPU"]), float(t["resources"].get("CPU", 0))) for t in workers]
    assert cfg["max_workers"] >= sum(t["max_workers"] for t in workers)
    assert any("pip install" in c and "/home/ray/cl_platform" in c for c in cfg["setup_commands"])
    assert _app_dir() in cfg["file_mounts"], "file_mounts syncs the checkout to the image's APP_DIR"

    commands = _cluster_yaml_commands()
    launches = [launch_of(shlex.split(c), f"cluster.yaml: {c[:60]}...") for c in commands]
    entries = {launch.entry for launch in launches if launch}
    assert {"jobs/sequence.py", "jobs/scheduler.py"} <= entries, f"cluster.yaml's comments must show both; found {entries}"
    for c, launch in zip(commands, launches):
        if launch and launch.gpus is not None:
            assert launch.gpus == total_gpus, f"cluster.yaml: {c[:80]}... asks for {launch.gpus:g} GPUs, the workers have {total_gpus:g}"
            _check_capacity(launch, groups, "cluster.yaml")
        if launch and launch.entry == "jobs/scheduler.py":
            assert launch.args.ray_address, "the scheduler submits rounds to the head (--ray-address)"


def test_docs_commands_parse():
    commands = _docs_commands()
    if not DOCS.exists():
        pytest.skip("docs/cluster.md not written")
    launches = [launch_of(shlex.split(c), f"docs/cluster.md: {c[:60]}...") for c in commands]
    entries = {launch.entry for launch in launches if launch}
    assert {"jobs/sequence.py", "jobs/scheduler.py", "-m cl_platform.suites.mode_official"} <= entries, entries


def test_command_extraction_joins_continuations():
    text = ["  RAY_ADDRESS=http://h:8265 ray job submit --working-dir . -- \\", "    python jobs/sequence.py \\",
            "    --workers 2", "ray up x.yaml", "python -c 'print(1)'"]
    cmds = _commands_in_lines(text)
    assert cmds[0].endswith("python jobs/sequence.py --workers 2") and len(cmds) == 2
    assert launch_of(shlex.split(cmds[0]), "t").args.num_workers == 2
    assert launch_of(shlex.split(cmds[1]), "t") is None
    with pytest.raises(pytest.fail.Exception, match="refused"):
        launch_of(["python", "jobs/sequence.py", "--no-such-flag"], "t")
    with pytest.raises(AssertionError, match="does not exist"):
        launch_of(["python", "jobs/nope.py"], "t")
