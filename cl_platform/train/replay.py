"""Replay: batches of a round that mix the current task's rows with rows of the tasks learned before.

With ``replay_fraction`` f > 0, each training batch of ``batch_size`` B holds
:func:`replay_count` ``(f, B)`` rows drawn from the *pools* of the tasks learned before the round
(:func:`earlier_tasks_of`: the ``--from-run`` chain's tasks, then this run's earlier rounds), the
rest from the current task.

A task's pool is a fixed set of at most ``replay_per_task`` rows of its train split (eval rows are
never read). Every row gets a key, a 64-bit hash of the run's seed, the task's name and the row's
content (:func:`row_keys`); the pool is the rows with the smallest keys (:class:`PoolSelector`).
The pool is therefore a function of the seed, the task and its rows only: the same in every
round, in every run of a lineage and whatever order or blocks Ray Data delivers the rows in.
Pool rows are kept sorted by key, and the replay rows of a round are drawn from the union of its
pools (:func:`replay_batches`) in seeded permutations.

Everything here is pure (numpy columns in, numpy columns out); the worker feeds it from its Ray
Data shards (:mod:`cl_platform.train.shards`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from cl_platform.data.pipeline import pad_collate
from cl_platform.train.shards import as_rows

#: The columns a pool keeps (those :func:`~cl_platform.data.pipeline.pad_collate` reads for training).
POOL_COLUMNS = ("tokens", "answer_start")

#: Prefix of the fit's dataset of one task's train split read for replay (``replay_<task>``).
DATASET_PREFIX = "replay_"


def dataset_name(task: str) -> str:
    """The fit's dataset name of ``task``'s train split as a replay source."""
    return DATASET_PREFIX + task


def replay_count(fraction: float, batch_size: int) -> int:
    """Rows of a batch taken from the replay pools: ``round(fraction * batch_size)``, at most
    ``batch_size - 1`` (every batch keeps at least one row of the current task)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"replay fraction must be >= 0 and < 1, got {fraction!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    return min(int(round(fraction * batch_size)), batch_size - 1)


def earlier_tasks_of(earlier: Optional[Sequence[str]], tasks: Sequence[str], r: int) -> list[str]:
    """The tasks learned before round ``r``: ``earlier`` (the ``--from-run`` chain's, oldest first),
    then ``tasks[:r]``; each once, the round's own task left out."""
    return [t for t in dict.fromkeys(list(earlier or []) + list(tasks[:r])) if t != tasks[r]]


def replay_sources(earlier: Optional[Sequence[str]], tasks: Sequence[str]) -> list[str]:
    """Every task some round of the run replays (the train splits a fit reads for replay)."""
    return list(dict.fromkeys(t for r in range(len(tasks)) for t in earlier_tasks_of(earlier, tasks, r)))


def fit_replay_tasks(fraction: float, batch_size: int, earlier: Optional[Sequence[str]], tasks: Sequence[str]) -> list[str]:
    """The train splits a fit reads for replay: :func:`replay_sources`, none when no batch replays
    a row (:func:`replay_count` 0, e.g. ``fraction`` 0)."""
    return replay_sources(earlier, tasks) if replay_count(fraction, batch_size) else []


def row_keys(tokens: np.ndarray, answer_start: np.ndarray, seed: int, task: str) -> np.ndarray:
    """The uint64 key of each row: a hash of (``seed``, ``task``, the row's tokens and answer start)."""
    salt = f"{int(seed)}:{task}:".encode()
    keys = np.empty(len(tokens), dtype=np.uint64)
    for i, (row, start) in enumerate(zip(tokens, answer_start)):
        h = hashlib.blake2b(salt, digest_size=8)
        h.update(np.asarray(row, dtype=np.int32).tobytes())
        h.update(int(start).to_bytes(8, "little", signed=True))
        keys[i] = int.from_bytes(h.digest(), "little")
    return keys


@dataclass
class Pool:
    """One task's replay rows (``tokens``, ``answer_start``), sorted by key."""

    task: str
    columns: dict[str, np.ndarray]
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


