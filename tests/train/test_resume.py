"""Where a restarted worker resumes (:func:`decide_resume`, pure: no Ray, no model) and the
checkpoint form of :class:`TrainState`."""

from __future__ import annotations

import itertools

import pytest

from cl_platform.train.ledger import Ledger
from cl_platform.train.state import Resume, Start, TrainState, decide_resume, progress_from_ledger

N = 3  # tasks
OPT = {"opt": {"state": {}, "param_groups": []}, "sched": {"last_epoch": 8}}


def ck(round: int, step: int, method: str = "mode") -> TrainState:
    """A checkpoint's state: mid-round ones carry optimizer state, round-end ones none."""
    return TrainState(method, round=round, step=step, accuracy=[[0.5] * N] * round, generation=[0.9] * (round + 1),
                      base_accuracy=[0.1] * N, optimizer=OPT if step else None)


# (case, checkpoint state, done rounds, from_run) -> (start, round, step, checkpoint not used because ...)
CASES = [
    ("fresh", None, [], False, (Start.FRESH, 0, 0, None)),
    ("from-run start", None, [], True, (Start.FROM_RUN, 0, 0, None)),
    ("mid-round checkpoint", ck(0, 8), [], False, (Start.CHECKPOINT, 0, 8, None)),
    ("mid-round checkpoint of a from-run start: the checkpoint, not the other run's adapter",
     ck(0, 8), [], True, (Start.CHECKPOINT, 0, 8, None)),
    ("round-end checkpoint", ck(1, 0), [0], False, (Start.CHECKPOINT, 1, 0, None)),
    ("round-end checkpoint of a from-run start", ck(1, 0), [0], True, (Start.CHECKPOINT, 1, 0, None)),
    ("finished method", None, [0, 1, 2], False, (Start.SKIP, N, 0, None)),
    ("finished method, with its last checkpoint", ck(3, 0), [0, 1, 2], False, (Start.SKIP, N, 0, None)),
    ("finished method, checkpoint behind", ck(1, 4), [2, 0, 1], True, (Start.SKIP, N, 0, None)),
    ("interrupted round, no checkpoint (e.g. a new fit after the driver died)",
     None, [0], False, (Start.LEDGER, 1, 0, None)),
    ("interrupted round, checkpoint ahead of the ledger (mid-round of the running round)",
     ck(1, 8), [0], False, (Start.CHECKPOINT, 1, 8, None)),
    ("interrupted round, checkpoint behind the ledger (mid-round of a done round)",
     ck(0, 8), [0], False, (Start.LEDGER, 1, 0, "behind the ledger")),
    ("interrupted round, round-end checkpoint behind the ledger",
     ck(1, 0), [0, 1], False, (Start.LEDGER, 2, 0, "behind the ledger")),
    ("checkpoint past the ledger: the round not recorded is not skipped",
     ck(2, 0), [0], False, (Start.LEDGER, 1, 0, "past the ledger")),
    ("checkpoint past an empty ledger: round 0 is trained, from the start",
     ck(1, 4), [], False, (Start.FRESH, 0, 0, "past the ledger")),
    ("checkpoint past an empty ledger, from-run start", ck(1, 0), [], True, (Start.FROM_RUN, 0, 0, "past the ledger")),
    ("checkpoint of another method of the fit, nothing done", ck(1, 8, "seq_lora"), [], False, (Start.FRESH, 0, 0, None)),
    ("checkpoint of another method of the fit, from-run", ck(0, 8, "seq_lora"), [], True, (Start.FROM_RUN, 0, 0, None)),
    ("checkpoint of another method of the fit, some rounds done",
     ck(1, 8, "seq_lora"), [0], False, (Start.LEDGER, 1, 0, None)),
    ("checkpoint at round 0 step 0 holds no progress", ck(0, 0), [], True, (Start.FROM_RUN, 0, 0, None)),
]


@pytest.mark.parametrize("case,checkpoint,done,from_run,expected", CASES, ids=[c[0] for c in CASES])
def test_decide_resume(case, checkpoint, done, from_run, expected):
    start, round, step, unused = expected
    d = decide_resume("mode", checkpoint, done, N, from_run)
    assert (d.start, d.round, d.step) == (start, round, step)
    if unused is None:
        assert d.unused_checkpoint is None
    else:
        assert unused in d.unused_checkpoint and f"round {checkpoint.round} step {checkpoint.step}" in d.unused_checkpoint
    if start is Start.CHECKPOINT:
        assert d.state is checkpoint and d.state.optimizer == (OPT if step else None)
    else:
        assert d.state is None
    if start is Start.LEDGER:
        assert d.ledger_round == max(done)
    else:
        with pytest.raises(ValueError, match="no ledger round"):
            d.ledger_round


def test_training_always_continues_at_the_ledgers_frontier():
    """Over every checkpoint position and ledger prefix: a done round is never trained again, a
    round not done is never skipped; the checkpoint only decides the step inside that round."""
    positions = [None] + [ck(r, s, m) for r in range(N + 1) for s in (0, 4) for m in ("mode", "moe_lora")]
    for checkpoint, k, from_run in itertools.product(positions, range(N + 1), (False, True)):
        done = list(range(k))
        d = decide_resume("mode", checkpoint, done, N, from_run)
        assert d.round == k, (checkpoint, done, d)
        if d.start is not Start.CHECKPOINT:
            assert d.step == 0
        if d.start in (Start.FRESH, Start.FROM_RUN):
            assert k == 0 and (d.start is Start.FROM_RUN) == from_run


