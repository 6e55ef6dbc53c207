"""Evaluation after every round, sharded over the Ray Train workers.

Each worker answers its share (``rows[rank::world]``) of every task's eval split and computes its
share of the generation probe (:mod:`cl_platform.eval.probe`); counts are summed with
``torch.distributed.all_reduce`` so every worker ends with the same accuracies and score.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch
import torch.distributed as dist

from cl_platform.data.task_format import read_task
from cl_platform.eval.accuracy import answer_accuracy
from cl_platform.eval.probe import GenerationProbe, build_probe
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
        batch_size: prompts per generate call.
        earlier_tasks: tasks learned before this run (``cfg.earlier_tasks`` when
            ``cfg.evaluate_earlier``), their rows in ``rows`` too; scored by :func:`evaluate_earlier`.
    """

    tasks: list[str]
    rows: dict[str, list[tuple[list[int], list[int]]]]
    eos_id: Optional[int]
    pad_id: int
    probe: Optional[GenerationProbe] = None
    batch_size: int = 64
    earlier_tasks: list[str] = field(default_factory=list)


def load_eval_set(cfg: SequenceConfig, store: Store, spec: ModalitySpec) -> EvalSet:
    """Every task's eval split (validated on read) and the run's generation probe; with
    ``cfg.evaluate_earlier`` also the eval splits of the lineage's earlier tasks."""
    earlier = list(cfg.earlier_tasks or []) if cfg.evaluate_earlier else []
    rows = {}
    for t in [*cfg.tasks, *earlier]:
        table = read_task(store, t, vocab_size=spec.vocab_size).eval
        rows[t] = list(zip(table.column("prompt_tokens").to_pylist(), table.column("answer_tokens").to_pylist()))
    return EvalSet(tasks=list(cfg.tasks), rows=rows, eos_id=spec.eos_id, pad_id=spec.pad_id,
                   probe=build_probe(cfg.probe, store, spec, cfg.seed), batch_size=cfg.eval_batch_size,
                   earlier_tasks=earlier)


def _all_reduce(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def evaluate(model: torch.nn.Module, es: EvalSet, rank: int = 0, world: int = 1) -> tuple[list[float], Optional[float]]:
    """Accuracy on every task and the generation score, the work split across ranks."""
    counts: list[float] = []
    for task in es.tasks:
        shard = es.rows[task][rank::world]
        if shard:
            r = answer_accuracy(model, shard, batch_size=es.batch_size, eos_token_id=es.eos_id, pad_token_id=es.pad_id)
            counts += [r.correct, r.total]
        else:
            counts += [0.0, 0.0]
    gen = None
    if es.probe is not None:
        counts += list(es.probe.partial(model, rank, world))
    total = _all_reduce(counts)
    accs = [total[2 * i] / total[2 * i + 1] if total[2 * i + 1] else 0.0 for i in range(len(es.tasks))]
    if es.probe is not None:
        gen = es.probe.score(total[-2], total[-1])
    model.train()
    return accs, gen


def evaluate_earlier(model: torch.nn.Module, es: EvalSet, rank: int = 0, world: int = 1) -> dict[str, float]:
    """Accuracy on every earlier task of the lineage (``es.earlier_tasks``), as :func:`evaluate`
    scores a task; ``{}`` when there are none."""
    if not es.earlier_tasks:
        return {}
    accs, _ = evaluate(model, replace(es, tasks=list(es.earlier_tasks), probe=None, earlier_tasks=[]), rank, world)
    return dict(zip(es.earlier_tasks, accs))
