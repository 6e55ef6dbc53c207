"""The paper's claims checked run by run on hand-made study rows, the verdicts, the summary's
claims table, and paired differences between two studies."""

from __future__ import annotations

import math

import pytest

from cl_platform.sweeps import claims as C
from cl_platform.sweeps import study as S
from cl_platform.sweeps import study_report as SR

METHODS = ["mode", "mode_nokd", "moe_lora", "seq_lora"]


def metrics(acc, forg, drop):
    return {"avg_accuracy": acc, "avg_forgetting": forg, "generation_drop": drop}


def row(k, seed, per_method, order=("a", "b"), status=S.DONE):
    return {"run": f"st-o{k}-s{seed}", "order_index": k, "seed": seed, "order": list(order), "status": status,
            **({"metrics": per_method} if status == S.DONE else {})}


@pytest.fixture
def runs():
    """Three runs: MoDE's drop is below half of both baselines' in runs 0 and 1, not in run 2 against
    seq_lora (0.30 vs 0.50 / 2 = 0.25); forgetting is below moe_lora's everywhere and never below
    seq_lora's; accuracy ties the best baseline in run 1. mode_nokd is never a baseline."""
    return [
        row(0, 0, {"mode": metrics(0.50, 0.40, 0.02), "mode_nokd": metrics(0.90, 0.0, 0.0),
                   "moe_lora": metrics(0.40, 0.60, 0.80), "seq_lora": metrics(0.45, 0.30, 0.90)}),
        row(0, 1, {"mode": metrics(0.45, 0.50, 0.10), "mode_nokd": metrics(0.90, 0.0, 0.0),
                   "moe_lora": metrics(0.45, 0.70, 0.40), "seq_lora": metrics(0.30, 0.50, 0.60)}),
        row(1, 0, {"mode": metrics(0.60, 0.20, 0.30), "mode_nokd": metrics(0.90, 0.0, 0.0),
                   "moe_lora": metrics(0.50, 0.25, 0.70), "seq_lora": metrics(0.55, 0.10, 0.50)}, order=("b", "a")),
        row(1, 1, {}, order=("b", "a"), status=S.FAILED),
    ]


def by_claim(claims):
    return {(c["claim"], r["against"]): r for c in claims for r in c["rows"]}


