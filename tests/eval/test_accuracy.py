"""Greedy answer accuracy against a model whose next token is a known function of the last one."""

import pytest
import torch

from cl_platform.eval.accuracy import answer_accuracy, eval_rows_from_table, greedy_answers


class NextIsPlusOne(torch.nn.Module):
    """A 'language model' that always predicts ``last token + 1`` (mod V); supports ``generate``."""

    def __init__(self, vocab: int = 16) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=1, eos_token_id=None, pad_token_id=0, **_):
        ids = input_ids
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens):
            nxt = (ids[:, -1] + 1) % self.vocab
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if eos_token_id is not None:
                done |= nxt == eos_token_id
                if done.all():
                    break
        return ids


def test_hand_made_case():
    model = NextIsPlusOne()
    rows = [
        ([1, 2, 3], [4, 5]),        # right
        ([1, 2, 3], [4, 6]),        # second token wrong
        ([7], [8]),                 # right, other prompt length
        ([9, 10], [11, 12, 13]),    # right, 3 tokens
        ([5, 5], [7]),              # wrong
    ]
    res = answer_accuracy(model, rows, batch_size=2)
    assert (res.correct, res.total) == (3, 5)
    assert res.accuracy == pytest.approx(0.6)
    assert res.predictions == [[4, 5], [4, 5], [8], [11, 12, 13], [6]]


def test_eos_stops_and_truncates():
    model = NextIsPlusOne()
    preds = greedy_answers(model, [[3], [1]], 5, eos_token_id=5)
    assert preds == [[4, 5], [2, 3, 4, 5]]


def test_errors_name_the_row():
    with pytest.raises(ValueError, match="row 1"):
        answer_accuracy(NextIsPlusOne(), [([1], [2]), ([1], [])])
    assert answer_accuracy(NextIsPlusOne(), []).accuracy == 0.0


def test_real_model_and_table(tmp_path):
    import pyarrow as pa

    from cl_platform.models.modality import ModalitySpec
    from cl_platform.models.tiny import TinyModelConfig, build_tiny_model

    spec = ModalitySpec(spec_id="t", vocab_size=24, image_code_range=(6, 10), boi_id=4, eoi_id=5, pad_id=0, sep_id=3)
    model = build_tiny_model(spec, TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32), seed=0)
    table = pa.table({"prompt_tokens": [[1, 12, 3], [1, 13, 14, 3]], "answer_tokens": [[15, 2], [16, 2]]})
    rows = eval_rows_from_table(table)
    preds = greedy_answers(model, [p for p, _ in rows], 2, eos_token_id=2)
    # the batch decode agrees with one-row-at-a-time greedy decoding
    for (p, _), pred in zip(rows, preds):
        single = model.generate(torch.tensor([p]), max_new_tokens=2, do_sample=False, eos_token_id=2, pad_token_id=0)[0, len(p):].tolist()
        assert pred == single[: len(pred)]
    res = answer_accuracy(model, rows, eos_token_id=2)
    assert res.total == 2 and 0.0 <= res.accuracy <= 1.0
