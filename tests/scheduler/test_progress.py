"""A lineage's accuracy matrix, generation curve, forgetting and report, from three rounds of the
stand-in job (which reports earlier-task accuracies falling 0.05 per round) and from hand-made rounds."""

from __future__ import annotations

import time

import pytest
from tests.support.sched_helpers import small_task, state_json

from cl_platform.eval.metrics import avg_forgetting, lower_triangular_forgetting
from cl_platform.scheduler.progress import lineage_summary
from cl_platform.scheduler.state import LearnedTask
from cl_platform.scheduler.status import build_status, format_status


def _round(task: str, n: int, acc: float, gen: float, earlier: dict | None = None, base: float = 0.6) -> LearnedTask:
    metrics = {"accuracy": acc, "generation_score": gen, "base_generation_score": base}
    if earlier is not None:
        metrics["earlier_accuracy"] = earlier
    return LearnedTask(task=task, n=n, run=f"lin-{n}-{task}", from_run=None, checkpoint="c", metrics=metrics)


def test_summary_of_three_rounds_by_hand():
    learned = [_round("a", 1, 0.9, 0.5), _round("b", 2, 0.8, 0.45, {"a": 0.7}),
               _round("c", 3, 0.6, 0.3, {"a": 0.5, "b": 0.8})]
    s = lineage_summary(learned)
    assert s["accuracy_matrix"] == [[0.9], [0.7, 0.8], [0.5, 0.8, 0.6]]
    assert s["generation_curve"] == [0.6, 0.5, 0.45, 0.3]
    assert s["current_accuracy"] == {"a": 0.5, "b": 0.8, "c": 0.6}
    # forgetting: a: max(0.9, 0.7) - 0.5 = 0.4; b: 0.8 - 0.8 = 0 -> 0.2
    assert s["avg_forgetting"] == pytest.approx(0.2)
    assert s["generation_drop"] == pytest.approx(0.3)
    assert s["avg_accuracy"] == pytest.approx(1.9 / 3)
    # previous round: avg 0.75, forgetting 0.9 - 0.7 = 0.2, generation 0.45
    assert s["trend"]["avg_accuracy"] == pytest.approx(1.9 / 3 - 0.75)
    assert s["trend"]["avg_forgetting"] == pytest.approx(0.0)
    assert s["trend"]["generation_score"] == pytest.approx(-0.15)
    # a round that did not evaluate the earlier tasks leaves holes, and no forgetting figure
    holes = lineage_summary([learned[0], _round("b", 2, 0.8, 0.4)])
    assert holes["accuracy_matrix"] == [[0.9], [None, 0.8]] and holes["avg_forgetting"] is None
    assert lineage_summary([])["trend"] is None and lineage_summary([])["generation_curve"] == []


def test_lower_triangular_forgetting_equals_the_square_formula_and_rejects_ragged_mistakes():
    rows = [[0.9], [0.7, 0.8], [0.5, 0.8, 0.6]]
    upper = [[0.9, 0.1, 0.3], [0.7, 0.8, 0.2], [0.5, 0.8, 0.6]]  # what a sequence run also sees: not read
    assert lower_triangular_forgetting(rows) == pytest.approx(avg_forgetting(upper))
    assert lower_triangular_forgetting([[0.4]]) == 0.0
    with pytest.raises(ValueError, match="row 1 must hold 2"):
        lower_triangular_forgetting([[0.9], [0.7]])
    with pytest.raises(ValueError, match="row 1"):
        lower_triangular_forgetting([[0.9], [float("nan"), 0.1]])
    with pytest.raises(ValueError, match="non-empty"):
        lower_triangular_forgetting([])


