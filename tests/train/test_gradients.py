"""The gradient-conflict diagnostic: hand-checked statistics, parameter groups, and what is exactly zero."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cl_platform.methods import MethodConfig, get_method
from cl_platform.models.modality import ModalitySpec
from cl_platform.train.batches import IGNORE_INDEX, answer_loss, collate_rows
from cl_platform.train.gradients import (
    conflict_stats, generation_labels, gradient_conflict, group_conflicts, parameter_group, parameter_groups, pick_rows,
)

# vocabulary of 32: text 0..9 (pad 0, sep 9), image codes 10..19, end-of-image 20, begin-of-image 21
SPEC = ModalitySpec(spec_id="t", vocab_size=32, image_code_range=(10, 20), boi_id=21, eoi_id=20, pad_id=0, sep_id=9)
# task rows whose prompts hold an image (as digits prompts do), a text answer after the separator
TASK_ROWS = [([3, 21, 11, 12, 13, 20, 9, 5, 6], 7), ([4, 21, 15, 14, 20, 9, 7], 6), ([21, 19, 18, 20, 2, 9, 8, 8], 6)]
STREAM_ROWS = [([3, 4, 21, 11, 12, 13, 20], 2), ([5, 21, 15, 15, 16, 20], 1), ([6, 6, 7, 21, 10, 19, 20], 3)]


def tiny(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def trained_adapter(method: str, **config):
    """``method``'s adapter on the tiny model with every adapter weight random (as after training)."""
    model = get_method(method, MethodConfig(r_text=2, r_image=2, num_experts=2, lora_dropout=0.0, **config)).build(
        tiny(), SPEC)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_statistics_match_a_hand_computation():
    task, gen = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])], [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    s = conflict_stats(task, gen)
    assert s["task_norm"] == 5.0 and s["generation_norm"] == pytest.approx(math.sqrt(5))
    assert s["cosine"] == pytest.approx(3 / (5 * math.sqrt(5)))
    assert s["task_share"] == pytest.approx(9 / 25)  # entries the generation loss updates: 0 and 1
    assert s["generation_share"] == pytest.approx(1 / 5)  # entries the task loss updates: 0 and 2
    zero = conflict_stats([torch.zeros(3)], [torch.tensor([1.0, -1.0, 0.0])])
    assert zero == {"task_norm": 0.0, "generation_norm": math.sqrt(2), "cosine": None, "task_share": None,
                    "generation_share": 0.0}
    with pytest.raises(ValueError, match="2 task tensors but 1"):
        conflict_stats(task, gen[:1])
    grouped = group_conflicts({"a": task[0], "b": task[1]}, {"a": gen[0], "b": gen[1]}, {"a": "x", "b": "y"})
    assert grouped["overall"] == s and grouped["groups"]["x"]["task_share"] == 1.0
    assert grouped["groups"]["y"]["generation_norm"] == 0.0 and grouped["groups"]["y"]["cosine"] is None


def test_groups_are_named_by_method():
    assert {parameter_group(n) for n in ("x.mode_text_A.default", "x.mode_text_B.default")} == {"text_experts"}
    assert parameter_group("x.mode_text_A.default", coupled=True) == "experts"
    assert parameter_group("x.lora_B.default.weight") == "lora" and parameter_group("x.bias") == "other"
    expected = {"mode": {"text_experts", "router", "visual_lora"}, "mode_nokd": {"text_experts", "router", "visual_lora"},
                "moe_lora": {"experts", "router"}, "seq_lora": {"lora"}}
    for method, groups in expected.items():
        assert set(parameter_groups(trained_adapter(method)).values()) == groups, method


def test_generation_labels_are_the_scored_image_tokens():
    batch = generation_labels(STREAM_ROWS, SPEC)
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * 2 + [21, 11, 12, 13, 20]
    assert batch.labels[1].tolist() == [IGNORE_INDEX] + [21, 15, 15, 16, 20] + [IGNORE_INDEX]  # padding
    assert batch.labels[2].tolist() == [IGNORE_INDEX] * 3 + [21, 10, 19, 20]


def test_pick_rows_is_fixed_by_the_seed():
    assert pick_rows(100, 3) == pick_rows(100, 3) != pick_rows(100, 4)
    rows = pick_rows(100, 3)
    assert len(rows) == len(set(rows)) == 8 and rows == sorted(rows) and all(0 <= i < 100 for i in rows)
    assert pick_rows(5, 0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="no rows"):
        pick_rows(0, 0)


def test_norms_are_those_of_the_training_losses_and_grads_are_left_alone():
    model = trained_adapter("seq_lora")
    model.train()
    out = gradient_conflict(model, TASK_ROWS, STREAM_ROWS, SPEC)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert out["rows"] == {"task": 3, "generation": 3}
    model.eval()
    for rows, key in ((collate_rows(TASK_ROWS, 0), "task_norm"), (generation_labels(STREAM_ROWS, SPEC), "generation_norm")):
        model.zero_grad()
        answer_loss(model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits, rows.labels).backward()
        norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))
        assert out["overall"][key] == pytest.approx(norm, rel=1e-6) and norm > 0


def test_sequence_routing_keeps_generation_off_the_text_experts_exactly():
    seq = gradient_conflict(trained_adapter("mode", generation_routing="sequence"), TASK_ROWS, STREAM_ROWS, SPEC)
    for group in ("text_experts", "router"):
        g = seq["groups"][group]
        assert g["generation_norm"] == 0.0 and g["task_norm"] > 0 and g["cosine"] is None
        assert g["task_share"] == 0.0
    visual = seq["groups"]["visual_lora"]  # the task's image tokens reach the visual LoRA: shared entries
    assert visual["task_norm"] > 0 and visual["generation_norm"] > 0 and visual["task_share"] > 0
    assert visual["cosine"] is not None
    token = gradient_conflict(trained_adapter("mode"), TASK_ROWS, STREAM_ROWS, SPEC)
    assert token["groups"]["text_experts"]["generation_norm"] > 0  # the text prompt goes through them


def test_coupled_experts_take_both_losses():
    out = gradient_conflict(trained_adapter("moe_lora"), TASK_ROWS, STREAM_ROWS, SPEC)
    for group in ("experts", "router"):
        g = out["groups"][group]
        assert g["task_norm"] > 0 and g["generation_norm"] > 0 and g["cosine"] is not None
        assert 0 < g["task_share"] <= 1 and 0 < g["generation_share"] <= 1
