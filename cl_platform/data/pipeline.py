"""Ray Data pipelines: task splits and generation streams from the store into training workers.

Each split is read with ``ray.data.read_parquet`` over the store's pyarrow filesystem (S3 with the
store's endpoint and credentials, or the local filesystem), prepared with vectorised
``map_batches`` (lengths, modality counts, row ids) and streamed into the workers through
``ray.train.get_dataset_shard(...)``; :func:`pad_collate` pads a batch into tensors.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cl_platform.data.task_format import dataset_dir, read_manifest
from cl_platform.store import Store

IGNORE_INDEX = -100


def _split_paths(store: Store, name: str, kind: str, split: str) -> tuple[list[str], Any]:
    """The split's data files as the manifest lists them, every path checked
    (:func:`~cl_platform.data.task_format.read_manifest`: no ``..``, absolute or odd path reaches
    the filesystem), and the filesystem to read them with."""
    fs, root = store.pyarrow_filesystem()
    manifest = read_manifest(store, name, kind=kind)
    files = sorted(f for f in manifest["files"] if f.startswith(split + "/"))
    if not files:
        raise ValueError(f"{kind} {name!r}: manifest lists no files for split {split!r}")
    return [f"{root.rstrip('/')}/{dataset_dir(name, kind)}/{f}" for f in files], fs


def _image_counts(tokens: pa.ListArray, image_token_ranges: Sequence[Sequence[int]]) -> np.ndarray:
    flat = np.asarray(tokens.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    is_img = np.zeros(flat.shape, dtype=np.int64)
    for lo, hi in image_token_ranges:
        is_img |= ((flat >= lo) & (flat < hi)).astype(np.int64)
    offsets = np.asarray(tokens.offsets.to_numpy(), dtype=np.int64)
    csum = np.concatenate([[0], np.cumsum(is_img)])
    return (csum[offsets[1:]] - csum[offsets[:-1]]).astype(np.int32)


def prepare_rows(batch: pa.Table, image_token_ranges: Sequence[Sequence[int]]) -> pa.Table:
    """Vectorised per-batch preparation: ``length`` and ``n_image`` (image tokens per row)."""
    tokens = batch.column("tokens").combine_chunks()
    lengths = pc.list_value_length(tokens).cast(pa.int32())
    batch = batch.append_column("length", lengths)
    return batch.append_column("n_image", pa.array(_image_counts(tokens, image_token_ranges), pa.int32()))


def configure_data_context() -> None:
    """Set the current Ray Data context for the small, many-times-read splits of a sequence.

    Progress bars are off (the training loop prints its own progress). Parquet is read through
    the file-based datasource rather than Ray 2.60's DataSourceV2 default, whose listing stage
    starts a pool of footer-reader actors (32 by default) on every execution: about 3.5 s for a
    1,000-row split on a 2-core machine, against 0.2 s here, and those actor start-ups compete
    with the training worker for the cores. Datasets capture the context when they are created,
    so call this before building them.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.use_datasource_v2 = False


def train_dataset(store: Store, task: str, image_token_ranges: Sequence[Sequence[int]]):
    """The train split of ``task`` as a Ray dataset (``tokens``, ``answer_start``, ``length``, ``n_image``)."""
    import ray.data

    paths, fs = _split_paths(store, task, "task", "train")
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=["tokens", "answer_start"])
    return ds.map_batches(prepare_rows, batch_format="pyarrow", fn_kwargs={"image_token_ranges": image_token_ranges})


def stream_dataset(table: pa.Table, image_token_ranges: Sequence[Sequence[int]]):
    """A generation stream (as :func:`~cl_platform.data.task_format.read_stream` loaded it, in
    canonical file order) as a Ray dataset with a ``row_id`` column: the row's index in that order,
    which is also its row in the teacher cache."""
    import ray.data

    cols = [c for c in ("tokens", "prompt_len") if c in table.column_names]
    table = table.select(cols).append_column("row_id", pa.array(np.arange(table.num_rows, dtype=np.int32)))
    return ray.data.from_arrow(table).map_batches(
        prepare_rows, batch_format="pyarrow", fn_kwargs={"image_token_ranges": image_token_ranges}
    )


def pad_collate(batch: dict[str, np.ndarray], pad_id: int) -> dict[str, Any]:
    """Pad a numpy batch of ``tokens`` (+ ``answer_start``) rows into torch tensors.

    Returns ``input_ids``, ``attention_mask`` and, when ``answer_start`` is present, ``labels``
    (the token on answer positions, ``-100`` elsewhere); ``row_id`` and ``prompt_len`` are passed
    through as tensors when present.
    """
    import torch

    rows = batch["tokens"]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max()) if len(rows) else 0
    pos = np.arange(width)[None, :]
    valid = pos < lengths[:, None]
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    ids[valid] = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if len(rows) else []
    out: dict[str, Any] = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(valid.astype(np.int64)),
    }
    if "answer_start" in batch:
        start = np.asarray(batch["answer_start"], dtype=np.int64)[:, None]
        labels = np.where(valid & (pos >= start), ids, IGNORE_INDEX)
        out["labels"] = torch.from_numpy(labels)
    for key in ("row_id", "prompt_len"):
        if key in batch:
            out[key] = torch.from_numpy(np.asarray(batch[key], dtype=np.int64))
    return out
