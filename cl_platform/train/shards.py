"""A worker's batches from its Ray Data shards: small shards read once, ahead of need, in memory.

A fit hands every worker one shard per task (``task_<r>``), for methods with a teacher one of
the KD stream (``kd``) and, with replay, the whole train split of every replayed task
(``replay_<task>``, :mod:`cl_platform.train.replay`). :class:`ShardBatches` serves endless
padded batches (or unpadded rows) of any of them:

- A shard of at most ``cache_rows`` rows (known before the fit from the split's manifest) is read
  once per worker process by a background thread, in the order the rounds need them, while the
  worker evaluates the base model and trains the earlier rounds. Every pass over it is then a
  seeded permutation in memory, so every method of the fit sees the same batches for the same
  seed, and a later method reads nothing again.
- A larger shard is streamed from Ray Data on every pass (local shuffle buffer, seeded per pass),
  as :func:`stream_batches` does.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from cl_platform.data.pipeline import pad_collate

# iter_batches size of the background read: large blocks, few round trips
_READ_BATCH = 4096


def as_rows(column: np.ndarray) -> np.ndarray:
    """A batch column as a 1-D array of rows (Ray gives equal-length token lists as one 2-D array)."""
    if column.ndim == 1:
        return column
    rows = np.empty(len(column), dtype=object)
    rows[:] = list(column)
    return rows


def shard_rows(total_rows: int, world_size: int) -> int:
    """The most rows one worker's shard of a ``total_rows`` dataset can hold."""
    return -(-int(total_rows) // max(1, int(world_size)))


def stream_rows(shard, batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches of rows (numpy columns) streamed from a Ray Data shard, pass after pass
    (local shuffle seeded by seed + pass)."""
    epoch = 0
    while True:
        seen = 0
        for batch in shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=4 * batch_size,
            local_shuffle_seed=seed + epoch, drop_last=False,
        ):
            seen += len(batch["tokens"])
            yield batch
        if seen == 0:
            raise ValueError("empty dataset shard: the task has fewer rows than workers")
        epoch += 1


def stream_batches(shard, batch_size: int, pad_id: int, seed: int) -> Iterator[dict]:
    """Endless padded batches streamed from a Ray Data shard, pass after pass (seed + pass)."""
    return padded(stream_rows(shard, batch_size, seed), pad_id)


def memory_rows(columns: Mapping[str, np.ndarray], batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches of rows held in memory, a fresh seeded permutation every pass."""
    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        raise ValueError("empty dataset shard: the task has fewer rows than workers")
    rng = np.random.default_rng([seed, 0xCAC4E])
    while True:
        order = rng.permutation(n)
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            yield {k: v[idx] for k, v in columns.items()}


def memory_batches(columns: Mapping[str, np.ndarray], batch_size: int, pad_id: int, seed: int) -> Iterator[dict]:
    """Endless padded batches over rows held in memory, a fresh seeded permutation every pass."""
    return padded(memory_rows(columns, batch_size, seed), pad_id)


def padded(rows: Iterator[Mapping[str, np.ndarray]], pad_id: int) -> Iterator[dict]:
    """:func:`~cl_platform.data.pipeline.pad_collate` of every batch of ``rows``."""
    for batch in rows:
        yield pad_collate(batch, pad_id)


def read_shard(shard) -> dict[str, np.ndarray]:
    """Every row of a shard (one pass) as column arrays of rows."""
    parts: list[dict[str, np.ndarray]] = []
    for batch in shard.iter_batches(batch_size=_READ_BATCH, batch_format="numpy", drop_last=False):
        if len(batch["tokens"]):
            parts.append(batch)
    if not parts:
        return {}
    return {k: np.concatenate([as_rows(p[k]) for p in parts]) for k in parts[0]}


class ShardBatches:
    """Batches of one worker's dataset shards for a whole fit.

    Args:
        shards: dataset name -> the worker's ``DataIterator`` (``ray.train.get_dataset_shard``).
        rows: dataset name -> rows of the whole dataset (all workers).
        world_size: workers in the fit.
        cache_rows: shards of at most this many rows are read once and kept in memory
            (0: every shard is streamed on every pass).
        pad_id: padding token id.
        whole: datasets every worker reads whole (not split between the workers: the replay sources).
    """

    def __init__(self, shards: Mapping[str, Any], rows: Mapping[str, int], world_size: int, cache_rows: int,
                 pad_id: int, whole: Iterable[str] = ()) -> None:
        self._shards = dict(shards)
        self._pad_id = pad_id
        whole = set(whole)
        self._small = {n for n in self._shards
                       if 0 < shard_rows(rows.get(n, 0), 1 if n in whole else world_size) <= cache_rows}
        self._ready = {n: threading.Event() for n in self._small}
        self._data: dict[str, dict[str, np.ndarray]] = {}
        self._errors: dict[str, BaseException] = {}
        self._thread: threading.Thread | None = None

    def is_cached(self, name: str) -> bool:
        """True if ``name`` is read once and served from memory."""
        return name in self._small

    def start(self, order: Iterable[str]) -> None:
        """Start reading the small shards, in ``order`` first (then any others), in the background."""
        if self._thread is not None:
            return
        order = [n for n in dict.fromkeys(list(order) + sorted(self._small)) if n in self._small]

        def read_all() -> None:
            for name in order:
                try:
                    self._data[name] = read_shard(self._shards[name])
                except BaseException as e:  # noqa: BLE001 - handed to the thread that needs the shard
                    self._errors[name] = e
                finally:
                    self._ready[name].set()

        self._thread = threading.Thread(target=read_all, name="shard-prefetch", daemon=True)
        self._thread.start()

    def batches(self, name: str, batch_size: int, seed: int) -> Iterator[dict]:
        """Endless padded batches of shard ``name``; passes are seeded from ``seed``."""
        return padded(self.rows(name, batch_size, seed), self._pad_id)

    def rows(self, name: str, batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
        """Endless batches of rows (numpy columns) of shard ``name``; passes are seeded from ``seed``."""
        if name not in self._small:
            return stream_rows(self._shard(name), batch_size, seed)
        return memory_rows(self._cached(name), batch_size, seed)

    def one_pass(self, name: str) -> Iterable[Mapping[str, np.ndarray]]:
        """Every row of shard ``name`` once, in batches (from memory when it is cached)."""
        if name not in self._small:
            return self._shard(name).iter_batches(batch_size=_READ_BATCH, batch_format="numpy", drop_last=False)
        return [self._cached(name)]

    def _shard(self, name: str):
        if name not in self._shards:
            raise KeyError(f"no dataset shard {name!r} in this fit (have {sorted(self._shards)})")
        return self._shards[name]

    def _cached(self, name: str) -> dict[str, np.ndarray]:
        self._shard(name)
        self.start([name])
        self._ready[name].wait()
        if name in self._errors:
            raise RuntimeError(f"reading dataset shard {name!r} failed: {self._errors[name]}") from self._errors[name]
        return self._data[name]
