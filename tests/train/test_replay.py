"""Replay: batch composition, pools capped per task and chosen by seed and task name, eval rows
never replayed, no replay identical to today's batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cl_platform.data.pipeline import pad_collate
from cl_platform.train.replay import (
    Pool, compose, describe, earlier_tasks_of, fit_replay_tasks, mixed_batches, replay_batches, replay_count, replay_sources,
    row_keys, select_pool,
)
from cl_platform.train.shards import memory_rows


def _split(task_id: int, n: int, *, offset: int = 0, batch: int = 7) -> list[dict[str, np.ndarray]]:
    """A task's train split as Ray would deliver it: batches of rows ``[task, i, i+1, ..]`` whose
    second token identifies the row (varying lengths, so tokens come as object arrays)."""
    rows = [np.array([task_id, offset + i] + [offset + i] * (i % 3), dtype=np.int32) for i in range(n)]
    out = []
    for lo in range(0, n, batch):
        tokens = np.empty(len(rows[lo : lo + batch]), dtype=object)
        tokens[:] = rows[lo : lo + batch]
        out.append({"tokens": tokens, "answer_start": np.ones(len(tokens), dtype=np.int32),
                    "length": np.array([len(t) for t in tokens], dtype=np.int32)})
    return out


def _ids(columns) -> list[int]:
    return [int(t[1]) for t in columns["tokens"]]


@pytest.mark.parametrize("fraction, batch_size, expected", [
    (0.0, 16, 0), (0.5, 16, 8), (0.25, 16, 4), (0.3, 10, 3), (0.2, 8, 2), (0.1, 4, 0), (0.9, 2, 1), (0.99, 16, 15),
    (0.6, 1, 0),
])
def test_replay_count_is_rounded_and_leaves_a_task_row(fraction, batch_size, expected):
    assert replay_count(fraction, batch_size) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_replay_count_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=f"replay fraction must be >= 0 and < 1, got {fraction!r}"):
        replay_count(fraction, 8)


def test_earlier_tasks_are_the_chain_then_this_runs_rounds():
    assert earlier_tasks_of(None, ["a", "b", "c"], 0) == []
    assert earlier_tasks_of(None, ["a", "b", "c"], 2) == ["a", "b"]
    assert earlier_tasks_of(["p", "q"], ["a", "b"], 0) == ["p", "q"]
    assert earlier_tasks_of(["p", "q"], ["a", "b"], 1) == ["p", "q", "a"]
    assert earlier_tasks_of(["p", "a"], ["a", "b"], 0) == ["p"]  # a task learned again: not its own replay
    assert replay_sources(["p"], ["a", "b", "c"]) == ["p", "a", "b"]
    assert replay_sources(None, ["a"]) == []


@pytest.mark.parametrize("fraction, batch_size", [(0.5, 16), (0.25, 8), (0.3, 10), (0.9, 4)])
def test_every_batch_holds_exactly_the_fraction_of_replayed_rows(fraction, batch_size):
    count = replay_count(fraction, batch_size)
    current = {k: np.concatenate([b[k] for b in _split(0, 40)]) for k in ("tokens", "answer_start")}
    pools = [select_pool(_split(1, 30, offset=1000), "p", 12, seed=0), select_pool(_split(2, 5, offset=2000), "q", 12, seed=0)]
    batches = list(itertools.islice(mixed_batches(memory_rows(current, batch_size - count, seed=1),
                                                  replay_batches(pools, count, seed=2), pad_id=0), 30))
    n_pool = len(pools[0]) + len(pools[1])
    assert n_pool == 17
    seen = []
    for b in batches:
        ids = b["input_ids"][:, 1].tolist()
        task = b["input_ids"][:, 0].tolist()
        n_current = sum(t == 0 for t in task)
        assert len(ids) - n_current == count  # exactly count rows replayed, every batch
        assert n_current == min(batch_size - count, len(ids) - count) and n_current >= 1
        assert task[:n_current] == [0] * n_current and all(t in (1, 2) for t in task[n_current:])  # current first
        seen += ids[n_current:]
    # the replayed rows walk the pools' union in whole permutations
    union = sorted(_ids(pools[0].columns) + _ids(pools[1].columns))
    full = len(seen) // n_pool
    for k in range(full):
        assert sorted(seen[k * n_pool : (k + 1) * n_pool]) == union


def test_compose_pads_labels_from_each_rows_answer_start():
    cur = {"tokens": np.array([[5, 6, 7]], dtype=np.int32), "answer_start": np.array([2], dtype=np.int32)}
    rep = {"tokens": np.array([np.array([8, 9], dtype=np.int32)], dtype=object), "answer_start": np.array([1])}
    b = pad_collate(compose(cur, rep), pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert b["labels"].tolist() == [[-100, -100, 7], [-100, 9, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("per_task, n", [(1, 30), (10, 30), (29, 30), (30, 30), (50, 30), (100, 3)])
def test_a_pool_never_exceeds_its_cap_and_a_small_task_gives_every_row(per_task, n):
    pool = select_pool(_split(1, n), "p", per_task, seed=0)
    ids = _ids(pool.columns)
    assert len(pool) == len(ids) == len(set(ids)) == min(per_task, n)
    assert set(ids) <= set(range(n))
    if per_task >= n:
        assert sorted(ids) == list(range(n))
    assert all(np.diff(pool.keys.astype(np.float64)) >= 0)  # kept sorted by key


def test_the_pool_is_the_rows_with_the_smallest_keys_whatever_the_read_order():
    batches = _split(1, 40)
    rows = {k: np.concatenate([b[k] for b in batches]) for k in ("tokens", "answer_start")}
    keys = row_keys(rows["tokens"], rows["answer_start"], 5, "p")
    expected = sorted(int(t[1]) for t in rows["tokens"][np.argsort(keys)[:9]])
    a = select_pool(batches, "p", 9, seed=5)
    shuffled = [{k: v[::-1] for k, v in b.items()} for b in reversed(_split(1, 40, batch=3))]  # other blocks, order
    b = select_pool(shuffled, "p", 9, seed=5)
    assert sorted(_ids(a.columns)) == expected and _ids(a.columns) == _ids(b.columns)


def test_pools_follow_seed_and_task_name_only():
    def ids(task, seed, n=200):
        return _ids(select_pool(_split(1, n), task, 20, seed).columns)

    same = ids("p", 0)
    assert ids("p", 0) == same  # the same pool in every round, every run of a lineage
    assert set(ids("p", 1)) != set(same)  # another seed: another pool
    assert set(ids("q", 0)) != set(same)  # another task name: another pool
    # chance-level overlap between two seeds' pools of 20 out of 200 rows (expected 2 rows)
    assert len(set(ids("p", 1)) & set(same)) < 10


def test_eval_rows_never_enter_replay(tmp_path):
    """A tiny task in the store format whose eval rows (prompt + answer) are distinct from every
    train row: the pool selected from the files the replay dataset reads (the train split's, as
    :func:`~cl_platform.data.pipeline.train_dataset` lists them) holds every train row and no eval row."""
    import pyarrow.parquet as pq

    from cl_platform.data.pipeline import _split_paths, prepare_rows
    from cl_platform.data.task_format import write_task
    from cl_platform.store import Store

    store = Store(str(tmp_path))
    train = [[3, 4, 10 + i, 5] for i in range(12)]
    evals = [([3, 4, 50 + i], [5]) for i in range(6)]
    write_task(store, "tiny", {"tokens": train, "answer_start": [3] * len(train)},
               {"prompt_tokens": [p for p, _ in evals], "answer_tokens": [a for _, a in evals]},
               spec_id="test", vocab_size=64, rows_per_file=5)
    paths, fs = _split_paths(store, "tiny", "task", "train")
    assert len(paths) == 3 and all("/train/" in p for p in paths)
    batches = [prepare_rows(pq.read_table(p, filesystem=fs, columns=["tokens", "answer_start"]), [[60, 64]])
               for p in paths]
    pool = select_pool(({c: b.column(c).to_numpy(zero_copy_only=False) for c in b.column_names} for b in batches),
                       "tiny", 100, seed=0)
    replayed = {tuple(int(x) for x in t) for t in pool.columns["tokens"]}
    assert replayed == {tuple(t) for t in train}
    assert not replayed & {tuple(p + a) for p, a in evals}


def test_no_replay_reads_nothing_more_and_gives_todays_batches():
    """f = 0 (or a fraction that rounds to no row) adds no dataset to the fit, and the round's batches
    are the task's own: a seeded permutation per pass, as before replay existed (written out here)."""
    from cl_platform.train.shards import memory_batches

    assert fit_replay_tasks(0.0, 16, ["p"], ["a", "b"]) == []
    assert fit_replay_tasks(0.02, 16, ["p"], ["a", "b"]) == []
    assert fit_replay_tasks(0.5, 16, ["p"], ["a", "b"]) == ["p", "a"]
    columns = {k: np.concatenate([b[k] for b in _split(0, 23)]) for k in ("tokens", "answer_start")}
    rng, expected = np.random.default_rng([4, 0xCAC4E]), []
    while len(expected) < 12:
        order = rng.permutation(23)
        expected += [pad_collate({k: v[order[lo : lo + 5]] for k, v in columns.items()}, 0) for lo in range(0, 23, 5)]
    got = list(itertools.islice(memory_batches(columns, 5, pad_id=0, seed=4), 12))
    for x, y in zip(got, expected):
        assert x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)


def test_bad_pool_and_batch_arguments_are_refused():
    with pytest.raises(ValueError, match="replay rows per task must be >= 1, got 0"):
        select_pool(_split(1, 3), "p", 0, seed=0)
    with pytest.raises(ValueError, match="replay pool of 'p': its train split has no rows"):
        select_pool([], "p", 3, seed=0)
    with pytest.raises(ValueError, match="batch lacks column"):
        select_pool([{"tokens": np.zeros((2, 2))}], "p", 3, seed=0)
    with pytest.raises(ValueError, match="at least one pool"):
        next(replay_batches([], 2, seed=0))


def test_describe_names_counts_and_tasks():
    pools = [Pool("parity", {}, np.zeros(64, dtype=np.uint64)), Pool("compare", {}, np.zeros(5, dtype=np.uint64))]
    assert describe(pools, 8, 16) == "replay: 8 of 16 rows per batch from parity (64 rows), compare (5 rows)"
