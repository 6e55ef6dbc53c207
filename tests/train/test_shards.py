"""A worker's batches from Ray Data shards: small shards read once in the background and served
from memory, larger ones streamed on every pass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from cl_platform.train.resources import init_ray  # noqa: E402
from cl_platform.train.shards import ShardBatches, memory_batches, shard_rows, stream_batches  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process by another test")
    assert init_ray(num_cpus=2) is True
    try:
        yield
    finally:
        ray.shutdown()


def _dataset(n: int, equal_length: bool):
    import ray.data

    rows = [{"tokens": [i] * (3 if equal_length else 1 + i % 4), "answer_start": 1, "row_id": i} for i in range(n)]
    return ray.data.from_items(rows)


def _passes(batches, n_rows: int, n_passes: int) -> list[list[int]]:
    ids = [int(r) for b in batches for r in b["row_id"]]
    return [ids[k * n_rows : (k + 1) * n_rows] for k in range(n_passes)]


def _check_rows_whole(batches) -> None:
    for b in batches:
        ids = b["input_ids"].numpy()
        assert b["labels"].shape == ids.shape and (b["attention_mask"].sum(1).numpy() >= 1).all()
        for row, rid in zip(ids, b["row_id"].tolist()):  # rows stay whole: tokens are the row's own id
            assert set(row[row != 0].tolist()) <= {rid}


def test_shard_rows_is_the_largest_share():
    assert shard_rows(10, 1) == 10 and shard_rows(10, 3) == 4 and shard_rows(9, 3) == 3 and shard_rows(0, 2) == 0


@pytest.mark.parametrize("equal_length", [False, True])
@pytest.mark.parametrize("cache_rows", [0, 1000])
def test_every_pass_yields_every_row_once(ray_local, cache_rows, equal_length):
    n, bs = 37, 8
    shards = ShardBatches({"task_0": _dataset(n, equal_length).iterator()}, {"task_0": n}, 1, cache_rows, pad_id=0)
    assert shards.is_cached("task_0") == (cache_rows >= n)
    it = shards.batches("task_0", bs, seed=3)
    per_pass = -(-n // bs)
    batches = list(itertools.islice(it, 3 * per_pass))
    passes = _passes(batches, n, 3)
    for p in passes:
        assert sorted(p) == list(range(n))
    assert passes[1] != passes[2]  # reshuffled every pass
    _check_rows_whole(batches)


def test_a_shard_over_the_limit_is_streamed():
    shards = ShardBatches({"task_0": object(), "kd": object()}, {"task_0": 101, "kd": 100}, 2, 50, pad_id=0)
    assert not shards.is_cached("task_0")  # 51 rows per worker
    assert shards.is_cached("kd")  # 50 rows per worker
    whole = ShardBatches({"task_0": object(), "replay_a": object()}, {"task_0": 100, "replay_a": 100}, 2, 50,
                         pad_id=0, whole=["replay_a"])
    assert whole.is_cached("task_0") and not whole.is_cached("replay_a")  # every worker reads replay_a whole


def test_memory_passes_are_seeded_and_every_method_sees_the_same_batches(ray_local):
    shards = ShardBatches({"task_0": _dataset(20, False).iterator()}, {"task_0": 20}, 1, 1000, pad_id=0)
    shards.start(["task_0"])

    def take(seed):  # a later method asks the same shard again: served from memory, same order
        return [b["row_id"].tolist() for b in itertools.islice(shards.batches("task_0", 8, seed), 9)]

    first = take(5)
    assert first == take(5)
    assert first != take(6)


def test_background_read_serves_every_shard_in_the_fit(ray_local):
    sizes = {"task_0": 12, "task_1": 7, "kd": 5}
    shards = ShardBatches({k: _dataset(n, True).iterator() for k, n in sizes.items()}, sizes, 1, 100, pad_id=0)
    shards.start(["task_1"])  # the rest follow
    for name, n in sizes.items():
        batch = next(shards.batches(name, 64, seed=0))
        assert sorted(batch["row_id"].tolist()) == list(range(n))


def test_unknown_shard_is_an_error_naming_it():
    shards = ShardBatches({"task_0": object()}, {"task_0": 3}, 1, 10, pad_id=0)
    with pytest.raises(KeyError, match="task_7"):
        shards.batches("task_7", 4, seed=0)


def test_a_failed_background_read_is_raised_naming_the_shard():
    class Broken:
        def iter_batches(self, **kw):
            raise OSError("disk gone")

    shards = ShardBatches({"task_0": Broken()}, {"task_0": 3}, 1, 10, pad_id=0)
    with pytest.raises(RuntimeError, match="'task_0' failed: disk gone"):
        shards.batches("task_0", 4, seed=0)


def test_empty_shard_is_an_error(ray_local):
    import ray.data

    empty = ray.data.from_items([{"tokens": [1], "answer_start": 1}]).limit(0)
    with pytest.raises(ValueError, match="empty dataset shard"):
        next(stream_batches(empty.iterator(), 4, pad_id=0, seed=0))
    with pytest.raises(ValueError, match="empty dataset shard"):
        next(memory_batches({}, 4, pad_id=0, seed=0))


def test_a_replay_pool_is_the_same_streamed_or_from_memory(ray_local):
    from cl_platform.train.replay import select_pool

    pools = []
    for cache_rows in (0, 1000):
        shards = ShardBatches({"replay_a": _dataset(37, False).iterator()}, {"replay_a": 37}, 2, cache_rows, pad_id=0,
                              whole=["replay_a"])
        pools.append(select_pool(shards.one_pass("replay_a"), "a", 10, seed=3))
    ids = [[int(t[0]) for t in p.columns["tokens"]] for p in pools]
    assert len(ids[0]) == len(set(ids[0])) == 10 and ids[0] == ids[1]