@pytest.mark.parametrize("done,match", [([1], "gap"), ([0, 2], "gap"), ([0, 1, 2, 3], "outside"), ([-1, 0], "outside")])
def test_a_ledger_the_platform_never_writes_is_refused(done, match):
    with pytest.raises(ValueError, match=match):
        decide_resume("mode", None, done, N, False)


def test_decision_is_plain_data():
    d = decide_resume("mode", None, [0], N, False)
    assert d == Resume(Start.LEDGER, round=1, step=0)
    with pytest.raises(AttributeError):
        d.round = 2  # frozen


# ------------------------------------------------------------------ TrainState <-> checkpoint dict

LEGACY = {  # a state.pt as the loop wrote it before TrainState (mid-round: with "optimizer")
    "method": "seq_lora", "round": 1, "step": 8, "R": [[0.5, 0.25]], "G": [0.9, 0.8], "base_acc": [0.1, 0.2],
    "method_state": {"k": 1}, "optimizer": OPT,
}


@pytest.mark.parametrize("d,expected", [
    (LEGACY, TrainState("seq_lora", 1, 8, [[0.5, 0.25]], [0.9, 0.8], [0.1, 0.2], {"k": 1}, OPT)),
    ({k: v for k, v in LEGACY.items() if k != "optimizer"},
     TrainState("seq_lora", 1, 8, [[0.5, 0.25]], [0.9, 0.8], [0.1, 0.2], {"k": 1}, None)),
    ({"round": 2, "step": 0, "R": [], "G": [None], "base_acc": None, "method_state": {}},  # names no method
     TrainState("mode", 2, 0, [], [None], None, {}, None)),
])
def test_train_state_reads_checkpoint_dicts(d, expected):
    s = TrainState.from_dict(d, default_method="mode")
    assert s == expected
    assert s.position == (expected.round, expected.step)


def test_train_state_writes_the_checkpoint_dict_it_always_had():
    s = TrainState.from_dict(LEGACY, default_method="mode")
    assert s.to_dict() == LEGACY
    round_end = TrainState("mode", round=1, accuracy=[[0.5]], generation=[0.9, 0.8], base_accuracy=[0.1])
    assert round_end.to_dict() == {"method": "mode", "round": 1, "step": 0, "R": [[0.5]], "G": [0.9, 0.8],
                                   "base_acc": [0.1], "method_state": {}}  # no "optimizer" at round ends
    assert TrainState.from_dict(round_end.to_dict(), "other") == round_end


def test_train_state_from_the_ledger(tmp_path):
    ledger = Ledger.create(str(tmp_path), "r", task_order=["a", "b", "c"], config={"seed": 0}, methods=["mode"])
    for r, (acc, gen) in enumerate([([0.5, 0.0, 0.0], 0.8), ([0.4, 0.6, 0.0], 0.7)]):
        ledger.start_round("mode", r)
        ledger.finish_round("mode", r, checkpoint=f"file:///x/round-{r}", metrics={
            "accuracy": acc, "generation_score": gen, "base_accuracy": [0.1, 0.1, 0.1],
            "base_generation_score": 0.9})
    s = TrainState.from_ledger(ledger, "mode", 1)
    assert s == TrainState("mode", round=2, step=0, accuracy=[[0.5, 0.0, 0.0], [0.4, 0.6, 0.0]],
                           generation=[0.9, 0.8, 0.7], base_accuracy=[0.1, 0.1, 0.1])
    assert progress_from_ledger(ledger, "mode", 0) == {"R": [[0.5, 0.0, 0.0]], "G": [0.9, 0.8], "base_acc": [0.1, 0.1, 0.1]}


def test_train_state_keeps_the_ranking_rows():
    s = TrainState("mode", round=1, accuracy=[[0.5, 0.0]], generation=[0.9, 0.8], base_accuracy=[0.1, 0.0],
                   ranking=[[0.75, None]], base_ranking=[0.5, None])
    d = s.to_dict()
    assert (d["Rk"], d["base_rk"]) == ([[0.75, None]], [0.5, None])
    assert TrainState.from_dict(d, "other") == s
    old = TrainState.from_dict(LEGACY, default_method="mode")  # a checkpoint from before ranking
    assert (old.ranking, old.base_ranking) == ([], None)


def test_ranking_rows_from_the_ledger_only_when_every_round_has_them(tmp_path):
    ledger = Ledger.create(str(tmp_path), "r", task_order=["a", "b"], config={"seed": 0}, methods=["mode", "old"])
    for method in ("mode", "old"):
        for r in range(2):
            extra = {"ranking_accuracy": [0.5 + r / 10, None], "base_ranking_accuracy": [0.4, None]}
            ledger.start_round(method, r)
            ledger.finish_round(method, r, checkpoint=f"file:///x/{method}-{r}", metrics={
                "accuracy": [0.5, 0.0], "generation_score": 0.8, "base_accuracy": [0.1, 0.1],
                "base_generation_score": 0.9, **(extra if method == "mode" or r == 1 else {})})
    s = TrainState.from_ledger(ledger, "mode", 1)
    assert (s.ranking, s.base_ranking) == ([[0.5, None], [0.6, None]], [0.4, None])
    assert "Rk" not in progress_from_ledger(ledger, "old", 1)  # round 0 was recorded before ranking
    assert TrainState.from_ledger(ledger, "old", 1).ranking == []
