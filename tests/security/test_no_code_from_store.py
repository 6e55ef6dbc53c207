"""Nothing executable or pickled is ever read from the store: the attacks of the hardening issue, from outside.

The store is a shared bucket that data owners write tasks into, so whoever may write to it must not
be able to run code. Each test drops into a store, as such a writer could, a pickle whose
``__reduce__`` creates a marker file when it is unpickled, then drives the code that used to load
it (the digits judge, a Ray Train checkpoint's ``state.pt``, Tune's ``tuner.pkl``). The marker must
stay absent and the refusal must name the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
import yaml

from cl_platform.eval.probe import build_probe
from cl_platform.store import Store
from cl_platform.suites.digits.probe import digits_judge_spec
from cl_platform.suites.digits.publish import JUDGE_FILE, JUDGE_JSON, LEGACY_JUDGE_PKL, load_judge, write_suite
from cl_platform.suites.digits.vocab import DIGITS_SPEC
from cl_platform.train.checkpoint import STATE_FILE, UnsafeCheckpointError, load_training_state, save_training_state
from tests.security.payload import Payload, torch_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_payload_runs_when_unpickled(tmp_path):
    """The planted files below are live: a plain unpickle (what the platform used to do) runs them."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(torch_file({"method": "mode", "x": Payload(marker)})), weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------ 1. the digits judge


@pytest.fixture(scope="module")
def suite0():
    from cl_platform.suites.digits.tasks import build_suite

    return build_suite(0)


def plant_pickled_judge(store: Store, marker) -> bytes:
    """An old-layout judge: judge.pkl and a judge.json whose sha256 matches it (the attacker writes both)."""
    evil = pickle.dumps(Payload(marker))
    store.write_bytes(LEGACY_JUDGE_PKL, evil)
    store.write_json(JUDGE_JSON, {"class": "DigitsJudge", "seed": 0, "sha256": hashlib.sha256(evil).hexdigest(),
                                  "report": {"accuracy": 1.0}})
    return evil


def test_a_pickled_judge_is_refused_by_the_probe_and_load_judge(store_url, tmp_path):
    """The digits probe in a worker, for a run configured with the old judge path or with a pickle
    under the new one, and ``load_judge``: each refuses, naming the file."""
    store = Store(store_url)
    marker = tmp_path / "judge-ran"
    evil = plant_pickled_judge(store, marker)
    with pytest.raises(ValueError, match=rf"{LEGACY_JUDGE_PKL}: .*pickled judge.*never loaded"):
        build_probe(digits_judge_spec(LEGACY_JUDGE_PKL, 1).to_dict(), store, DIGITS_SPEC, 0)
    with pytest.raises(FileNotFoundError, match=rf"no digits judge at .*{JUDGE_FILE}.*never loaded"):
        load_judge(store)
    store.write_bytes(JUDGE_FILE, evil)
    with pytest.raises(ValueError, match=rf"{JUDGE_FILE}: .*pickled judge.*never loaded"):
        build_probe(digits_judge_spec(JUDGE_FILE, 1).to_dict(), store, DIGITS_SPEC, 0)
    with pytest.raises(ValueError, match=rf"{JUDGE_FILE}: .*pickled judge"):
        load_judge(store)
    assert not marker.exists()


def test_write_suite_never_opens_a_planted_judge_pkl(store_url, tmp_path, suite0):
    """``write_suite`` used to unpickle judge.pkl when judge.json's sha256 matched it."""
    store = Store(store_url)
    marker = tmp_path / "judge-ran"
    plant_pickled_judge(store, marker)
    lines: list[str] = []
    write_suite(store, 0, suite=suite0, log=lines.append)
    assert not marker.exists()
    assert f"ignore {LEGACY_JUDGE_PKL} (a pickled judge of an older version: never loaded)" in lines
    probe = build_probe(digits_judge_spec(JUDGE_FILE, 1).to_dict(), store, DIGITS_SPEC, 0)
    assert type(probe.judge).__name__ == "DigitsJudge"
    assert not marker.exists()


