"""The every-K sweep: a real two-trial sweep (one searched setting, quick) over the lineage's
latest task, run by the scheduler's runner between two rounds of the stand-in job; the chosen
value is recorded with its sweep and the next round is started with it."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
from tests.support.sched_helpers import copy_digits_task, state_json

from cl_platform.scheduler.config import LineageConfigError, LineageSettings, tuned_job_args
from cl_platform.scheduler.status import build_status, format_status
from cl_platform.store import Store
from cl_platform.train.ledger import Ledger


def test_chosen_settings_are_data_checked_as_job_args():
    space = {"lr": {"type": "choice", "values": [0.001, 0.005]}}
    assert tuned_job_args({"lr": 0.001}, space) == ["--lr", "0.001"]
    with pytest.raises(LineageConfigError, match="exactly the searched"):
        tuned_job_args({"lr": 0.001, "steps_per_task": 5}, space)
    with pytest.raises(LineageConfigError, match="--lr"):
        tuned_job_args({"lr": "0.001; rm -rf /"}, space)
    with pytest.raises(LineageConfigError, match="tune_space"):
        LineageSettings(tune_every=1, tune_space={"steps_per_task": {"type": "choice", "values": [1, 2]}})
    with pytest.raises(LineageConfigError, match="tune_objective"):
        LineageSettings(tune_every=1, tune_objective="loss")


@pytest.mark.slow
def test_every_k_sweep_chooses_a_setting_that_the_next_round_trains_with(digits_base, tmp_path, ray_tmp, monkeypatch):
    from tests.support.sched_helpers import Harness

    monkeypatch.setenv("TMPDIR", ray_tmp)  # the sweep job's embedded Ray is this test's alone
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    root = tmp_path / "store"
    import shutil

    shutil.copytree(digits_base, root)
    store, src = Store(str(root)), Store(os.path.join(str(root), "source"))
    copy_digits_task(store, "parity", "parity", src_store=src, rows=32)
    harness = Harness(store, tmp_path)
    settings = replace(harness.settings, steps=2, tune_every=1, tune_trials=2,
                       tune_space={"lr": {"type": "choice", "values": [0.001, 0.005]}})
    sched = harness.scheduler(settings=settings)
    assert sched.run() == 0
    st = state_json(store)
    [tune] = st["tunes"]
    assert tune["status"] == "done", tune.get("error")
    assert tune["sweep"] == "lin-tune-1" and tune["tasks"] == ["parity"] and tune["params"]["lr"] in (0.001, 0.005)
    best = store.read_json("sweeps/lin-tune-1/best.json")["best"][0]
    assert tune["params"] == best["params"] and tune["value"] == best["final"]["avg_accuracy"]
    assert len(store.read_json("sweeps/lin-tune-1/trials.json")["trials"]) == 2
    assert [e["event"] for e in sched.events.recent if e["event"] in ("finished", "tune_started", "tuned")] == \
        ["finished", "tune_started", "tuned"]
    assert f"lr {tune['params']['lr']} from sweep lin-tune-1" in format_status(build_status(store, "lin"))
    # the next task's round is started with the chosen value (its ledger records it)
    time.sleep(0.05)
    copy_digits_task(store, "name", "name", src_store=src, rows=32)
    again = harness.scheduler(settings=replace(settings, tune_every=0))
    assert again.run() == 0
    assert Ledger.open(store, "lin-2-name").config["lr"] == str(tune["params"]["lr"])


def test_a_bad_sweep_in_the_settings_exits_2_before_anything_runs(tmp_path, capsys):
    from cl_platform.cli.scheduler import main

    base = ["run", "--store", str(tmp_path / "store"), "--lineage", "lin", "--once", "--tune-every", "1"]
    assert main([*base, "--tune-space", '{"lr": {"type": "uniform", "low": 0.1}}']) == 2
    assert "space.lr" in capsys.readouterr().err
    assert main([*base, "--tune-space", "{lr"]) == 2
    assert "--tune-space" in capsys.readouterr().err and not os.path.exists(tmp_path / "store" / "lineages")
