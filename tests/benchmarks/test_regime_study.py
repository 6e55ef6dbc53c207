"""``benchmarks/regime_study.py``: run names, the README's upper bound, the per-method regime metrics
against a hand-made accuracy matrix, and the read-back of a finished cell (regime.json, plot, JSON line)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from cl_platform.eval.report import build_results, write_results
from cl_platform.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("regime_study", os.path.join(ROOT, "benchmarks", "regime_study.py"))
regime = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regime)

#: R[i][j] after round i on task j: diagonal 0.9, 0.6, 0.8; final row 0.3, 0.2, 0.8
R = [[0.9, 0.0, 0.1], [0.5, 0.6, 0.0], [0.3, 0.2, 0.8]]
UPPER = {"a": 0.95, "b": 0.9, "c": 0.85}


def test_run_names_have_no_dots():
    assert [regime.run_name(lr, 100) for lr in (3e-4, 1e-3, 2.5e-3)] == [
        "regime-lr3e-4-steps100", "regime-lr1e-3-steps100", "regime-lr2p5e-3-steps100"]


def test_the_readme_upper_bound_row_is_read_per_task():
    upper = regime.readme_upper_bound(os.path.join(ROOT, "README.md"))
    assert set(upper) == {"parity", "plus_k", "compare", "name", "pair"}
    assert all(0.5 < v <= 1.0 for v in upper.values())


def test_regime_metrics_of_a_hand_made_matrix():
    entry = build_results("r", ["a", "b", "c"], {}, {"m": {"accuracy_matrix": R, "generation_scores": [0.9, 0.8, 0.8, 0.7],
                                                           "base_accuracy": [0, 0, 0]}})["methods"]["m"]
    m = regime.method_regime_metrics(entry, ["a", "b", "c"], UPPER)
    assert m["plasticity"] == pytest.approx((0.9 + 0.6 + 0.8) / 3)
    assert m["avg_accuracy"] == pytest.approx((0.3 + 0.2 + 0.8) / 3)
    assert m["earlier_final"] == pytest.approx(0.25)
    assert m["avg_forgetting"] == pytest.approx(((0.9 - 0.3) + (0.6 - 0.2)) / 2)
    assert m["generation_drop"] == pytest.approx(0.2)
    assert m["upper_bound_gap"] == pytest.approx({"a": 0.05, "b": 0.3, "c": 0.05})
    assert m["max_gap"] == pytest.approx(0.3) and m["mean_gap"] == pytest.approx(0.4 / 3)


def test_a_finished_cell_is_read_back_not_rerun(tmp_path, capsys):
    store = Store(str(tmp_path / "store"))
    run = regime.run_name(1e-3, 100)
    doc = build_results(run, ["a", "b", "c"], {}, {"mode": {"accuracy_matrix": R, "generation_scores": [0.9, 0.8, 0.8, 0.7],
                                                           "base_accuracy": [0, 0, 0]}})
    write_results(store, f"runs/{run}", doc)
    upper = tmp_path / "upper.json"
    upper.write_text("table\n" + json.dumps({"accuracy": UPPER}) + "\n")
    png = tmp_path / "regime.png"
    assert regime.main(["--store", store.url, "--lrs", "1e-3,3e-3", "--steps", "100", "--methods", "mode",
                        "--upper-bound", str(upper), "--no-run", "--images", str(png)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["skipped"] == [regime.run_name(3e-3, 100)]
    assert line["cells"][0]["methods"]["mode"]["max_gap"] == pytest.approx(0.3)
    saved = store.read_json("studies/regime/regime.json")
    assert saved["cells"][0]["run"] == run and saved["upper_bound"] == UPPER
    assert png.read_bytes()[:4] == b"\x89PNG" and store.read_bytes("studies/regime/regime.png") == png.read_bytes()
    assert regime.main(["--store", store.url, "--lrs", "0,1e-3"]) == 2