# ------------------------------------------------------------------------------ 2. Ray Train checkpoints


def test_what_a_checkpoint_holds_loads_as_data(tmp_path):
    """The TrainState dict with real AdamW and LambdaLR state dicts round-trips under weights_only;
    a value that would not (here a numpy array) is refused when saved, naming where it is."""
    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM

    from cl_platform.methods import MethodConfig, get_method
    from cl_platform.models.modality import ModalitySpec
    from cl_platform.train.recipe import lr_lambda
    from cl_platform.train.state import TrainState

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    spec = ModalitySpec(spec_id="t", vocab_size=64, image_code_range=(30, 60), boi_id=60, eoi_id=61, pad_id=0, sep_id=3)
    model = get_method("mode", MethodConfig()).build(base, spec)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(10, 2))
    for _ in range(2):
        model(input_ids=torch.randint(0, 62, (2, 7))).logits.sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    state = TrainState(method="mode", round=1, step=2, accuracy=[[0.5, 0.25]], generation=[0.9, None],
                       base_accuracy=[0.1, 0.2], method_state={"seen": ["parity"], "n": 1},
                       optimizer={"opt": opt.state_dict(), "sched": sched.state_dict()})
    save_training_state(str(tmp_path / "ck"), model, state.to_dict())
    back = TrainState.from_dict(load_training_state(str(tmp_path / "ck")), "x")
    assert (back.method, back.position, back.accuracy, back.generation, back.base_accuracy, back.method_state) == (
        "mode", (1, 2), [[0.5, 0.25]], [0.9, None], [0.1, 0.2], {"seen": ["parity"], "n": 1})
    opt2 = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
    opt2.load_state_dict(back.optimizer["opt"])
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lr_lambda(10, 2))
    sched2.load_state_dict(back.optimizer["sched"])
    assert sched2.last_epoch == 2 and sched2.get_last_lr() == sched.get_last_lr()
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    with pytest.raises(TypeError, match=r"state\['method_state'\]\['buffer'\]: a numpy.ndarray"):
        save_training_state(str(tmp_path / "bad"), model, {**state.to_dict(), "method_state": {"buffer": np.zeros(2)}})


@pytest.mark.parametrize("form", ["torch", "pickle"])
def test_a_planted_state_pt_is_refused(tmp_path, form):
    """A checkpoint dropped under a future run's ``ray/`` directory: its state.pt is refused, unrun."""
    store = Store(f"file://{tmp_path}/store")
    marker = tmp_path / "state-ran"
    ckpt = "runs/lineage-r03/ray/mode/checkpoint_2030-01-01_00-00-00.000000"
    planted = {"method": "mode", "round": 0, "step": 1, "R": [], "G": [], "method_state": {"x": Payload(marker)}}
    store.write_bytes(f"{ckpt}/{STATE_FILE}", torch_file(planted) if form == "torch" else pickle.dumps(planted))
    directory = str(tmp_path / "store" / ckpt)
    with pytest.raises(UnsafeCheckpointError, match=rf"refused to load state.pt of checkpoint {directory}: .*Nothing in it was run"):
        load_training_state(directory)
    assert not marker.exists()


