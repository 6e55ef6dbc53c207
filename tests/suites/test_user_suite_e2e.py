"""A user's world end to end: MoDE-official data in the reference layout, imported into a store,
and an Anole-vocabulary Chameleon checkpoint saved with ``save_pretrained`` (no ``modality_spec``),
through every verb: a sequence with mode, moe_lora and olora, a 2-trial sweep and one scheduler round.

Each produces results with accuracy matrices and per-round generation scores from the default
probe (image-token likelihood on the held-out ``laion_data-probe`` stream), and no module of the
digits suite is imported in the process that ran it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import shutil
import sys
import tempfile

import pytest
import yaml

from cl_platform.store import Store
from tests.support.user_store import build_user_store

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Runs an entry point's ``main`` and prints which digits modules the process imported.
_RUN = """
import sys
from cl_platform.cli.{module} import main
rc = main(sys.argv[1:])
print("DIGITS_MODULES=" + ",".join(sorted(m for m in sys.modules if m.startswith("cl_platform.suites.digits"))))
sys.exit(rc)
"""


def _run(module: str, *args: str, tmp, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "TMPDIR": str(tmp)}
    env.pop("RAY_ADDRESS", None)
    env.pop("CL_STORE", None)
    proc = subprocess.run([sys.executable, "-c", _RUN.format(module=module), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    assert "DIGITS_MODULES=\n" in proc.stdout, [line for line in proc.stdout.splitlines() if "DIGITS_MODULES" in line]
    return proc


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    info = build_user_store(root)
    # short: Ray's socket paths live under it (107 bytes), and an xdist worker's base temp is longer
    info["tmp"] = tempfile.mkdtemp(prefix="clu-", dir="/tmp")
    try:
        yield info
    finally:
        shutil.rmtree(info["tmp"], ignore_errors=True)


def _check_method(entry: dict, num_tasks: int) -> None:
    matrix = entry["accuracy_matrix"]
    assert len(matrix) == num_tasks and all(len(row) == num_tasks for row in matrix)
    scores = entry["generation_scores"]
    assert len(scores) == num_tasks + 1 and all(0.0 <= g <= 1.0 and math.isfinite(g) for g in scores)


def _probe_score(store: Store, model_uri: str, probe_stream: str) -> float:
    """The default probe's score of a model, computed here, in this process."""
    from cl_platform.eval.likelihood import image_likelihood_probe
    from cl_platform.models.chameleon import load_model, modality_spec_of

    model = load_model(model_uri)
    probe = image_likelihood_probe(store=store, spec=modality_spec_of(model), seed=0, stream=probe_stream)
    return probe.score(*probe.partial(model, 0, 1))


def test_sequence_with_mode_moe_lora_and_olora(user):
    store = Store(user["store"])
    proc = _run("sequence", "--store", user["store"], "--tasks", ",".join(user["tasks"]), "--model", user["model"],
                "--kd-stream", user["kd_stream"], "--methods", "mode,moe_lora,olora", "--steps", "3",
                "--batch-size", "8", "--kd-batch-size", "4", "--run", "user-seq", "--threads-per-worker", "1",
                tmp=user["tmp"])
    assert "suite tasks:" in proc.stdout and "image-token likelihood of stream 'laion_data-probe'" in proc.stdout
    results = store.read_json("runs/user-seq/results.json")
    assert results["task_order"] == user["tasks"]
    assert set(results["methods"]) == {"mode", "moe_lora", "olora"}
    for entry in results["methods"].values():
        _check_method(entry, len(user["tasks"]))
    # round 0 is the base model's score: the same number as the probe computed here on the stored base
    base = _probe_score(store, store.uri(user["model"]), user["probe_stream"])
    for entry in results["methods"].values():
        assert entry["generation_scores"][0] == pytest.approx(base, abs=1e-6)
    assert store.exists("runs/user-seq/report/report.md")
    # olora: no orthogonality term while learning the first task, a positive one on every later task
    from cl_platform.train.ledger import Ledger

    ledger = Ledger.open(store, "user-seq")
    orth = [ledger.record("olora", r).metrics["orth_loss"] for r in range(len(user["tasks"]))]
    assert len(orth) == len(user["tasks"]) and orth[0] == 0.0 and all(x > 0 for x in orth[1:]), orth


def test_two_trial_sweep(user, tmp_path):
    doc = {
        "name": "user-sweep", "suite": "tasks", "model": user["model"], "kd_stream": user["kd_stream"],
        "method": "mode", "tasks": user["tasks"][:1],
        "space": {"kd_weight": {"type": "loguniform", "low": 0.03, "high": 3.0}},
        "fixed": {"steps_per_task": 2, "batch_size": 8, "kd_batch_size": 4, "log_every": 2},
        "search": {"num_samples": 2, "n_startup_trials": 2, "objectives": {"avg_accuracy": "max", "generation_drop": "min"},
                   "scheduler": {"type": "none"}},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.99},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    _run("sweep", "--config", str(path), "--store", user["store"], "--tune-dir", str(tmp_path / "tune"), tmp=user["tmp"])
    store = Store(user["store"])
    trials = store.read_json("sweeps/user-sweep/trials.json")["trials"]
    assert len(trials) == 2
    for t in trials:
        assert t["state"] == "completed", t
        final = t["final"]
        assert 0.0 <= final["avg_accuracy"] <= 1.0 and math.isfinite(final["generation_drop"])
        assert 0.0 <= final["generation_score"] <= 1.0
    plan = store.read_json("sweeps/user-sweep/sweep.json")["plan"]
    assert plan["sequence"]["probe"]["params"]["stream"] == user["probe_stream"]


def test_one_scheduler_round(user, tmp_path):
    store = Store(user["store"])
    task = user["tasks"][0]
    _run("scheduler", "run", "--once", "--store", user["store"], "--lineage", "user", "--model", user["model"],
         "--kd-stream", user["kd_stream"], "--steps", "2", "--include", task, "--log-dir", str(tmp_path / "logs"),
         tmp=user["tmp"])
    learned = json.loads(store.read_bytes("lineages/user/state.json"))["learned"]
    assert [x["task"] for x in learned] == [task]
    run = learned[0]["run"]
    results = store.read_json(f"runs/{run}/results.json")
    _check_method(results["methods"]["mode"], 1)
