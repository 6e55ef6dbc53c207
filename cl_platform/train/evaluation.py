"""Evaluation after every round, sharded over the Ray Train workers.

Each worker evaluates its share (``rows[rank::world]``) of every task's eval split and computes
its share of the generation probe (:mod:`cl_platform.eval.probe`); counts are summed with
``torch.distributed.all_reduce`` so every worker ends with the same accuracies and score.

A task with a closed answer set is scored by one teacher-forced forward per prompt over all its
candidates (:mod:`cl_platform.eval.ranking`), which gives its ranking accuracy and its exact-match
accuracy (greedy decoding produces the answer exactly when the answer's every token is the most
likely one at its position); any other task's exact match is decoded greedily
(:mod:`cl_platform.eval.accuracy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch
import torch.distributed as dist

from cl_platform.data.task_format import read_task
from cl_platform.eval.accuracy import answer_accuracy
from cl_platform.eval.probe import GenerationProbe, build_probe
from cl_platform.eval.ranking import Candidate, candidate_set, ranking_counts
from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store
from cl_platform.train.config import SequenceConfig


@dataclass
class EvalSet:
    """What is evaluated after each round.

    Attributes:
        tasks: task names (all tasks of the sequence, seen and not yet seen).
        rows: per task, ``(prompt_tokens, answer_tokens)`` rows.
        eos_id, pad_id: special ids of the vocabulary (``eos_id`` ``None``: no early stop).
        probe: the generation probe (``None``: no generation score).
        batch_size: prompts per generate call or per ranking forward.
        candidates: per task, its closed answer set in its fixed order (``None`` or absent: the
            task has none, so no ranking accuracy).
        earlier_tasks: tasks learned before this run (``cfg.earlier_tasks`` when
            ``cfg.evaluate_earlier``), their rows in ``rows`` too; scored by :func:`evaluate_earlier`.
    """

    tasks: list[str]
    rows: dict[str, list[tuple[list[int], list[int]]]]
    eos_id: Optional[int]
    pad_id: int
    probe: Optional[GenerationProbe] = None
    batch_size: int = 64
    candidates: dict[str, Optional[list[Candidate]]] = field(default_factory=dict)
    earlier_tasks: list[str] = field(default_factory=list)


@dataclass
class EvalScores:
    """What :func:`evaluate` measures.

    Attributes:
        accuracy: exact-match accuracy on every task.
        generation: the generation score (``None`` without a probe).
        ranking: candidate-ranking accuracy on every task (``None`` for a task without a closed
            answer set).
    """

    accuracy: list[float]
    generation: Optional[float]
    ranking: list[Optional[float]]


def load_eval_set(cfg: SequenceConfig, store: Store, spec: ModalitySpec) -> EvalSet:
    """Every task's eval split (validated on read), its candidate set (from both splits, closed
    up to ``cfg.ranking_max_candidates`` answers) and the run's generation probe; with
    ``cfg.evaluate_earlier`` also those of the lineage's earlier tasks."""
    earlier = list(cfg.earlier_tasks or []) if cfg.evaluate_earlier else []
    rows, candidates = {}, {}
    for t in [*cfg.tasks, *earlier]:
        task = read_task(store, t, vocab_size=spec.vocab_size)
        table = task.eval
        rows[t] = list(zip(table.column("prompt_tokens").to_pylist(), table.column("answer_tokens").to_pylist()))
        candidates[t] = candidate_set(task.train, table, cfg.ranking_max_candidates)
    return EvalSet(tasks=list(cfg.tasks), rows=rows, eos_id=spec.eos_id, pad_id=spec.pad_id,
                   probe=build_probe(cfg.probe, store, spec, cfg.seed), batch_size=cfg.eval_batch_size,
                   candidates=candidates, earlier_tasks=earlier)


def _all_reduce(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def ranked_tasks(es: EvalSet) -> list[str]:
    """The tasks of ``es`` with a closed answer set, in task order."""
    return [t for t in es.tasks if es.candidates.get(t)]


def partial_counts(model: torch.nn.Module, es: EvalSet, rank: int = 0, world: int = 1) -> list[float]:
    """This rank's counts: ``(correct, total)`` per task, then ``(correct, total)`` per task of
    :func:`ranked_tasks`, then the probe's ``(numerator, denominator)``. Summed over the ranks
    they are the counts of the whole eval set (:func:`scores_from_counts`)."""
    ranked = {t: ranking_counts(model, es.rows[t], es.candidates[t], rank=rank, world=world, batch_size=es.batch_size)
              for t in ranked_tasks(es)}
    counts: list[float] = []
    for task in es.tasks:
        shard = es.rows[task][rank::world]
        if task in ranked:  # the same forward says whether greedy decoding answers exactly
            counts += [ranked[task].exact, ranked[task].total]
        elif shard:
            r = answer_accuracy(model, shard, batch_size=es.batch_size, eos_token_id=es.eos_id, pad_token_id=es.pad_id)
            counts += [r.correct, r.total]
        else:
            counts += [0.0, 0.0]
    for rk in ranked.values():
        counts += [rk.correct, rk.total]
    if es.probe is not None:
        counts += list(es.probe.partial(model, rank, world))
    return counts


def scores_from_counts(es: EvalSet, total: list[float]) -> EvalScores:
    """The scores of counts summed over every rank (laid out as :func:`partial_counts` makes them)."""
    ratio = lambda k: total[2 * k] / total[2 * k + 1] if total[2 * k + 1] else 0.0  # noqa: E731
    n = len(es.tasks)
    accs = [ratio(i) for i in range(n)]
    ranked = {t: ratio(n + k) for k, t in enumerate(ranked_tasks(es))}
    gen = es.probe.score(total[-2], total[-1]) if es.probe is not None else None
    return EvalScores(accuracy=accs, generation=gen, ranking=[ranked.get(t) for t in es.tasks])


def evaluate(model: torch.nn.Module, es: EvalSet, rank: int = 0, world: int = 1) -> EvalScores:
    """Accuracy and ranking accuracy on every task and the generation score, the work split across ranks."""
    scores = scores_from_counts(es, _all_reduce(partial_counts(model, es, rank, world)))
    model.train()
    return scores


def evaluate_earlier(model: torch.nn.Module, es: EvalSet, rank: int = 0, world: int = 1) -> dict[str, float]:
    """Accuracy on every earlier task of the lineage (``es.earlier_tasks``), as :func:`evaluate`
    scores a task; ``{}`` when there are none."""
    if not es.earlier_tasks:
        return {}
    scores = evaluate(model, replace(es, tasks=list(es.earlier_tasks), probe=None, earlier_tasks=[]), rank, world)
    return dict(zip(es.earlier_tasks, scores.accuracy))