def planted_ray_checkpoint(store: Store, run: str, method: str, marker) -> str:
    """What a writer of the bucket needs to plant for a run that has not started yet: Ray Train's
    checkpoint snapshot (JSON) naming one checkpoint, and that checkpoint's state.pt."""
    import ray

    name = "checkpoint_2030-01-01_00-00-00.000000"
    result = {"version": 0, "checkpoint_dir_name": name, "metrics": {"method": method, "round": 0, "step": 1}}
    store.write_json(f"runs/{run}/ray/{method}/checkpoint_manager_snapshot.json", {
        "ray_version": ray.__version__, "checkpoint_results": [result], "checkpoint_report_indices": [0],
        "latest_checkpoint_result": result, "pending_training_results": [], "pending_validation_specs": [],
        "current_report_index": 1, "validated_checkpoint_dir_names": [],
        "timed_out_validation_checkpoint_dir_names": [], "failed_validation_checkpoint_dir_names": []})
    store.write_bytes(f"runs/{run}/ray/{method}/{name}/{STATE_FILE}", torch_file(
        {"method": method, "round": 0, "step": 1, "R": [], "G": [], "method_state": {"x": Payload(marker)}}))
    return f"runs/{run}/ray/{method}/{name}"


@pytest.mark.slow
def test_a_scheduled_round_with_a_planted_checkpoint_refuses_it(fresh_digits_store, tmp_path):
    """The attack end to end: a checkpoint planted for a predictable run name, then that run started
    with ``--resume`` as scheduled rounds are. Ray Train restores the planted checkpoint into the
    worker, which refuses its state.pt; the run fails naming it and the payload never runs."""
    store, run, method = Store(fresh_digits_store), "lineage-r01", "seq_lora"
    marker = tmp_path / "round-ran"
    ckpt = planted_ray_checkpoint(store, run, method, marker)
    job_tmp = tempfile.mkdtemp(prefix="sec-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", TMPDIR=job_tmp)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "jobs", "sequence.py"), "--store", fresh_digits_store, "--quick",
         "--suite", "digits", "--tasks", "parity", "--method", method, "--workers", "1", "--steps", "2",
         "--max-failures", "0", "--run", run, "--resume"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the job's own process group only, whatever it left behind
        except ProcessLookupError:
            pass
        shutil.rmtree(job_tmp, ignore_errors=True)
    assert proc.returncode != 0, out[-4000:]
    assert f"refused to load state.pt of checkpoint {store.uri(ckpt).removeprefix('file://')}" in out, out[-6000:]
    assert not marker.exists()


# ------------------------------------------------------------------------------ 3. Tune's state


def sweep_file(tmp_path, name: str) -> str:
    doc = {"name": name, "suite": "digits", "method": "seq_lora", "tasks": ["parity"],
           "space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
           "search": {"num_samples": 1, "objectives": {"avg_accuracy": "max"}},
           "resources": {"num_workers": 1, "cpus_per_worker": 0.99}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize("recorded", [False, True], ids=["old-layout", "with-sweep-json"])
def test_a_planted_tuner_pkl_is_never_restored(tmp_path, capsys, recorded):
    """``--resume`` of a sweep whose Tune state an attacker planted in the bucket (where older
    versions kept it, and restored it from): refused, nothing read. With a sweep.json claiming the
    state lives elsewhere too: the error names that place, still nothing read."""
    from cl_platform.cli.sweep import main

    url = f"file://{tmp_path}/store"
    store, marker = Store(url), tmp_path / "tune-ran"
    store.write_bytes("sweeps/victim/tune/tuner.pkl", pickle.dumps(Payload(marker)))
    store.write_bytes("sweeps/victim/tune/experiment_state-2030-01-01_00-00-00.json", b"{}")
    if recorded:
        store.write_json("sweeps/victim/sweep.json", {"spec": {}, "tune": {"host": "elsewhere", "dir": str(tmp_path)}})
    rc = main(["--config", sweep_file(tmp_path, "victim"), "--store", url, "--resume", "--tune-dir", str(tmp_path / "tune")])
    err = capsys.readouterr()
    assert rc == 2
    assert "sweep 'victim' cannot be resumed here: its Tune state is not in" in err.err
    assert ("on host 'elsewhere'" if recorded else "an older version, which is never read") in err.err
    assert "ignoring " + store.uri("sweeps/victim/tune") in err.out
    assert not marker.exists()
    assert not (tmp_path / "tune").exists()  # nothing started