class PoolSelector:
    """The ``per_task`` rows of ``task`` with the smallest keys, over batches fed in any order and
    size (memory: the pool plus one batch)."""

    def __init__(self, task: str, per_task: int, seed: int) -> None:
        if per_task < 1:
            raise ValueError(f"replay rows per task must be >= 1, got {per_task!r}")
        self.task, self.per_task, self.seed = task, int(per_task), int(seed)
        self._cols = {"tokens": np.empty(0, dtype=object), "answer_start": np.empty(0, dtype=np.int64)}
        self._keys = np.empty(0, dtype=np.uint64)

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        """Offer the rows of ``batch`` (a train-split batch with ``tokens`` and ``answer_start``)."""
        missing = [c for c in POOL_COLUMNS if c not in batch]
        if missing:
            raise ValueError(f"replay pool of {self.task!r}: batch lacks column(s) {missing} (has {sorted(batch)})")
        if not len(batch["tokens"]):
            return
        cols = {"tokens": _rows(batch["tokens"]), "answer_start": _starts(batch["answer_start"])}
        keys = np.concatenate([self._keys, row_keys(cols["tokens"], cols["answer_start"], self.seed, self.task)])
        merged = {c: np.concatenate([self._cols[c], cols[c]]) for c in POOL_COLUMNS}
        # smallest keys first; equal keys are equal rows, so which of them is kept does not matter
        order = np.argsort(keys, kind="stable")[: self.per_task]
        self._keys, self._cols = keys[order], {c: v[order] for c, v in merged.items()}

    def pool(self) -> Pool:
        if not len(self._keys):
            raise ValueError(f"replay pool of {self.task!r}: its train split has no rows")
        return Pool(self.task, {c: v.copy() for c, v in self._cols.items()}, self._keys.copy())


def select_pool(batches: Iterable[Mapping[str, np.ndarray]], task: str, per_task: int, seed: int) -> Pool:
    """``task``'s pool: the ``per_task`` rows of ``batches`` (its train split) with the smallest keys."""
    selector = PoolSelector(task, per_task, seed)
    for batch in batches:
        selector.add(batch)
    return selector.pool()


def replay_batches(pools: Sequence[Pool], count: int, seed: int, *, worker: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches of exactly ``count`` rows from the union of ``pools`` (in their order):
    successive permutations of the union seeded by ``seed`` and the ``worker``'s rank, a batch
    continuing into the next permutation (rows repeat inside a batch only when the pools hold
    fewer than ``count`` rows)."""
    if count < 1:
        raise ValueError(f"replay rows per batch must be >= 1, got {count!r}")
    if not pools:
        raise ValueError("replay needs at least one pool")
    union = {c: np.concatenate([p.columns[c] for p in pools]) for c in POOL_COLUMNS}
    n = len(union["tokens"])
    rng = np.random.default_rng([int(seed), 0x5E9, int(worker)])
    pending = np.empty(0, dtype=np.int64)
    while True:
        while len(pending) < count:
            pending = np.concatenate([pending, rng.permutation(n)])
        idx, pending = pending[:count], pending[count:]
        yield {c: v[idx] for c, v in union.items()}


def compose(current: Mapping[str, np.ndarray], replay: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One batch's rows: the current task's rows, then the replayed ones (the pool columns)."""
    return {"tokens": np.concatenate([_rows(current["tokens"]), _rows(replay["tokens"])]),
            "answer_start": np.concatenate([_starts(current["answer_start"]), _starts(replay["answer_start"])])}


def _rows(tokens) -> np.ndarray:
    return as_rows(np.asarray(tokens))


def _starts(answer_start) -> np.ndarray:
    return np.asarray(answer_start, dtype=np.int64)


def mixed_batches(current: Iterator[Mapping[str, np.ndarray]], replay: Iterator[Mapping[str, np.ndarray]],
                  pad_id: int) -> Iterator[dict]:
    """Endless padded batches, each :func:`compose` of the next current-task and replay rows."""
    for rows in current:
        yield pad_collate(compose(rows, next(replay)), pad_id)


def describe(pools: Sequence[Pool], count: int, batch_size: int) -> str:
    """The round's replay line: ``replay: 8 of 16 rows per batch from parity (64 rows), compare (50 rows)``."""
    return (f"replay: {count} of {batch_size} rows per batch from "
            + ", ".join(f"{p.task} ({len(p)} rows)" for p in pools))
