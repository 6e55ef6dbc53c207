"""Evaluation after every round, sharded over the Ray Train workers.

Each worker answers its share (``rows[rank::world]``) of every task's eval split and generates its
share of the generation probe; counts are summed with ``torch.distributed.all_reduce`` so every
worker ends with the same accuracies and score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from cl_platform.eval.accuracy import answer_accuracy


@dataclass
class EvalSet:
    """What is evaluated after each round.

    Attributes:
        tasks: task names (all tasks of the sequence, seen and not yet seen).
        rows: per task, ``(prompt_tokens, answer_tokens)`` rows.
        eos_id, pad_id: special ids of the vocabulary.
        judge: image judge (``None``: no generation score).
        probe_digits: requested digits of the generation probe.
        seed: sampling seed of the probe.
    """

    tasks: list[str]
    rows: dict[str, list[tuple[list[int], list[int]]]]
    eos_id: int
    pad_id: int
    judge: object = None
    probe_digits: Optional[Sequence[int]] = None
    seed: int = 0
    batch_size: int = 64


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
    if es.judge is not None and es.probe_digits:
        from cl_platform.eval.generation import generate_images

        digits = list(es.probe_digits)[rank::world]
        if digits:
            images = generate_images(model, digits, seed=es.seed * 1000 + rank)
            hits = float((np.asarray(es.judge.predict(images)) == np.asarray(digits)).sum())
            counts += [hits, float(len(digits))]
        else:
            counts += [0.0, 0.0]
    total = _all_reduce(counts)
    accs = [total[2 * i] / total[2 * i + 1] if total[2 * i + 1] else 0.0 for i in range(len(es.tasks))]
    if es.judge is not None and es.probe_digits:
        hits, n = total[-2], total[-1]
        gen = hits / n if n else 0.0
    model.train()
    return accs, gen
