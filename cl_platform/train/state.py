"""A method's training position (:class:`TrainState`) and where a restarted worker resumes.

:func:`decide_resume` is pure (no Ray, no model, no store): from the state in the latest Ray
checkpoint, the rounds the ledger records as done and the run's shape it returns a
:class:`Resume` that :class:`cl_platform.train.recipe.SequenceRecipe` applies. The rules:

- the ledger's finished rounds are authoritative: a round recorded as done is never trained
  again and a round not recorded is never skipped, so training always continues at the ledger's
  frontier (its first round not done);
- the Ray checkpoint only says where inside that round: it is used when it belongs to the method
  and sits in the frontier round (mid-round, with its optimizer state, or at its start, the
  round-end checkpoint of the round before); a checkpoint behind the ledger (or, which the
  normal flow never writes, past it) loses;
- otherwise the adapter of the ledger's last done round, or, before any round is done, a fresh
  adapter or the ``--from-run`` one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional

if TYPE_CHECKING:
    from cl_platform.train.ledger import Ledger


@dataclass
class TrainState:
    """A method's position in its sequence and the scores so far.

    Stored in every Ray checkpoint (``state.pt``, :func:`cl_platform.train.checkpoint.save_training_state`)
    as the dict of :meth:`to_dict`, whose keys are those checkpoints have always had, so a
    checkpoint written before this class existed loads with :meth:`from_dict`.

    Attributes:
        method: the method the state belongs to.
        round: the round being trained (the next one at a round end).
        step: steps of ``round`` done (0 at a round end).
        accuracy: per finished round, the accuracy on every task (the accuracy matrix ``R``).
        generation: the generation score of the starting model (base, or the ``--from-run``
            adapter), then one per finished round (``G``); ``None`` entries without a probe.
        base_accuracy: the starting model's accuracy on every task (``None`` until evaluated).
        method_state: the method's :meth:`state_dict`.
        optimizer: ``{"opt": ..., "sched": ...}`` state dicts of a mid-round position (``None``
            at round ends).
        ranking: per finished round, the candidate-ranking accuracy on every task (``None`` for a
            task without a closed answer set); empty in a checkpoint written before ranking.
        base_ranking: the starting model's ranking accuracies (``None`` until evaluated, or in a
            checkpoint written before ranking).
    """

    method: str
    round: int = 0
    step: int = 0
    accuracy: list[list[float]] = field(default_factory=list)
    generation: list[Optional[float]] = field(default_factory=list)
    base_accuracy: Optional[list[float]] = None
    method_state: dict[str, Any] = field(default_factory=dict)
    optimizer: Optional[dict[str, Any]] = None
    ranking: list[list[Optional[float]]] = field(default_factory=list)
    base_ranking: Optional[list[Optional[float]]] = None

    @property
    def position(self) -> tuple[int, int]:
        return self.round, self.step

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's dict (``optimizer`` only when there is one; the ranking rows ``Rk`` and
        ``base_rk`` only when there are any)."""
        d = {"method": self.method, "round": self.round, "step": self.step, "R": self.accuracy,
             "G": self.generation, "base_acc": self.base_accuracy, "method_state": self.method_state}
        if self.optimizer is not None:
            d["optimizer"] = self.optimizer
        if self.ranking or self.base_ranking is not None:
            d["Rk"], d["base_rk"] = self.ranking, self.base_ranking
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], default_method: str) -> "TrainState":
        """The state of a checkpoint's dict; one that names no method belongs to ``default_method``."""
        return cls(method=d.get("method", default_method), round=int(d.get("round", 0)), step=int(d.get("step", 0)),
                   accuracy=list(d.get("R") or []), generation=list(d.get("G") or []), base_accuracy=d.get("base_acc"),
                   method_state=dict(d.get("method_state") or {}), optimizer=d.get("optimizer"),
                   ranking=list(d.get("Rk") or []), base_ranking=d.get("base_rk"))

    @classmethod
    def from_ledger(cls, ledger: "Ledger", method: str, last: int) -> "TrainState":
        """The state at the end of round ``last`` as the ledger records it (no method state)."""
        p = progress_from_ledger(ledger, method, last)
        return cls(method=method, round=last + 1, step=0, accuracy=p["R"], generation=p["G"], base_accuracy=p["base_acc"],
                   ranking=p.get("Rk", []), base_ranking=p.get("base_rk"))


