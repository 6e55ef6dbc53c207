"""Studies over orders x seeds: order generation, aggregation of hand-made results.json documents
(mean, sample std, per-order tables, missing metrics, failed runs), the written files, the command
line's argument errors, and one real study through Ray on the digits store."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math

import pytest

from cl_platform.eval.report import build_results
from cl_platform.store import Store
from cl_platform.sweeps import study as S
from cl_platform.sweeps import study_report as SR
from cl_platform.sweeps.study_runner import (StudyChangedError, cell_config, concurrent_runs, run_study,
                                             study_settings, write_study)
from cl_platform.train.config import SequenceConfig
from cl_platform.train.ledger import Ledger

TASKS = ["parity", "plus_k", "compare", "name", "pair"]


# ------------------------------------------------------------------------------------ orders


def test_order_zero_is_the_given_order_and_the_others_are_seeded_distinct_permutations():
    orders = S.study_orders(TASKS, 4, seed=3)
    assert orders[0] == TASKS
    assert all(sorted(o) == sorted(TASKS) for o in orders)
    assert len({tuple(o) for o in orders}) == 4
    assert S.study_orders(TASKS, 4, seed=3) == orders  # seeded
    assert S.study_orders(TASKS, 4, seed=4) != orders
    assert S.study_orders(TASKS, 2, seed=3) == orders[:2]  # more orders extend, never reshuffle, a study


def test_orders_are_distinct_while_permutations_remain_then_repeat():
    orders = S.study_orders(["a", "b", "c"], 8, seed=0)
    assert {tuple(o) for o in orders[:6]} == set(itertools.permutations("abc"))
    assert all(sorted(o) == ["a", "b", "c"] for o in orders[6:])
    many = S.study_orders([f"t{i}" for i in range(9)], 5, seed=1)  # 9! orders: drawn, not enumerated
    assert len({tuple(o) for o in many}) == 5 and many[0] == [f"t{i}" for i in range(9)]


@pytest.mark.parametrize("base, n, message", [(TASKS, 0, "at least 1 order"), ([], 2, "no tasks"),
                                              (["a", "a"], 2, "names a task twice")])
def test_bad_order_requests_are_refused(base, n, message):
    with pytest.raises(ValueError, match=message):
        S.study_orders(base, n, seed=0)


def test_cells_are_named_per_order_and_seed():
    cells = S.study_cells("st", [["a", "b"], ["b", "a"]], S.study_seeds(5, 2))
    assert [(c["run"], c["order"]) for c in cells] == [("st-o0-s5", ["a", "b"]), ("st-o0-s6", ["a", "b"]),
                                                        ("st-o1-s5", ["b", "a"]), ("st-o1-s6", ["b", "a"])]
    with pytest.raises(ValueError, match="study name 'Bad.Name'"):
        S.check_study_name("Bad.Name")


# ------------------------------------------------------------------------------------ aggregation


def results_doc(run, a, f0, f1, g_final, *, order=("t0", "t1")):
    """A real results.json object of two methods over two tasks. For mode, R = [[a, 0.5], [f0, f1]],
    so avg_accuracy = (f0 + f1) / 2, avg_forgetting = a - f0, bwt = f0 - a, fwt = 0.5 - 0.1, and the
    generation drop = 0.9 - g_final; seq_lora always forgets task 0 completely."""
    mode = {"accuracy_matrix": [[a, 0.5], [f0, f1]], "generation_scores": [0.9, 0.8, g_final],
            "base_accuracy": [0.1, 0.1]}
    seq = {"accuracy_matrix": [[1.0, 0.5], [0.0, 1.0]], "generation_scores": [0.9, 0.5, 0.1],
           "base_accuracy": [0.1, 0.1]}
    return build_results(run, list(order), {"lr": 1e-3}, {"mode": mode, "seq_lora": seq})


def run_row(cell, results=None, error=None):
    if results is None:
        return {**cell, "status": S.FAILED, **({"error": error} if error else {})}
    return {**cell, "status": S.DONE, "metrics": S.run_metrics(results)}


@pytest.fixture
def study_doc():
    """2 orders x 2 seeds; the run of order 1, seed 1 failed; one run carries an extra ranking metric."""
    cells = S.study_cells("st", [["t0", "t1"], ["t1", "t0"]], [0, 1])
    r00 = results_doc("st-o0-s0", a=1.0, f0=0.4, f1=0.8, g_final=0.8)   # acc 0.6, forgetting 0.6, drop 0.1
    r01 = results_doc("st-o0-s1", a=0.9, f0=0.5, f1=0.9, g_final=0.7)   # acc 0.7, forgetting 0.4, drop 0.2
    r10 = results_doc("st-o1-s0", a=0.8, f0=0.8, f1=1.0, g_final=0.6, order=("t1", "t0"))  # 0.9, 0.0, 0.3
    r01["methods"]["mode"]["metrics"]["ranking_avg_accuracy"] = 0.75  # a metric only newer runs carry
    r10["methods"]["mode"]["metrics"]["fwt"] = None  # a metric a run could not compute
    runs = [run_row(cells[0], r00), run_row(cells[1], r01), run_row(cells[2], r10),
            run_row(cells[3], error="RayTaskError: worker died")]
    return S.study_document("st", methods=["mode", "seq_lora"], orders=[["t0", "t1"], ["t1", "t0"]], seeds=[0, 1],
                            runs=runs, settings={"lr": 1e-3})


def close(stat, mean, std, n):
    return (math.isclose(stat["mean"], mean, abs_tol=1e-12) and stat["n"] == n
            and (stat["std"] is None if std is None else math.isclose(stat["std"], std, abs_tol=1e-12)))


def test_overall_mean_and_sample_std_over_the_finished_runs(study_doc):
    mode = study_doc["overall"]["mode"]
    assert study_doc["std_ddof"] == 1
    # avg accuracy 0.6, 0.7, 0.9: mean 0.7(3), sample variance ((-0.1333)^2 + (-0.0333)^2 + 0.1667^2) / 2
    mean = (0.6 + 0.7 + 0.9) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in (0.6, 0.7, 0.9)) / 2)
    assert close(mode["avg_accuracy"], mean, std, 3)
    assert close(mode["avg_forgetting"], (0.6 + 0.4 + 0.0) / 3, 0.3055050463303893, 3)
    assert close(mode["bwt"], -(0.6 + 0.4 + 0.0) / 3, 0.3055050463303893, 3)
    assert close(mode["generation_drop"], 0.2, 0.1, 3)
    assert close(study_doc["overall"]["seq_lora"]["avg_forgetting"], 1.0, 0.0, 3)


def test_a_metric_missing_from_some_runs_is_aggregated_over_those_that_carry_it(study_doc):
    mode = study_doc["overall"]["mode"]
    assert close(mode["ranking_avg_accuracy"], 0.75, None, 1)  # one value: no spread measured
    assert close(mode["fwt"], 0.4, 0.0, 2)  # None in one run
    assert "ranking_avg_accuracy" not in study_doc["overall"]["seq_lora"]


def test_per_order_tables_are_over_the_seeds_of_each_order(study_doc):
    o0, o1 = study_doc["per_order"]
    assert o0["order"] == ["t0", "t1"] and o0["runs"] == ["st-o0-s0", "st-o0-s1"]
    assert close(o0["methods"]["mode"]["avg_accuracy"], 0.65, math.sqrt(0.005), 2)
    assert close(o0["methods"]["mode"]["generation_drop"], 0.15, math.sqrt(0.005), 2)
    assert o1["runs"] == ["st-o1-s0"]  # the failed seed is not there
    assert close(o1["methods"]["mode"]["avg_accuracy"], 0.9, None, 1)


def test_a_failed_run_is_named_and_left_out(study_doc, tmp_path):
    assert study_doc["failed"] == [{"run": "st-o1-s1", "error": "RayTaskError: worker died"}]
    assert all(s["n"] <= 3 for per in study_doc["overall"].values() for s in per.values())
    summary = SR.render_summary(study_doc)
    assert "st-o1-s1" in summary and "RayTaskError: worker died" in summary and "left out" in summary
    assert "3 of 4 runs finished" in summary
    no_error = S.study_document("x", methods=["mode"], orders=[["a"]], seeds=[0],
                                runs=[{"run": "x-o0-s0", "order_index": 0, "seed": 0, "order": ["a"], "status": "failed"}])
    assert no_error["failed"] == [{"run": "x-o0-s0", "error": "no results.json"}] and no_error["overall"] == {}


def test_method_metrics_takes_every_number_of_metrics_blocks():
    entry = {"metrics": {"avg_accuracy": 0.5, "fwt": None, "note": "x"},
             "ranking_metrics": {"avg_accuracy": 0.7, "ranking_forgetting": 0.1, "flag": True}}
    assert S.method_metrics(entry) == {"avg_accuracy": 0.5, "ranking_avg_accuracy": 0.7, "ranking_forgetting": 0.1}


def test_written_files_exist_and_parse(study_doc, tmp_path):
    store = Store(str(tmp_path / "store"))
    files = write_study(store, "studies/st", study_doc)
    assert store.read_json(files["study"]) == json.loads(json.dumps(study_doc))
    rows = list(csv.DictReader(io.StringIO(store.read_bytes(files["tables"]).decode())))
    row = next(r for r in rows if (r["scope"], r["method"], r["metric"]) == ("order 0", "mode", "avg_accuracy"))
    assert math.isclose(float(row["mean"]), 0.65) and row["n"] == "2"
    assert next(r for r in rows if r["metric"] == "ranking_avg_accuracy")["std"] == ""
    for metric in ("avg_accuracy", "avg_forgetting", "bwt", "fwt", "generation_drop", "ranking_avg_accuracy"):
        assert store.read_bytes(files[f"plot_{metric}.png"])[:8] == b"\x89PNG\r\n\x1a\n"
    summary = store.read_bytes(files["summary"]).decode()
    assert "| mode | 3 | 73.3 ± 15.3 |" in summary and "![avg_accuracy](plot_avg_accuracy.png)" in summary
    assert "## Order 1: t1 → t0" in summary


# ------------------------------------------------------------------------------------ runner pieces

BASE = SequenceConfig(run="st", store="file:///s", method="mode", tasks=["a", "b"], model_uri="m", spec={},
                      method_config={"seed": 0, "r_text": 8}, lr=1e-3)


@pytest.mark.parametrize("cluster, workers, cpus, gpus, expected", [
    ({"CPU": 2.0}, 1, 1.0, 0.0, 1), ({"CPU": 1.0}, 1, 1.0, 0.0, 0), ({"CPU": 16.0}, 2, 1.0, 0.0, 7),
    ({"CPU": 16.0, "GPU": 2.0}, 1, 1.0, 1.0, 2), ({"CPU": 8.0, "GPU": 1.0}, 1, 0.5, 0.25, 4)])
def test_concurrent_runs_keep_a_cpu_for_ray_data(cluster, workers, cpus, gpus, expected):
    assert concurrent_runs(cluster, workers, cpus, gpus) == expected


def test_cell_config_sets_run_order_and_both_seeds():
    cfg = cell_config(BASE, {"run": "st-o1-s3", "order": ["b", "a"], "seed": 3})
    assert (cfg.run, cfg.tasks, cfg.seed, cfg.method_config) == ("st-o1-s3", ["b", "a"], 3, {"seed": 3, "r_text": 8})
    assert cfg.lr == BASE.lr


def test_a_study_rerun_with_other_settings_is_refused_before_anything_runs(tmp_path):
    store = Store(str(tmp_path / "store"))
    base = SequenceConfig(**{**BASE.to_dict(), "store": store.url})
    store.write_json("studies/st/study.json", {"settings": study_settings(base, ["mode"], 0)})
    changed = SequenceConfig(**{**base.to_dict(), "lr": 3e-3, "seed": 5})  # the seed is per cell: not a difference
    with pytest.raises(StudyChangedError, match=r"differ at: lr\)"):
        run_study(changed, ["mode"], name="st", orders=1, seeds=1, log=lambda m: None)


# ------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("argv, message", [
    (["--orders", "0"], "--orders 0: need at least 1"), (["--seeds", "-1"], "--seeds -1: need at least 1"),
    (["--run", "x"], "--run: not a study flag"), (["--resume"], "--resume: not a study flag"),
    (["--from-run", "r"], "--from-run: not a study flag"), (["--name", "Bad.Name"], "study name 'Bad.Name'"),
    (["--max-concurrent", "0"], "--max-concurrent 0: need at least 1")])
def test_command_line_errors_exit_2_naming_the_argument(argv, message, capsys, tmp_path):
    from cl_platform.cli.study import main

    assert main(["--store", str(tmp_path / "store"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # refused before the suite is written


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_smallest_study_runs_both_orders_on_ray_and_reads_them_back(fresh_digits_store, monkeypatch, capsys):
    from cl_platform.cli.study import main

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["--store", fresh_digits_store, "--suite", "digits", "--tasks", "parity,compare", "--method", "mode",
            "--orders", "2", "--seeds", "1", "--quick", "--steps", "2", "--probe-size", "1", "--name", "tiny"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    store = Store(fresh_digits_store)
    doc = store.read_json("studies/tiny/study.json")
    assert doc["orders"] == [["parity", "compare"], ["compare", "parity"]] and doc["failed"] == []
    assert [r["run"] for r in doc["runs"]] == ["tiny-o0-s0", "tiny-o1-s0"]
    for r in doc["runs"]:
        ledger = Ledger.open(store, r["run"])
        assert ledger.task_order == r["order"] and sorted(ledger.done_rounds("mode")) == [0, 1]
        results = store.read_json(f"runs/{r['run']}/results.json")
        assert results["task_order"] == r["order"]
        assert r["metrics"]["mode"]["avg_accuracy"] == results["methods"]["mode"]["metrics"]["avg_accuracy"]
    acc = [r["metrics"]["mode"]["avg_accuracy"] for r in doc["runs"]]
    assert math.isclose(doc["overall"]["mode"]["avg_accuracy"]["mean"], sum(acc) / 2)
    assert "run 2/2 tiny-o1-s0 finished" in out and "avg_accuracy" in out
    assert "| mode | 2 |" in store.read_bytes("studies/tiny/summary.md").decode()
    assert store.read_bytes("studies/tiny/plot_avg_accuracy.png")[:4] == b"\x89PNG"
    # a rerun reads both runs back and starts nothing
    assert main(argv) == 0
    assert "2 already finished, read back" in capsys.readouterr().out