def test_three_rounds_give_a_lower_triangular_matrix_a_curve_and_a_report(file_harness):
    store = file_harness.store
    for k, name in enumerate(("a", "b", "c")):
        small_task(store, name, token=30 + 2 * k)
        time.sleep(0.02)
    sched = file_harness.scheduler(env={"FAKE_GENERATION": "a=0.5,b=0.4,c=0.2"})
    assert sched.run() == 0
    learned = state_json(store)["learned"]
    assert [t["task"] for t in learned] == ["a", "b", "c"] and all(len(t["digest"]) == 64 for t in learned)
    status = build_status(store, "lin")
    p = status["progress"]
    # the stand-in job: 0.75 on its own task, an earlier task loses 0.05 per round since it was learned
    assert p["accuracy_matrix"] == [[0.75], [pytest.approx(0.70), 0.75], [pytest.approx(0.65), pytest.approx(0.70), 0.75]]
    assert p["generation_curve"] == [0.55, 0.5, 0.4, 0.2]
    assert p["avg_forgetting"] == pytest.approx((0.10 + 0.05) / 2)
    assert p["generation_drop"] == pytest.approx(0.35)
    assert p["trend"]["generation_score"] == pytest.approx(-0.2)
    text = format_status(status)
    assert "avg forgetting 0.075" in text and "generation drop vs base 0.350" in text
    report = store.read_bytes("lineages/lin/report/report.md").decode()
    assert "| 3: c | 65.0 | 70.0 | 75.0 |" in report and "| 55.0 | 50.0 | 40.0 | 20.0 |" in report
    for png in ("accuracy_matrix.png", "generation_curve.png"):
        assert store.read_bytes(f"lineages/lin/report/{png}")[:8] == b"\x89PNG\r\n\x1a\n"
    # the third round verified its task and both earlier tasks (whose eval splits it reads) as validated
    log = open(file_harness.tmp_path / "logs" / "lin-3-c-a1.log").read()
    assert [line for line in log.splitlines() if line.startswith("verified")] == ["verified a", "verified b", "verified c"]


@pytest.mark.parametrize("action", ["hold", "warn"])
def test_a_round_crossing_a_guard_rail_is_held_or_promoted_with_a_warning(file_harness, action):
    from dataclasses import replace

    store = file_harness.store
    for k, name in enumerate(("a", "b", "c")):
        small_task(store, name, token=30 + 2 * k)
        time.sleep(0.02)
    settings = replace(file_harness.settings, max_generation_drop=0.2, guard_action=action)
    # b's round drops generation from the base's 0.55 to 0.1: 0.45 > 0.2
    sched = file_harness.scheduler(settings=settings, env={"FAKE_GENERATION": "a=0.5,b=0.1,c=0.45"})
    assert sched.run() == 0
    st = state_json(store)
    [event] = sched.events.of("guard_rail")
    assert event["task"] == "b" and event["action"] == action and event["current_model"] == ("lin-1-a" if action == "hold" else "lin-2-b")
    assert event["crossings"] == [{"guard": "max_generation_drop", "value": pytest.approx(0.45), "limit": 0.2}]
    text = format_status(build_status(store, "lin"))
    if action == "hold":
        # the lineage stays on a's adapter; c continues from it and b's run is kept, not promoted
        assert [t["task"] for t in st["learned"]] == ["a", "c"]
        assert st["learned"][1]["from_run"] == "lin-1-a" and st["learned"][1]["run"] == "lin-2-c"
        assert st["held"]["b"]["run"] == "lin-2-b" and st["held"]["b"]["checkpoint"].endswith("runs/lin-2-b/mode/round-00")
        assert "held: not promoted" in text and "max_generation_drop 0.450 > 0.200" in text
        # not trained again while its files are unchanged
        again = file_harness.scheduler(settings=settings)
        assert again.run() == 0 and not again.events.of("submitted")
        assert build_status(store, "lin")["progress"]["accuracy_matrix"] == [[0.75], [pytest.approx(0.70), 0.75]]
    else:
        assert [t["task"] for t in st["learned"]] == ["a", "b", "c"] and not st["held"]
        assert st["learned"][1]["crossings"][0]["guard"] == "max_generation_drop"
        assert st["learned"][2]["from_run"] == "lin-2-b"
        assert "promoted with a warning" in text
