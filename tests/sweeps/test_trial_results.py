"""Per-round aggregation over orders, trial configs, and the result files from hand-made trial rows."""

import csv
import io
import json
import math

import pytest

from cl_platform.store import Store
from cl_platform.sweeps import results as R
from cl_platform.sweeps.space import parse_sweep
from cl_platform.sweeps.trial import TrialPlan, aggregate_histories, aggregate_round, run_names, sequence_config

SPEC = parse_sweep({
    "name": "unit", "tasks": ["parity", "name"],
    "orders": {"fixed": [["parity", "name"], ["name", "parity"]], "per_trial": "all"},
    "space": {"kd_weight": {"type": "loguniform", "low": 0.03, "high": 3.0},
              "r_text": {"type": "choice", "values": [4, 8]}},
    "search": {"num_samples": 4, "objectives": {"avg_accuracy": "max", "generation_drop": "min"}},
})


def h(r, acc, drop, task="t"):
    return {"round": r, "task": task, "avg_accuracy": acc, "generation_score": 1 - drop, "generation_drop": drop}


def test_aggregate_over_orders():
    rows = aggregate_histories([[h(0, 0.5, 0.1), h(1, 0.4, 0.2)], [h(0, 0.7, 0.3)]])
    assert len(rows) == 1  # only rounds every order has done
    r = rows[0]
    assert r["round"] == 0 and r["rounds_done"] == 1 and r["orders"] == 2
    assert math.isclose(r["avg_accuracy"], 0.6) and math.isclose(r["avg_accuracy_std"], 0.1)
    assert math.isclose(r["generation_drop"], 0.2) and r["avg_accuracy_o1"] == 0.7
    single = aggregate_round([h(1, 0.4, float("nan"))])
    assert single["avg_accuracy_std"] == 0.0 and math.isnan(single["generation_drop"]) and "avg_accuracy_o0" not in single
    with pytest.raises(ValueError, match="different rounds"):
        aggregate_round([h(0, 0.1, 0.1), h(1, 0.1, 0.1)])


def test_run_names_and_sequence_config():
    assert run_names("s", "ab12_00001", 1) == ["s-ab12_00001"]
    assert run_names("s", "ab12", 2) == ["s-ab12-o0", "s-ab12-o1"]
    plan = TrialPlan(sweep="s", store="file:///x", method="mode", orders=[["a", "b"], ["b", "a"]], per_trial="search",
                     sequence={"model_uri": "m", "spec": {}, "steps_per_task": 3, "lr": 1e-3},
                     method_config={"kd_weight": 0.3, "r_text": 8})
    assert plan.trial_orders({"order": 1}) == [["b", "a"]]
    cfg = sequence_config(plan, {"kd_weight": 0.1, "r_text": 4, "lr": 2e-3, "order": 1}, ["b", "a"], "s-x")
    assert cfg.method_config == {"kd_weight": 0.1, "r_text": 4}
    assert cfg.lr == 2e-3 and cfg.steps_per_task == 3 and cfg.tasks == ["b", "a"] and cfg.run == "s-x"
    with pytest.raises(ValueError, match="'colour' is not a searchable"):
        sequence_config(plan, {"colour": 1}, ["a", "b"], "s-x")


def row(n, state, acc, drop, default=False, rounds=2):
    final = {"avg_accuracy": acc, "generation_drop": drop, "avg_accuracy_std": 0.02, "generation_drop_std": 0.01} \
        if state == "completed" else None
    last = final or {"avg_accuracy": acc, "generation_drop": drop}
    return {"trial_id": f"t{n}", "number": n, "status": "TERMINATED", "state": state, "is_default": default,
            "params": {"kd_weight": 0.1 * n, "r_text": 4}, "orders": [["parity", "name"], ["name", "parity"]],
            "runs": [f"unit-t{n}-o0", f"unit-t{n}-o1"], "rounds_done": rounds,
            "per_round": [dict(last, round=r) for r in range(rounds)], "final": final, "last": last}


ROWS = [row(1, "completed", 0.6, 0.10, default=True), row(2, "completed", 0.7, 0.20), row(3, "completed", 0.5, 0.30),
        row(4, "stopped", 0.9, 0.0, rounds=1), row(5, "completed", 0.55, 0.05)]


def test_best_rows_single_and_pareto():
    assert [r["number"] for r in R.best_rows(ROWS, [("avg_accuracy", "max")])] == [2]
    assert [r["number"] for r in R.best_rows(ROWS, [("generation_drop", "min")])] == [5]
    # the early-stopped trial 4 is never best: its metrics are from round 1 of 2
    assert [r["number"] for r in R.best_rows(ROWS, R.PARETO_OBJECTIVES)] == [2, 1, 5]
    assert R.best_rows([row(1, "stopped", 0.9, 0.0)], R.PARETO_OBJECTIVES) == []


def test_result_files(tmp_path):
    store = Store(str(tmp_path))
    paths = R.write_sweep_results(store, "sweeps/unit", SPEC, ROWS, seconds=12.0, teacher_cache="cache/teacher/x")
    best = store.read_json(paths["best"])
    assert best["kind"] == "pareto_set" and [b["number"] for b in best["best"]] == [2, 1, 5]
    pareto = store.read_json(paths["pareto"])
    assert pareto["default"]["number"] == 1 and pareto["default_on_front"] is True
    assert len(pareto["points"]) == 5
    table = list(csv.DictReader(io.StringIO(store.read_bytes(paths["table_csv"]).decode())))
    assert [t["state"] for t in table] == ["completed"] * 3 + ["stopped", "completed"]
    assert table[0]["avg_accuracy@r2"] == "0.6" and "final_bwt" in table[0]
    assert len(json.loads(store.read_bytes(paths["table_json"]))["trials"]) == 5
    assert store.read_bytes(paths["plot"])[:8] == b"\x89PNG\r\n\x1a\n"
    md = store.read_bytes(paths["summary"]).decode()
    assert "Pareto set" in md and "MoDE default configuration" in md and "on the accuracy" in md
    assert "![Pareto front](pareto.png)" in md
    text = R.format_summary(SPEC, ROWS, "file:///x")
    assert "Pareto set: #2" in text and "stopped" in text