def stat_is(stat, values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return math.isclose(stat["mean"], mean, abs_tol=1e-12) and math.isclose(stat["std"], std, abs_tol=1e-12)


def test_the_claims_are_margins_per_run_against_each_baseline(runs):
    got = by_claim(C.paper_claims(METHODS, runs))
    assert set(got) == {("generation", "moe_lora"), ("generation", "seq_lora"), ("forgetting", "moe_lora"),
                        ("forgetting", "seq_lora"), ("accuracy", "best of moe_lora, seq_lora")}
    g = got[("generation", "seq_lora")]  # 0.45 - 0.02, 0.30 - 0.10, 0.25 - 0.30
    assert stat_is(g["margin"], [0.43, 0.20, -0.05]) and (g["holds"], g["runs"]) == (2, 3)
    assert g["verdict"] == "holds on average, in 2 of 3 runs"
    g = got[("generation", "moe_lora")]  # 0.40 - 0.02, 0.20 - 0.10, 0.35 - 0.30
    assert stat_is(g["margin"], [0.38, 0.10, 0.05]) and g["verdict"] == "holds in every run (3 of 3)"
    f = got[("forgetting", "seq_lora")]  # 0.30 - 0.40, 0.50 - 0.50 (a tie fails), 0.10 - 0.20
    assert stat_is(f["margin"], [-0.10, 0.0, -0.10]) and f["holds"] == 0
    assert f["verdict"] == "does not hold (holds in 0 of 3 runs)"
    a = got[("accuracy", "best of moe_lora, seq_lora")]  # 0.50 - 0.45, 0.45 - 0.45 (a tie holds), 0.60 - 0.55
    assert stat_is(a["margin"], [0.05, 0.0, 0.05]) and a["holds"] == 3


def test_no_claims_without_mode_or_without_a_baseline(runs):
    assert C.paper_claims(["moe_lora", "seq_lora"], [row(0, 0, {"moe_lora": metrics(0.1, 0.1, 0.1),
                                                               "seq_lora": metrics(0.1, 0.1, 0.1)})]) == []
    only_mode = [row(0, 0, {"mode": metrics(0.5, 0.1, 0.0), "mode_nokd": metrics(0.5, 0.1, 0.3)})]
    assert C.paper_claims(["mode", "mode_nokd"], only_mode) == []
    assert C.baselines_of(["mode", "olora", "mode_nokd", "seq_lora"]) == ["olora", "seq_lora"]


def test_a_run_without_a_metric_is_left_out_of_that_comparison_only(runs):
    del runs[0]["metrics"]["seq_lora"]["avg_forgetting"]
    got = by_claim(C.paper_claims(METHODS, runs))
    assert got[("forgetting", "seq_lora")]["runs"] == 2 and got[("forgetting", "moe_lora")]["runs"] == 3


def test_the_study_document_and_summary_carry_the_claims(runs):
    doc = S.study_document("st", methods=METHODS, orders=[["a", "b"], ["b", "a"]], seeds=[0, 1], runs=runs)
    assert doc["claims"] == C.paper_claims(METHODS, runs)
    summary = SR.render_summary(doc)
    assert "## The paper's claims" in summary
    assert ("| MoDE's generation drop is at most half of each baseline's | seq_lora | +19.3 ± 24.0 | 2 of 3 | "
            "holds on average, in 2 of 3 runs |") in summary


def test_paired_difference_matches_cells_by_order_and_seed(runs):
    doc_a = S.study_document("a", methods=METHODS, orders=[["a", "b"], ["b", "a"]], seeds=[0, 1], runs=runs)
    other = [dict(r) for r in runs]
    other[1] = row(0, 1, {"mode": metrics(0.65, 0.1, 0.0)})
    other[2] = row(1, 0, {}, order=("b", "a"), status=S.FAILED)
    doc_b = S.study_document("b", methods=["mode"], orders=[["a", "b"], ["b", "a"]], seeds=[0, 1], runs=other)
    diff = C.paired_difference(doc_b, "mode", doc_a, "mode", "avg_accuracy")  # cells (0,0) and (0,1) only
    assert stat_is(diff, [0.0, 0.20]) and diff["n"] == 2
    assert C.paired_difference(doc_b, "mode", doc_a, "mode", "no_such_metric") is None
    other[0] = row(0, 0, {"mode": metrics(0.5, 0.4, 0.02)}, order=("b", "a"))
    clash = S.study_document("c", methods=["mode"], orders=[["b", "a"]], seeds=[0], runs=other[:1])
    with pytest.raises(ValueError, match="cannot be paired"):
        C.paired_difference(clash, "mode", doc_a, "mode", "avg_accuracy")


def test_gradient_conflict_of_the_rounds_is_averaged_into_study_metrics():
    rounds = [{"gradient_conflict": {"overall": {"cosine": 0.2, "task_share": 1.0, "generation_share": None}}},
              {"gradient_conflict": {"overall": {"cosine": -0.4, "task_share": 0.5, "generation_share": None}}},
              {"loss": 1.0}]
    entry = {"metrics": {"avg_accuracy": 0.5}, "rounds": rounds}
    assert S.method_metrics(entry) == pytest.approx({"avg_accuracy": 0.5, "gradient_cosine": -0.1,
                                                     "gradient_task_share": 0.75})
    assert S.gradient_summary({"metrics": {}}) == {}


def test_plasticity_and_kept_accuracy_of_the_matrix_enter_the_study_metrics():
    entry = {"metrics": {"avg_accuracy": 0.55}, "accuracy_matrix": [[0.9, 0.0], [0.2, 0.9]]}
    assert S.method_metrics(entry) == pytest.approx({"avg_accuracy": 0.55, "plasticity": 0.9, "earlier_accuracy": 0.2})
    assert S.matrix_summary({"accuracy_matrix": [[0.5, 0.1]]}) == {}  # not square: left out
    assert S.matrix_summary({"accuracy_matrix": [[0.5]]}) == {"plasticity": 0.5}
