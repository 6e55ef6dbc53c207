"""Padding collate and the answer-only loss."""

import math

import pytest
import torch

from cl_platform.train.batches import IGNORE_INDEX, answer_loss, collate_rows


def test_collate_pads_and_masks_prompts():
    b = collate_rows([([1, 5, 3, 7, 2], 3), ([1, 3, 8], 2)], pad_id=0)
    assert b.input_ids.tolist() == [[1, 5, 3, 7, 2], [1, 3, 8, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    I = IGNORE_INDEX
    assert b.labels.tolist() == [[I, I, I, 7, 2], [I, I, 8, I, I]]
    assert b.num_answer_tokens == 3


@pytest.mark.parametrize("start", [0, 3])
def test_collate_rejects_bad_answer_start(start):
    with pytest.raises(ValueError, match="row 1 has answer_start"):
        collate_rows([([1, 2], 1), ([1, 2, 3], start)], pad_id=0)


def test_answer_loss_only_counts_answers():
    V = 4
    b = collate_rows([([1, 2, 3], 2), ([1, 2, 3, 0], 1)], pad_id=0)
    logits = torch.zeros(2, 4, V)
    logits[0, 0] = 100.0  # a prompt position: must not matter
    loss = answer_loss(logits, b.labels)
    assert loss.item() == pytest.approx(math.log(V))
    # row reduction: one row with 1 answer token, one with 3 -> rows weigh the same
    logits = torch.zeros(2, 4, V)
    logits[0, 1, 3] = 50.0  # row 0's only answer token predicted perfectly
    tok = answer_loss(logits, b.labels, reduction="token").item()
    row = answer_loss(logits, b.labels, reduction="row").item()
    assert tok == pytest.approx(3 * math.log(V) / 4, rel=1e-4)
    assert row == pytest.approx(math.log(V) / 2, rel=1e-4)