def progress_from_ledger(ledger: "Ledger", method: str, last: int) -> dict[str, Any]:
    """Accuracy rows, generation scores and base accuracies of rounds 0..last from the ledger, and
    the ranking rows ``Rk`` and base ranking accuracies ``base_rk`` when every one of those rounds
    recorded them (rounds recorded before ranking existed did not)."""
    recs = [ledger.record(method, r).metrics for r in range(last + 1)]
    p = {
        "R": [m["accuracy"] for m in recs],
        "G": [recs[0]["base_generation_score"]] + [m["generation_score"] for m in recs],
        "base_acc": recs[0]["base_accuracy"],
    }
    if all("ranking_accuracy" in m for m in recs):
        p["Rk"], p["base_rk"] = [m["ranking_accuracy"] for m in recs], recs[0].get("base_ranking_accuracy")
    return p


class Start(enum.Enum):
    """How a method starts in a (re)started worker."""

    SKIP = "skip"              # every round is done: nothing to train
    FRESH = "fresh"            # round 0 step 0, the method's freshly initialised adapter
    FROM_RUN = "from_run"      # round 0 step 0, the adapter of another run (``cfg.from_checkpoint``)
    CHECKPOINT = "checkpoint"  # the Ray checkpoint's adapter, state and (mid-round) optimizer state
    LEDGER = "ledger"          # round ``last + 1`` step 0, the ledger's adapter of round ``last``


@dataclass(frozen=True)
class Resume:
    """Where a method resumes: :attr:`start`, at (:attr:`round`, :attr:`step`).

    Attributes:
        state: with :attr:`Start.CHECKPOINT`, the checkpoint's state (its optimizer state
            included); ``None`` otherwise.
        unused_checkpoint: why the method's own Ray checkpoint is not resumed from (``None``
            when it is, or when there is none).
    """

    start: Start
    round: int = 0
    step: int = 0
    state: Optional[TrainState] = None
    unused_checkpoint: Optional[str] = None

    @property
    def ledger_round(self) -> int:
        """With :attr:`Start.LEDGER`: the done round whose adapter training continues from."""
        if self.start is not Start.LEDGER:
            raise ValueError(f"a {self.start.value} start has no ledger round")
        return self.round - 1


def decide_resume(method: str, checkpoint: Optional[TrainState], done_rounds: Iterable[int], num_tasks: int,
                  from_run: bool) -> Resume:
    """Where ``method`` resumes (see the module docstring for the rules).

    Args:
        method: the method about to be trained.
        checkpoint: the state in the fit's latest Ray checkpoint (``None``: no checkpoint); it
            belongs to the method it names (:attr:`TrainState.method`).
        done_rounds: the rounds the ledger records as done for ``method``.
        num_tasks: rounds in the sequence.
        from_run: the run starts from another run's adapter (``cfg.from_checkpoint``).

    Raises:
        ValueError: done rounds out of range or with a gap (the ledger never records those).
    """
    done = sorted(set(done_rounds))
    if done and not (done[0] >= 0 and done[-1] < num_tasks):
        raise ValueError(f"{method}: the ledger's done rounds {done} are outside 0..{num_tasks - 1}")
    if done != list(range(len(done))):
        raise ValueError(f"{method}: the ledger's done rounds {done} have a gap; rounds run in order")
    frontier = len(done)  # the first round not done: training continues there, whatever the checkpoint says
    if frontier == num_tasks:
        return Resume(Start.SKIP, round=frontier)
    unused = None
    if checkpoint is not None and checkpoint.method == method:
        r, s = checkpoint.position
        if r == frontier and (r, s) != (0, 0):
            return Resume(Start.CHECKPOINT, round=r, step=s, state=checkpoint)
        if r < frontier:
            unused = f"Ray checkpoint at round {r} step {s} is behind the ledger (rounds 0..{frontier - 1} done)"
        elif r > frontier:
            unused = (f"Ray checkpoint at round {r} step {s} is past the ledger, which records round {frontier} "
                      "as not done: that round is trained")
    if frontier > 0:
        return Resume(Start.LEDGER, round=frontier, step=0, unused_checkpoint=unused)
    return Resume(Start.FROM_RUN if from_run else Start.FRESH, unused_checkpoint=unused)
