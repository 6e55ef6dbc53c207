"""The two teacher modes: a cache built by a Ray Data job in shards, and the frozen base online in
the worker. Both must give the same KD loss on the same batch (up to float16 rounding)."""

from __future__ import annotations

import pytest
import torch

from cl_platform.methods.kd import kd_loss, shifted_mask
from cl_platform.methods.teacher import CachedTeacher, OnlineTeacher, choose_teacher_mode, estimate_cache_bytes
from cl_platform.methods.teacher_cache import (
    ShardedTeacherCache, compute_teacher_cache, shard_name, write_sharded_index,
)
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.tiny import TinyModelConfig, build_tiny_model
from cl_platform.store import Store

SPEC = ModalitySpec(spec_id="teacher-test", vocab_size=96, image_code_range=(64, 96), boi_id=4, eoi_id=5, pad_id=0,
                    sep_id=3, image_token_ranges=((64, 96),), eos_id=2)
K, T = 8, 2.0


@pytest.fixture(scope="module")
def peft_model():
    from cl_platform.methods import MethodConfig, get_method

    base = build_tiny_model(SPEC, TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=64, initializer_range=0.3), seed=0)
    model = get_method("mode", MethodConfig(r_text=4, r_image=4, num_experts=2, lora_dropout=0.0)).build(base, SPEC)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(std=0.2)  # adapters that change the outputs
    return model


@pytest.fixture(scope="module")
def stream() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in (9, 5, 12, 7, 10, 6):
        image = torch.randint(64, 96, (n,), generator=g).tolist()
        rows.append([1, 7, 8, 4] + image + [5])
    return rows


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    return ids, mask


def test_online_and_cached_teachers_give_the_same_kd_loss(peft_model, stream):
    cache = compute_teacher_cache(peft_model, stream, pad_id=0, k=K, temperature=T, batch_size=4)
    rows = [4, 0, 2]
    ids, mask = _batch([stream[r] for r in rows])
    peft_model.train()
    student = peft_model(input_ids=ids, attention_mask=mask).logits
    loss_mask = shifted_mask(SPEC.is_image(ids) & mask.bool(), mask)
    cached = kd_loss(student, CachedTeacher(cache).batch_targets(rows, ids, mask, peft_model), loss_mask, T)
    online = kd_loss(student, OnlineTeacher(K).batch_targets(rows, ids, mask, peft_model), loss_mask, T)
    assert peft_model.training  # the online teacher restores the mode
    assert cached.item() > 0.01  # the adapters moved the student away from the teacher
    assert online.item() == pytest.approx(cached.item(), rel=2e-3)  # float16 rounding of the cache
    # the online teacher is the base: with the adapters disabled the loss is zero
    with peft_model.disable_adapter():
        same = peft_model(input_ids=ids, attention_mask=mask).logits
    assert kd_loss(same, OnlineTeacher(K).batch_targets(rows, ids, mask, peft_model), loss_mask, T).item() < 1e-5


def _sharded(store: Store, model, stream, rows_per_shard: int) -> ShardedTeacherCache:
    shards = []
    order = [3, 1, 5, 0, 4, 2]  # shards need not follow the stream order
    for start in range(0, len(order), rows_per_shard):
        row_ids = order[start : start + rows_per_shard]
        part = compute_teacher_cache(model, [stream[r] for r in row_ids], pad_id=0, k=K, temperature=T)
        data = part.to_bytes()
        store.write_bytes(f"cache/t/{shard_name(min(row_ids), len(row_ids))}", data)
        shards.append({"file": shard_name(min(row_ids), len(row_ids)), "row_ids": row_ids,
                       "positions": int(part.lengths.sum()), "bytes": len(data)})
    write_sharded_index(store, "cache/t", shards, k=K, temperature=T, key="k1")
    return ShardedTeacherCache.open(store, "cache/t", k=K, temperature=T, key="k1", max_loaded=1)


def test_a_sharded_cache_serves_the_same_targets(peft_model, stream, tmp_path):
    store = Store(f"file://{tmp_path}/store")
    whole = compute_teacher_cache(peft_model, stream, pad_id=0, k=K, temperature=T)
    sharded = _sharded(store, peft_model, stream, rows_per_shard=2)
    assert len(sharded) == len(stream)
    a, b = whole.targets([5, 0, 3], 12), sharded.targets([5, 0, 3], 12)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.logprobs, b.logprobs)
    assert len(sharded._loaded) == 1  # at most max_loaded shards in memory
    with pytest.raises(ValueError, match="key"):
        ShardedTeacherCache.open(store, "cache/t", key="other")
    with pytest.raises(FileNotFoundError, match="index.json"):
        ShardedTeacherCache.open(store, "cache/none")


def test_the_mode_choice_and_its_reason():
    small = choose_teacher_mode("auto", rows=5000, positions=5000 * 1026, k=8, limit_bytes=2**30)
    assert small.mode == "cached" and "auto" in small.reason and small.cache_bytes == 5000 * 1026 * 8 * 6
    big = choose_teacher_mode("auto", rows=5000, positions=5000 * 1026, k=256, limit_bytes=4 * 2**30)
    assert big.mode == "online" and "> the 4 GiB limit" in big.reason
    assert estimate_cache_bytes(1026, 256) == 1026 * 256 * 6  # ~1.5 MB per Anole row at K=256
    assert choose_teacher_mode("cached", rows=1, positions=10**12, k=256, limit_bytes=0).mode == "cached"
    assert choose_teacher_mode("online", rows=1, positions=1, k=1, limit_bytes=2**40).mode == "online"
    with pytest.raises(ValueError, match="teacher mode 'gpu'"):
        choose_teacher_mode("gpu", rows=1, positions=1, k=1, limit_bytes=1)


def test_the_cache_is_built_by_a_ray_data_job_over_actors(tmp_path, stream):
    """The driver never runs the teacher: actors load the base from the store and write shards."""
    import pyarrow as pa
    import ray

    from cl_platform.models.chameleon import load_model
    from cl_platform.train.teacher_build import build_teacher_cache

    store = Store(f"file://{tmp_path}/store")
    base = build_tiny_model(SPEC, TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=64), seed=3)
    base.save_pretrained(tmp_path / "store" / "models" / "base")
    uri = store.uri("models/base")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never joins another Ray
    try:
        sharded = build_teacher_cache(store, uri, pa.array(stream, pa.list_(pa.int32())), prefix="cache/b", pad_id=0,
                                      k=K, temperature=T, key="kb", actors=2, rows_per_shard=2, log=lambda m: None)
    finally:
        ray.shutdown()
    assert len(sharded.index["shards"]) == 3 and len(sharded) == len(stream)
    direct = compute_teacher_cache(load_model(uri), stream, pad_id=0, k=K, temperature=T)
    got, want = sharded.targets(range(len(stream)), 16), direct.targets(range(len(stream)), 16)
    assert torch.equal(got.ids, want.ids)
    torch.testing.assert_close(got.logprobs.float(), want.logprobs.float(), rtol=0, atol=2e-2)
