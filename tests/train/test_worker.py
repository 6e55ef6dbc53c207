"""The worker's batch stream over a Ray Data shard: streamed first pass, in-memory later passes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from cl_platform.train.resources import init_ray  # noqa: E402
from cl_platform.train.worker import _cycle  # noqa: E402


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


@pytest.mark.parametrize("equal_length", [False, True])
@pytest.mark.parametrize("cache_rows", [0, 1000])
def test_every_pass_yields_every_row_once(ray_local, cache_rows, equal_length):
    n, bs = 37, 8
    it = _cycle(_dataset(n, equal_length).iterator(), bs, pad_id=0, seed=3, cache_rows=cache_rows)
    per_pass = -(-n // bs)
    batches = list(itertools.islice(it, 3 * per_pass))
    passes = _passes(batches, n, 3)
    for p in passes:
        assert sorted(p) == list(range(n))
    assert passes[1] != passes[2]  # reshuffled every pass
    for b in batches:
        ids = b["input_ids"].numpy()
        assert b["labels"].shape == ids.shape and (b["attention_mask"].sum(1).numpy() >= 1).all()
        for row, rid in zip(ids, b["row_id"].tolist()):  # rows stay whole: tokens are the row's own id
            assert set(row[row != 0].tolist()) <= {rid}


def test_cached_passes_are_seeded(ray_local):
    def take(seed):
        it = _cycle(_dataset(20, False).iterator(), 8, pad_id=0, seed=seed, cache_rows=1000)
        return [b["row_id"].tolist() for b in itertools.islice(it, 9)][3:]

    assert take(5) == take(5)


def test_empty_shard_is_an_error(ray_local):
    import ray.data

    empty = ray.data.from_items([{"tokens": [1], "answer_start": 1}]).limit(0)
    with pytest.raises(ValueError, match="empty dataset shard"):
        next(_cycle(empty.iterator(), 4, pad_id=0, seed=0, cache_rows=10))
