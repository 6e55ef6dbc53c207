"""Build a teacher cache as a Ray Data batch-inference job, never on the driver.

The KD stream becomes a Ray dataset with a ``row_id`` column (the row's index, which is also how
the workers ask for its targets); ``map_batches`` runs a pool of :class:`TeacherActor` actors,
each loading the frozen base once, with ``num_gpus`` per actor, and each batch of
``rows_per_shard`` rows becomes one shard written to the store by the actor that computed it. The
driver only collects the shards' small descriptions and writes the index last
(:func:`~cl_platform.methods.teacher_cache.write_sharded_index`): a build that dies leaves no
index, and a later run builds again.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from cl_platform.methods.teacher_cache import ShardedTeacherCache, compute_teacher_cache, shard_name, write_sharded_index
from cl_platform.store import Store


class TeacherActor:
    """Loads the frozen base once and turns batches of stream rows into stored shards."""

    def __init__(self, store_url: str, model_uri: str, prefix: str, pad_id: int, k: int, temperature: float, key: str,
                 batch_size: int, precision: str = "fp32") -> None:
        import torch

        from cl_platform.models.chameleon import load_model

        self.store = Store(store_url)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # as the run's frozen base
        self.model = load_model(model_uri, dtype=dtype).to(self.device).eval()
        self.prefix, self.pad_id, self.k, self.temperature, self.key = prefix, pad_id, k, temperature, key
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.column("tokens").to_pylist()
        row_ids = [int(r) for r in batch.column("row_id").to_pylist()]
        cache = compute_teacher_cache(self.model, rows, pad_id=self.pad_id, k=self.k, temperature=self.temperature,
                                      key=self.key, batch_size=self.batch_size, device=self.device)
        data = cache.to_bytes()
        name = shard_name(min(row_ids), len(row_ids))
        self.store.write_bytes(f"{self.prefix}/{name}", data)
        return pa.table({"file": [name], "row_ids": [row_ids], "positions": [int(cache.lengths.sum())],
                         "bytes": [len(data)]})


def build_teacher_cache(store: Store, model_uri: str, tokens: pa.ChunkedArray | pa.Array, *, prefix: str, pad_id: int,
                        k: int, temperature: float, key: str, actors: int = 1, gpus_per_actor: float = 0.0,
                        cpus_per_actor: float = 1.0, rows_per_shard: int = 256, batch_size: int = 8,
                        precision: str = "fp32", log: Callable[[str], None] = print) -> ShardedTeacherCache:
    """Compute the cache of the stream ``tokens`` (its rows in stream order) under ``prefix``.

    Needs a running Ray (the caller's). ``actors`` actors with ``gpus_per_actor`` GPUs and
    ``cpus_per_actor`` CPUs each; ``rows_per_shard`` rows per shard (one ``map_batches`` batch);
    ``batch_size`` rows per forward pass inside an actor; ``precision`` ``bf16`` loads the teacher in
    bfloat16, as the run's frozen base. The stream is cut into one block per shard, so the actors
    share the shards.
    """
    import ray.data

    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    n = len(tokens)
    table = pa.table({"tokens": tokens, "row_id": pa.array(np.arange(n, dtype=np.int64))})
    t0 = time.time()
    blocks = [table.slice(start, rows_per_shard) for start in range(0, n, rows_per_shard)]
    ds = ray.data.from_arrow(blocks).map_batches(
        TeacherActor, batch_size=rows_per_shard, batch_format="pyarrow", concurrency=actors,
        num_gpus=gpus_per_actor or None, num_cpus=cpus_per_actor,
        fn_constructor_kwargs={"store_url": store.url, "model_uri": model_uri, "prefix": prefix, "pad_id": pad_id,
                               "k": k, "temperature": temperature, "key": key, "batch_size": batch_size,
                               "precision": precision},
    )
    shards = ds.take_all()
    index = write_sharded_index(store, prefix, [{"file": s["file"], "row_ids": [int(r) for r in s["row_ids"]],
                                                 "positions": int(s["positions"]), "bytes": int(s["bytes"])}
                                                for s in shards], k=k, temperature=temperature, key=key)
    log(f"teacher cache: {n} rows, top-{k}, {len(shards)} shards, {index['bytes'] / 2**20:.1f} MiB, built by "
        f"{actors} actor(s) x {gpus_per_actor:g} GPU in {time.time() - t0:.1f}s -> {store.uri(prefix)}")
    return ShardedTeacherCache.open(store, prefix, k=k, temperature=temperature, key=key)


__all__ = ["TeacherActor", "build_teacher_cache"]
