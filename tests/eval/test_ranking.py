"""Candidate-ranking accuracy against a tiny Chameleon whose weights make it a known bigram table.

Every decoder layer's output projections are zero (each block is the identity on the residual
stream), the embedding of token ``i`` is a scaled one-hot vector and the LM head's column ``i``
holds the log-probabilities of the token after ``i``: so ``log p(next | prefix)`` depends on the
last token only and every candidate's log-likelihood is a product of table entries, computed here
by hand.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from cl_platform.eval.ranking import (
    candidate_log_likelihoods,
    candidate_scores,
    candidate_set,
    pack_candidates,
    pick_candidates,
    ranking_counts,
)
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.tiny import TinyModelConfig, build_tiny_model

SPEC = ModalitySpec(spec_id="t", vocab_size=24, image_code_range=(6, 10), boi_id=4, eoi_id=5, pad_id=0, sep_id=3)
EOS = 2
#: P(next | last token): the only probabilities the rows below touch (the rest of a row is ~0).
TABLE = {
    10: {15: 0.5, 16: 0.3, 18: 0.2},
    11: {15: 0.1, 16: 0.7, 18: 0.2},
    12: {15: 0.2, 16: 0.2, 18: 0.6},
    13: {21: 0.4, 15: 0.35, 16: 0.25},  # greedy says 21, not an allowed answer
    15: {EOS: 0.6, 19: 0.4},
    16: {17: 0.6, 20: 0.4},
    17: {EOS: 1.0},
    18: {EOS: 1.0},
}
CANDIDATES = [(15, EOS), (16, 17, EOS), (18, EOS)]  # sorted by token ids
ROWS = [  # (prompt, answer): ranking pick / greedy answer
    ([1, 3, 10], [15, EOS]),       # 15 (.30 > .20 > .18) / 15 2: both right
    ([1, 3, 11], [16, 17, EOS]),   # 16 (.42) / 16 17 2: both right
    ([1, 3, 12], [15, EOS]),       # 18 (.60) / 18 2: both wrong
    ([1, 3, 12], [18, EOS]),       # 18 / 18 2: both right
    ([1, 3, 3, 10], [18, EOS]),    # 15 / 15 2: both wrong (a longer prompt)
    ([1, 3, 13], [15, EOS]),       # 15 (.21 > .15 > 0) / 21 ...: ranking right, exact match wrong
]
PICKS = [0, 1, 2, 2, 0, 0]


def _likelihood(last: int, candidate) -> float:
    p, prev = 1.0, last
    for t in candidate:
        p *= TABLE.get(prev, {}).get(t, 0.0)
        prev = t
    return p


def bigram_model() -> torch.nn.Module:
    """The tiny Chameleon with hand-set weights whose next-token distribution is :data:`TABLE`."""
    V, H = SPEC.vocab_size, 24
    model = build_tiny_model(SPEC, TinyModelConfig(hidden_size=H, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=8), seed=0)
    logits = torch.full((V, V), -1e4)  # logits[next, last]
    for last in range(V):
        dist = TABLE.get(last)
        if dist is None:
            logits[:, last] = 0.0
        for nxt, p in (dist or {}).items():
            logits[nxt, last] = math.log(p)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        model.get_input_embeddings().weight.copy_(10.0 * torch.eye(V, H))
        # the final RMSNorm turns 10 * e_i into sqrt(H) * e_i
        model.get_output_embeddings().weight.copy_(logits / math.sqrt(H))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return bigram_model()


def test_the_hand_set_model_is_the_bigram_table(model):
    lp = model(input_ids=torch.tensor([[1, 3, 10, 15]])).logits.log_softmax(-1)[0]
    assert lp[2, 15].item() == pytest.approx(math.log(0.5), abs=1e-4)
    assert lp[3, EOS].item() == pytest.approx(math.log(0.6), abs=1e-4)


def test_log_likelihoods_and_picks_by_hand(model):
    scores, greedy = candidate_log_likelihoods(model, [p for p, _ in ROWS], CANDIDATES, batch_size=4)
    assert scores.shape == greedy.shape == (len(ROWS), len(CANDIDATES))
    for n, (prompt, _) in enumerate(ROWS):
        for k, cand in enumerate(CANDIDATES):
            want = _likelihood(prompt[-1], cand)
            if want > 0:
                assert scores[n, k].item() == pytest.approx(math.log(want), abs=1e-3), (n, k)
            else:
                assert scores[n, k].item() < -1000
    assert pick_candidates(scores) == PICKS
    # greedy decoding emits 15 2 after 10, 16 17 2 after 11, 18 2 after 12, and 21 ... after 13
    want = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0]]
    assert greedy.int().tolist() == want


def test_ranking_accuracy_and_exact_match_by_hand(model):
    from cl_platform.eval.accuracy import answer_accuracy

    rk = ranking_counts(model, ROWS, CANDIDATES, batch_size=3)
    assert (rk.correct, rk.total, rk.picks, rk.exact) == (4, 6, PICKS, 3)
    assert rk.accuracy == pytest.approx(4 / 6)
    decoded = answer_accuracy(model, ROWS, eos_token_id=EOS)
    assert (decoded.correct, decoded.total) == (3, 6)  # row 5 greedily answers 21


def test_one_packed_forward_equals_one_forward_per_candidate():
    """On a random tiny model (attention at work), against prompt + candidate forwards one by one."""
    model = build_tiny_model(SPEC, TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                   intermediate_size=32), seed=3).eval()
    prompts = [[1, 12, 3, 7], [1, 13, 14, 3], [1, 3, 11]]
    cands = [(15, 16, 2), (17, 2), (18, 19, 20, 2), (21,)]
    scores, greedy = candidate_log_likelihoods(model, prompts, cands, batch_size=2)
    for n, p in enumerate(prompts):
        for k, c in enumerate(cands):
            lp = model(input_ids=torch.tensor([p + list(c)])).logits.log_softmax(-1)[0]
            rows = range(len(p) - 1, len(p) - 1 + len(c))
            assert scores[n, k].item() == pytest.approx(sum(lp[r, t].item() for r, t in zip(rows, c)), abs=1e-4)
            assert bool(greedy[n, k]) == all(lp[r].argmax().item() == t for r, t in zip(rows, c))


def test_packed_layout_by_hand():
    packed = pack_candidates([(7, 8, 2), (9, 2), (5,)], prompt_len=2)
    assert packed.suffix.tolist() == [7, 8, 9]
    assert packed.positions.tolist() == [0, 1, 2, 3, 2]
    assert packed.keep.tolist() == [1, 2, 3, 4]
    assert packed.index.tolist() == [[0, 1, 2], [0, 3, 0], [0, 0, 0]]
    assert packed.attention.int().tolist() == [
        [1, 0, 0, 0, 0],   # prompt
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],   # 7: the prompt and itself
        [1, 1, 1, 1, 0],   # 8: the prompt, 7 and itself
        [1, 1, 0, 0, 1],   # 9: the prompt and itself, not the other candidate
    ]
    # log-probs at the 4 kept positions over a vocabulary of 10: scores and greedy by hand
    lp = torch.full((1, 4, 10), math.log(0.01))
    lp[0, 0, 7], lp[0, 0, 9], lp[0, 0, 5] = math.log(0.5), math.log(0.3), math.log(0.1)
    lp[0, 1, 8], lp[0, 2, 2], lp[0, 3, 2] = math.log(0.4), math.log(0.9), math.log(0.2)
    lp[0, 1, 3] = math.log(0.5)  # after 7 the most likely token is 3, not 8
    scores, greedy = candidate_scores(lp, packed)
    torch.testing.assert_close(scores, torch.log(torch.tensor([[0.5 * 0.4 * 0.9, 0.3 * 0.2, 0.1]])))
    assert greedy.tolist() == [[False, False, False]]
    lp[0, 1, 3] = math.log(0.01)
    assert candidate_scores(lp, packed)[1].tolist() == [[True, False, False]]
    with pytest.raises(ValueError, match="need N x 4 x V"):
        candidate_scores(lp[:, :3], packed)


def test_two_ranks_sum_to_one(model):
    whole = ranking_counts(model, ROWS, CANDIDATES)
    parts = [ranking_counts(model, ROWS, CANDIDATES, rank=r, world=2) for r in (0, 1)]
    assert [p.total for p in parts] == [3, 3]
    assert sum(p.correct for p in parts) == whole.correct and sum(p.total for p in parts) == whole.total
    assert parts[0].picks == whole.picks[0::2] and parts[1].picks == whole.picks[1::2]
    assert ranking_counts(model, ROWS[:1], CANDIDATES, rank=1, world=2).total == 0  # an empty shard


def test_ties_go_to_the_first_candidate():
    scores = torch.tensor([[-1.0, -0.5, -0.5], [-2.0, -2.0, -3.0], [0.0, -1.0, 0.0], [-4.0, -4.0, -4.0]])
    assert pick_candidates(scores) == [1, 0, 0, 0]


def _train(rows):
    return pa.table({"tokens": [t for t, _ in rows], "answer_start": [s for _, s in rows]})


def _eval(answers):
    return pa.table({"prompt_tokens": [[1, 3]] * len(answers), "answer_tokens": answers})


def test_candidate_set_is_the_sorted_union_of_both_splits():
    train = _train([([1, 3, 18, 2], 2), ([1, 3, 3, 15, 2], 3), ([1, 3, 18, 2], 2)])
    ev = _eval([[16, 17, 2], [15, 2]])
    assert candidate_set(train, ev, 32) == [(15, 2), (16, 17, 2), (18, 2)]
    assert candidate_set(train, ev, 3) == [(15, 2), (16, 17, 2), (18, 2)]  # exactly at the bound: closed
    assert candidate_set(train, ev, 2) is None                              # one more: open
    assert candidate_set(train, ev, 0) is None                              # disabled
    assert candidate_set(None, ev, 32) == [(15, 2), (16, 17, 2)]


def test_candidate_set_errors_name_the_input():
    with pytest.raises(ValueError, match="answer_tokens"):
        candidate_set(None, pa.table({"prompt_tokens": [[1]]}), 4)
    with pytest.raises(ValueError, match="answer_start"):
        candidate_set(pa.table({"tokens": [[1, 2]]}), _eval([[2]]), 4)
    with pytest.raises(ValueError, match="answer 1 is empty"):
        candidate_set(None, _eval([[2], []]), 4)
    with pytest.raises(ValueError, match="negative"):
        candidate_set(None, _eval([[2]]), -1)


def test_an_answer_outside_the_candidates_is_an_error(model):
    with pytest.raises(ValueError, match=r"row 1's answer \[19, 2\] is not a candidate"):
        ranking_counts(model, [ROWS[0], ([1, 3, 10], [19, EOS])], CANDIDATES)


def test_evaluation_counts_of_two_ranks_sum_to_one_rank(model):
    """``train.evaluation``: a closed task scored by ranking (and its exact match from the same
    forward), an open one decoded greedily; ranks 0 and 1 of 2 add up to rank 0 of 1."""
    from cl_platform.train.evaluation import EvalSet, evaluate, partial_counts, scores_from_counts

    es = EvalSet(tasks=["closed", "open"], rows={"closed": ROWS, "open": ROWS[:3]}, eos_id=EOS, pad_id=0,
                 batch_size=4, candidates={"closed": CANDIDATES, "open": None})
    whole = partial_counts(model, es)
    assert whole == [3, 6, 2, 3, 4, 6]  # exact closed, exact open (greedy: rows 0, 1 right), ranking closed
    halves = [partial_counts(model, es, rank, 2) for rank in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == whole
    scores = scores_from_counts(es, whole)
    assert scores.accuracy == [0.5, pytest.approx(2 / 3)] and scores.ranking == [pytest.approx(4 / 6), None]
    assert scores.generation is None
    assert evaluate(model, es) == scores
