"""The memory model of a training step against the peak resident memory measured on the CPU.

Measured (2-core x86_64 VM, torch 2.13, fp32, MoDE with KD, the runtime's fixed cost
subtracted): the estimate was 0.89-1.11 x the measurement over 0.76 M, 7.4 M and 58.9 M
parameters with and without gradient checkpointing, and 0.93-1.11 x in bf16 at 58.9 M. The tests
allow 25 %.
"""

from __future__ import annotations

import pytest
from transformers import ChameleonConfig, LlamaConfig

from cl_platform.methods import MethodConfig
from cl_platform.models.tiny import TinyModelConfig
from cl_platform.train.memory import (
    ANOLE_7B, CHECK_SIZES, AdapterShape, ModelShape, estimate_memory, gpu_table, measure_runtime, measure_training_step,
)

#: Allowed relative error of the estimate against the measurement (module docstring).
TOLERANCE = 0.25


@pytest.fixture(scope="module")
def runtime() -> dict[str, int]:
    """precision -> the runtime's fixed cost (:func:`measure_runtime`), measured once per module."""
    return {}


def _check(size: str, precision: str, checkpointing: bool, runtime: dict[str, int]) -> None:
    model, batch, seq, kd_batch = CHECK_SIZES[size]
    if precision not in runtime:
        runtime[precision] = measure_runtime(precision)
    measured = measure_training_step(model, precision=precision, gradient_checkpointing=checkpointing,
                                     batch_size=batch, seq_len=seq, kd_batch_size=kd_batch).total - runtime[precision]
    estimate = estimate_memory(model, precision=precision, gradient_checkpointing=checkpointing, batch_size=batch,
                               seq_len=seq, kd_batch_size=kd_batch, kd_top_k=16)
    ratio = estimate.total / measured
    print(f"{size} {precision} checkpointing={checkpointing}: estimate {estimate.total / 2**20:.1f} MiB, "
          f"measured {measured / 2**20:.1f} MiB, ratio {ratio:.2f}")
    assert abs(ratio - 1) <= TOLERANCE, (ratio, estimate.table())


@pytest.mark.parametrize("size, checkpointing", [("0.8M", False)])
def test_estimate_matches_the_measured_peak(size, checkpointing, runtime):
    _check(size, "fp32", checkpointing, runtime)


@pytest.mark.slow
@pytest.mark.parametrize("size, precision, checkpointing", [
    ("7M", "fp32", True), ("59M", "fp32", False), ("59M", "bf16", True),
])
def test_estimate_matches_the_measured_peak_slow_cases(size, precision, checkpointing, runtime):
    _check(size, precision, checkpointing, runtime)


def test_parameter_counts_of_the_tiny_model_and_anole():
    from cl_platform.methods import get_method
    from cl_platform.models.modality import ModalitySpec
    from cl_platform.models.tiny import build_tiny_model, count_parameters

    spec = ModalitySpec(spec_id="t", vocab_size=96, image_code_range=(40, 90), boi_id=90, eoi_id=91, pad_id=0, sep_id=3)
    model = get_method("mode").build(build_tiny_model(spec, seed=0), spec)
    shape = ModelShape.of({**TinyModelConfig().to_dict(), "vocab_size": 96})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert AdapterShape.of("mode", MethodConfig()).parameters(shape) == trainable
    frozen = count_parameters(model) - trainable
    assert shape.base_parameters() == frozen
    anole = ModelShape.of(ChameleonConfig(**ANOLE_7B))
    assert AdapterShape.of("mode").parameters(anole) == 60_456_960  # docs/cluster.md's count
    assert round(anole.base_parameters() / 1e9, 2) == 7.01


def test_checkpointing_lowers_activations_and_bf16_halves_the_base():
    cfg = ChameleonConfig(**ANOLE_7B)
    kw = dict(batch_size=1, seq_len=1026, kd_batch_size=1)
    plain = estimate_memory(cfg, **kw)
    ckpt = estimate_memory(cfg, gradient_checkpointing=True, **kw)
    bf16 = estimate_memory(cfg, precision="bf16", **kw)
    assert ckpt.activations < plain.activations / 10 and ckpt.total < plain.total
    assert bf16.base_weights * 2 == plain.base_weights
    assert (bf16.adapters, bf16.optimizer, bf16.gradients) == (plain.adapters, plain.optimizer, plain.gradients)
    assert plain.optimizer == 2 * plain.adapters  # AdamW: two float32 moments, no extra master copy
    longer = estimate_memory(cfg, **{**kw, "seq_len": 4096})
    assert longer.activations > plain.activations and longer.logits > plain.logits
    assert estimate_memory(cfg, teacher_mode="online", **kw).logits >= plain.logits
    llama = LlamaConfig(**{k: v for k, v in ANOLE_7B.items()})
    assert estimate_memory(llama, **kw).total == plain.total  # the same numbers, the same estimate


def test_anole_7b_on_24_40_and_80_gb():
    rows = gpu_table(ChameleonConfig(**ANOLE_7B))
    for r in rows:
        print(f"{r['precision']} checkpointing={r['gradient_checkpointing']} batch={r['batch_size']} "
              f"seq={r['seq_len']}: {r['total_gb']} GB, fits {r['fits_gb']}")
    by = {(r["precision"], r["gradient_checkpointing"], r["batch_size"], r["seq_len"]): r["fits_gb"] for r in rows}
    assert len(rows) == 16
    assert by[("bf16", True, 1, 1026)] == [24, 40, 80]  # bf16 + checkpointing: a 24 GB GPU
    assert by[("fp32", False, 1, 1026)] == [80]  # float32 without checkpointing: 80 GB GPUs only
    assert by[("fp32", False, 4, 4096)] == []


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="precision must be"):
        estimate_memory({**ANOLE_7B}, precision="fp16", batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="teacher_mode"):
        estimate_memory({**ANOLE_7B}, teacher_mode="live", batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="lacks vocab_size"):
        estimate_memory({"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1},
                        batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        estimate_memory({**ANOLE_7B}, batch_size=0, seq_len=8)
