"""Teacher cache: computed through disable_adapter, round-trips, and gives the live-teacher loss."""

from __future__ import annotations

import copy
import math

import pytest
import safetensors.torch
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from cl_platform.methods.kd import kd_loss, shifted_mask, teacher_targets_from_logits
from cl_platform.methods.teacher_cache import TeacherCache, cache_key, compute_teacher_cache, tokens_digest

VOCAB, PAD, K, T = 64, 0, 8, 2.0


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(frozen base copy, the same base wrapped with a LoRA adapter whose B weights are non-zero).

    float64, so "cache equals live teacher" can be checked to rounding of the stored dtype.
    """
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        initializer_range=0.5,  # spread the logits: top-K boundaries are not near-ties
    )
    base = LlamaForCausalLM(config).double().eval()
    reference = copy.deepcopy(base)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.3)
    return reference, peft_model


@pytest.fixture(scope="module")
def stream() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = [9, 4, 13, 1, 7, 11, 6]
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _pad(rows: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    attention = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        n = min(len(row), length)
        ids[b, :n] = torch.tensor(row[:n])
        attention[b, :n] = 1
    return ids, attention


def _loss_bound(cache: TeacherCache, teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> float:
    """The bound of the teacher_cache module docstring: T**2 * (eta + (exp(eta) - 1) * M)."""
    unit = 2.0**-11 if cache.logprobs.dtype == torch.float16 else 2.0**-24
    tiny = 2.0**-25 if cache.logprobs.dtype == torch.float16 else 2.0**-150
    live = teacher_targets_from_logits(teacher_logits, K)
    eps = max(live.logprobs[mask].abs().max().item() * unit, tiny)
    eta = 2 * eps / T
    log_pt = torch.log_softmax(live.logprobs / T, -1)
    log_ps = torch.log_softmax(student_logits.gather(-1, live.ids) / T, -1)
    m = (log_pt - log_ps)[mask].abs().max().item()
    return T * T * (eta + math.expm1(eta) * m)


def test_adapter_matters(models, stream) -> None:
    reference, peft_model = models
    ids, attention = _pad(stream[:3], 13)
    with torch.no_grad():
        adapted = peft_model(input_ids=ids, attention_mask=attention).logits
        plain = reference(input_ids=ids, attention_mask=attention).logits
    assert (adapted - plain).abs().max().item() > 1.0
    assert not torch.equal(adapted.topk(K, -1).indices, plain.topk(K, -1).indices)


@pytest.mark.parametrize("logprob_dtype", [torch.float32, torch.float16])
def test_cache_is_the_base_models_top_k(models, stream, logprob_dtype: torch.dtype) -> None:
    reference, peft_model = models
    peft_model.train()
    with torch.no_grad():
        before = peft_model(input_ids=torch.tensor([stream[0]])).logits
    cache = compute_teacher_cache(peft_model, stream, pad_id=PAD, k=K, temperature=T, batch_size=3, logprob_dtype=logprob_dtype)

    assert peft_model.training  # mode restored
    with torch.no_grad():  # adapters are enabled again
        assert torch.equal(peft_model(input_ids=torch.tensor([stream[0]])).logits, before)
    assert len(cache) == len(stream) and cache.lengths.tolist() == [len(r) for r in stream]
    assert cache.ids.dtype == torch.int32 and cache.logprobs.dtype == logprob_dtype
    assert cache.tokens_sha256 == tokens_digest(stream)

    max_len = max(len(r) for r in stream)
    targets = cache.targets(range(len(stream)), max_len)
    for i, row in enumerate(stream):
        with torch.no_grad():  # one row at a time, no padding: the base model alone
            live = teacher_targets_from_logits(reference(input_ids=torch.tensor([row])).logits, K)
        n = len(row)
        assert torch.equal(targets.ids[i, :n].long(), live.ids[0])
        rounded = live.logprobs[0].to(logprob_dtype).double()
        torch.testing.assert_close(targets.logprobs[i, :n].double(), rounded, rtol=0, atol=1e-6 * rounded.abs().max().item())
        assert not targets.ids[i, n:].any() and not targets.logprobs[i, n:].any()  # padding is zeros


@pytest.mark.parametrize("logprob_dtype", [torch.float32, torch.float16])
def test_kd_loss_from_cache_equals_live_teacher(models, stream, tmp_path, logprob_dtype: torch.dtype) -> None:
    reference, peft_model = models
    k_key = cache_key("tiny-llama@seed0", "stream-a", K, T)
    cache = compute_teacher_cache(
        peft_model, stream, pad_id=PAD, k=K, temperature=T, batch_size=4, key=k_key, logprob_dtype=logprob_dtype
    )
    rows = [2, 0, 5, 3]
    length = max(len(stream[r]) for r in rows) + 2  # extra padding past the longest row
    ids, attention = _pad([stream[r] for r in rows], length)
    mask = shifted_mask(attention)
    with torch.no_grad():
        teacher_logits = reference(input_ids=ids, attention_mask=attention).logits
    student_logits = peft_model(input_ids=ids, attention_mask=attention).logits
    live = kd_loss(student_logits, teacher_targets_from_logits(teacher_logits, K), mask, temperature=T)
    assert live.item() > 0.1

    path = tmp_path / "teacher.safetensors"
    cache.save(path)
    loaded = {
        "memory": cache,
        "bytes": TeacherCache.from_bytes(cache.to_bytes(), k=K, temperature=T, key=k_key),
        "file": TeacherCache.load(path, k=K, temperature=T, key=k_key),
    }
    bound = _loss_bound(cache, teacher_logits, student_logits.detach(), mask)
    assert bound < (1e-1 if logprob_dtype == torch.float16 else 1e-5) * live.item()
    for how, c in loaded.items():
        assert torch.equal(c.ids, cache.ids) and torch.equal(c.logprobs, cache.logprobs), how
        from_cache = kd_loss(student_logits, c.targets(rows, length), mask, temperature=T)
        err = abs(from_cache.item() - live.item())
        assert err <= bound, (how, err, bound)
        (g_cache,) = torch.autograd.grad(from_cache, student_logits, retain_graph=True)
        (g_live,) = torch.autograd.grad(live, student_logits, retain_graph=True)
        assert (g_cache - g_live).abs().max().item() <= (1e-2 if logprob_dtype == torch.float16 else 1e-6) * g_live.abs().max().item()
    if logprob_dtype == torch.float32:
        assert err <= 1e-6 * live.item()


def test_targets_truncate_to_a_shorter_length(models, stream) -> None:
    _, peft_model = models
    cache = compute_teacher_cache(peft_model, stream, pad_id=PAD, k=K, temperature=T, batch_size=2)
    full = cache.targets([2, 5], 13)
    short = cache.targets([2, 5], 5)
    assert short.shape == (2, 5, K)
    assert torch.equal(short.ids, full.ids[:, :5]) and torch.equal(short.logprobs, full.logprobs[:, :5])
    with pytest.raises(ValueError, match="row 7 out of range"):
        cache.targets([7], 5)
    with pytest.raises(ValueError, match="length"):
        cache.targets([0], 0)


def test_plain_model_and_tensor_stream(models) -> None:
    reference, _ = models
    tokens = torch.randint(1, VOCAB, (3, 6), generator=torch.Generator().manual_seed(4))
    cache = compute_teacher_cache(reference, tokens, pad_id=PAD, k=K, temperature=T, batch_size=2, logprob_dtype=torch.float32)
    with torch.no_grad():
        live = teacher_targets_from_logits(reference(input_ids=tokens).logits, K)
    got = cache.targets([0, 1, 2], 6)
    assert torch.equal(got.ids.long(), live.ids)
    torch.testing.assert_close(got.logprobs, live.logprobs.float(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="row 1 is empty"):
        compute_teacher_cache(reference, [[1, 2], []], pad_id=PAD, k=K, temperature=T)
    with pytest.raises(ValueError, match="k must be"):
        compute_teacher_cache(reference, [[1, 2]], pad_id=PAD, k=VOCAB + 1, temperature=T)


def _small_cache(**overrides) -> TeacherCache:
    fields = dict(
        ids=torch.randint(0, VOCAB, (5, 3), dtype=torch.int32),
        logprobs=-torch.rand(5, 3).half(),
        lengths=torch.tensor([2, 3]),
        k=3,
        temperature=2.0,
        key=cache_key("m", "s", 3, 2.0),
    )
    fields.update(overrides)
    return TeacherCache(**fields)


def test_mismatched_metadata_is_rejected(tmp_path) -> None:
    cache = _small_cache()
    data = cache.to_bytes()
    path = tmp_path / "c.safetensors"
    cache.save(path)
    for load in (lambda **kw: TeacherCache.from_bytes(data, **kw), lambda **kw: TeacherCache.load(path, **kw)):
        assert load(k=3, temperature=2.0, key=cache.key).key == cache.key
        with pytest.raises(ValueError, match="k: expected 4, cache has 3"):
            load(k=4)
        with pytest.raises(ValueError, match="temperature: expected 1.0, cache has 2.0"):
            load(temperature=1.0)
        with pytest.raises(ValueError, match="key: expected"):
            load(key=cache_key("m", "s", 3, 1.0))
    with pytest.raises(ValueError, match="tokens_sha256"):
        cache.check(tokens_sha256=tokens_digest([[1, 2]]))


def test_foreign_or_corrupt_blobs_are_rejected(tmp_path) -> None:
    tensors = {"ids": torch.zeros(2, 3, dtype=torch.int32), "logprobs": torch.zeros(2, 3), "lengths": torch.tensor([2])}
    with pytest.raises(ValueError, match="metadata format"):
        TeacherCache.from_bytes(safetensors.torch.save(tensors))
    meta = {"format": "cl_platform.teacher_cache", "schema_version": "99", "k": "3", "temperature": "2.0"}
    with pytest.raises(ValueError, match="schema version '99'"):
        TeacherCache.from_bytes(safetensors.torch.save(tensors, metadata=meta))
    with pytest.raises(ValueError, match="too short"):
        TeacherCache.from_bytes(b"abc")
    with pytest.raises(ValueError, match="header size"):
        TeacherCache.from_bytes(_small_cache().to_bytes()[:8])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        TeacherCache.load(bad)


def test_cache_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="ids must be int32"):
        _small_cache(ids=torch.zeros(5, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="logprobs must be float16 or float32"):
        _small_cache(logprobs=torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="lengths sum to 4"):
        _small_cache(lengths=torch.tensor([2, 2]))
    with pytest.raises(ValueError, match="at least one position"):
        _small_cache(lengths=torch.tensor([5, 0]))


def test_cache_key_is_stable_and_covers_every_input() -> None:
    key = cache_key("org/base@rev1", "gen-stream@abc", 256, 2.0)
    assert key == cache_key("org/base@rev1", "gen-stream@abc", 256, 2)  # 2 and 2.0 are the same T
    assert len(key) == 64 and int(key, 16) >= 0
    # Pinned: a change here silently invalidates (or worse, reuses) every stored cache.
    assert key == PINNED_KEY
    others = {
        cache_key("org/base@rev2", "gen-stream@abc", 256, 2.0),
        cache_key("org/base@rev1", "gen-stream@abd", 256, 2.0),
        cache_key("org/base@rev1", "gen-stream@abc", 128, 2.0),
        cache_key("org/base@rev1", "gen-stream@abc", 256, 1.0),
    }
    assert key not in others and len(others) == 4
    with pytest.raises(ValueError, match="base_model_id"):
        cache_key("", "s", 1, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        cache_key("m", "s", 1, -1.0)


PINNED_KEY = "54c3fae5f3fd5fe6468729e1ffe45aa31fc9de99e60f497ac0d7fc45b3cf73f0"


def test_tokens_digest_sees_row_boundaries() -> None:
    assert tokens_digest([[1, 2], [3]]) != tokens_digest([[1], [2, 3]])
    assert tokens_digest([[1, 2], [3]]) == tokens_digest([(1, 2), (3,)])
