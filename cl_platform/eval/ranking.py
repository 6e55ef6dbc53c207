"""Candidate-ranking accuracy: which of a task's allowed answers the model finds most likely.

Exact-match accuracy (:mod:`cl_platform.eval.accuracy`) asks the model to produce an answer
from the whole vocabulary; ranking accuracy asks only whether it prefers the right answer among
the answers the task allows, so it separates what the model knows from whether it still emits
the task's answer format.

- **Candidate set** (:func:`candidate_set`): the distinct answer token sequences of a task's
  train split (``tokens[answer_start:]``) and eval split (``answer_tokens``), end-of-sequence
  included as in the answers, in lexicographic order of their token ids. A task has a *closed*
  answer set when it has at most ``max_candidates`` of them; otherwise (or with
  ``max_candidates`` 0) it has none and no ranking accuracy.
- **Score** of a candidate for a prompt: its total log-likelihood given the prompt, teacher
  forced, summed over all its tokens.
- A row is **correct** when the candidate with the highest score is the row's own answer; on a
  tie the first of the tied candidates in the set's order is the pick (:func:`pick_candidates`).

One forward per prompt scores every candidate (:func:`pack_candidates`): the prompt is followed
by every candidate's tokens but the last, each candidate's tokens placed at the positions right
after the prompt and attending only to the prompt and to their own earlier tokens (a 4-D
attention mask), so the cost is one prompt forward plus a few positions per candidate.

The same forward also says whether greedy decoding would produce a candidate exactly: it does
when, teacher-forced on the candidate, the most likely token at every one of its positions is
the candidate's token. For the row's own answer that is the exact-match criterion of
:mod:`cl_platform.eval.accuracy`, so :func:`ranking_counts` also returns the exact-match count
and a task with a closed answer set needs no generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from cl_platform.eval.accuracy import EvalRow, group_by_length

Candidate = tuple[int, ...]


def _answers(table, columns: tuple[str, ...], what: str) -> list[list[int]]:
    missing = set(columns) - set(table.column_names)
    if missing:
        raise ValueError(f"candidate_set({what}): missing column(s) {sorted(missing)}; has {table.column_names}")
    if columns == ("answer_tokens",):
        return table.column("answer_tokens").to_pylist()
    tokens, starts = table.column("tokens").to_pylist(), table.column("answer_start").to_pylist()
    return [t[s:] for t, s in zip(tokens, starts)]


def candidate_set(train, eval_table, max_candidates: int) -> Optional[list[Candidate]]:
    """The task's allowed answers in their fixed order, or ``None`` when the set is not closed.

    Args:
        train: the train split (``tokens``, ``answer_start``) as a pyarrow table, or ``None``.
        eval_table: the eval split (``answer_tokens``) as a pyarrow table.
        max_candidates: the most distinct answers a closed set has; 0 disables ranking.

    Returns:
        The distinct answer token sequences of both splits, sorted by their token ids, when there
        are between 1 and ``max_candidates`` of them; ``None`` otherwise.
    """
    if max_candidates < 0:
        raise ValueError(f"candidate_set(max_candidates): {max_candidates} is negative; 0 disables ranking")
    if max_candidates == 0:
        return None
    answers = _answers(eval_table, ("answer_tokens",), "eval")
    if train is not None:
        answers += _answers(train, ("tokens", "answer_start"), "train")
    distinct: set[Candidate] = set()
    for i, a in enumerate(answers):
        if not a:
            raise ValueError(f"candidate_set: answer {i} is empty; every answer has at least one token")
        distinct.add(tuple(int(t) for t in a))
        if len(distinct) > max_candidates:
            return None
    return sorted(distinct) or None


@dataclass(frozen=True)
class PackedCandidates:
    """The layout of one forward that scores every candidate after a prompt of ``prompt_len`` tokens.

    Attributes:
        suffix: the ids appended to the prompt: every candidate's tokens but its last, in order.
        positions: position ids of the whole sequence (``prompt_len + len(suffix)``): the prompt's
            ``0..prompt_len-1``, a candidate's ``t``-th token at ``prompt_len + t``.
        attention: ``(S, S)`` booleans, ``True`` where a query position (row) sees a key (column):
            causal over the prompt; a candidate's token sees the prompt and its own earlier tokens.
        keep: the sequence positions whose logits are used: the prompt's last, then the suffix.
        index: ``(K, L)`` for each candidate token, the row of ``keep`` whose logits predict it.
        targets: ``(K, L)`` the candidates' tokens, right-padded with 0.
        mask: ``(K, L)`` ``True`` on real (not padded) candidate tokens.
    """

    suffix: torch.Tensor
    positions: torch.Tensor
    attention: torch.Tensor
    keep: torch.Tensor
    index: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


def pack_candidates(candidates: Sequence[Sequence[int]], prompt_len: int) -> PackedCandidates:
    """The :class:`PackedCandidates` of ``candidates`` (each non-empty) after a ``prompt_len``-token prompt."""
    if not candidates:
        raise ValueError("pack_candidates(candidates): no candidates")
    if any(len(c) == 0 for c in candidates):
        raise ValueError("pack_candidates(candidates): a candidate is empty")
    if prompt_len < 1:
        raise ValueError(f"pack_candidates(prompt_len): {prompt_len}; a prompt has at least one token")
    P, K, width = prompt_len, len(candidates), max(len(c) for c in candidates)
    suffix: list[int] = []
    owner = [-1] * P  # which candidate a sequence position belongs to (-1: the prompt)
    positions = list(range(P))
    index = torch.zeros((K, width), dtype=torch.long)
    targets = torch.zeros((K, width), dtype=torch.long)
    mask = torch.zeros((K, width), dtype=torch.bool)
    for k, c in enumerate(candidates):
        targets[k, : len(c)] = torch.tensor([int(t) for t in c], dtype=torch.long)
        mask[k, : len(c)] = True
        for t in range(1, len(c)):
            index[k, t] = 1 + len(suffix) + t - 1  # keep row of the position holding c[t-1]
        for t in range(len(c) - 1):
            owner.append(k)
            positions.append(P + t)
        suffix += [int(x) for x in c[:-1]]
    S = P + len(suffix)
    own = torch.tensor(owner)
    causal = torch.ones((S, S), dtype=torch.bool).tril()
    same = (own[:, None] == own[None, :]) | (own[None, :] == -1)  # own candidate, or a prompt key
    return PackedCandidates(
        suffix=torch.tensor(suffix, dtype=torch.long), positions=torch.tensor(positions, dtype=torch.long),
        attention=causal & same, keep=torch.arange(P - 1, S, dtype=torch.long), index=index, targets=targets,
        mask=mask,
    )


def candidate_scores(log_probs: torch.Tensor, packed: PackedCandidates) -> tuple[torch.Tensor, torch.Tensor]:
    """Every candidate's total log-likelihood and whether greedy decoding produces it, per row.

    Args:
        log_probs: ``(N, len(packed.keep), V)`` log-probabilities at the kept positions.
        packed: the layout the forward used.

    Returns:
        ``(scores, greedy)``, both ``(N, K)``: the float32 sum of each candidate's token
        log-probabilities, and ``True`` where every one of its tokens is the most likely token at
        its position (the first maximum on a tie, as greedy decoding picks).
    """
    n_keep = int(packed.keep.numel())
    if log_probs.dim() != 3 or log_probs.shape[1] != n_keep:
        raise ValueError(f"candidate_scores(log_probs): shape {tuple(log_probs.shape)}; need N x {n_keep} x V")
    K, L = packed.targets.shape
    idx, tgt = packed.index.reshape(-1), packed.targets.reshape(-1)
    picked = log_probs.float()[:, idx, tgt].view(-1, K, L)
    scores = (picked * packed.mask).sum(-1)
    best = log_probs.argmax(-1)[:, idx].view(-1, K, L)
    greedy = ((best == packed.targets) | ~packed.mask).all(-1)
    return scores, greedy


def pick_candidates(scores: torch.Tensor) -> list[int]:
    """Per row of an ``N x K`` score matrix, the index of the highest score (the first on a tie)."""
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"pick_candidates(scores): expected N x K with K >= 1, got shape {tuple(scores.shape)}")
    best = scores.max(dim=1, keepdim=True).values
    is_best = (scores == best).int()
    return [int(i) for i in is_best.argmax(dim=1).tolist()]  # argmax of 0/1 values: the first maximum


@torch.no_grad()
def candidate_log_likelihoods(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    *,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, greedy)`` of :func:`candidate_scores` for every prompt (input order), ``N x K`` each.

    Prompts are grouped by length and scored ``batch_size`` at a time, one forward per batch over
    the :func:`pack_candidates` layout (the attention mask passed additively, 0 or the float32
    minimum, which eager and SDPA attention both accept); the log-softmax is taken in float32 at
    the kept positions only. The model is put in eval mode.
    """
    K = len(candidates)
    model.eval()
    device = next(model.parameters()).device
    groups = group_by_length(prompts, "candidate_log_likelihoods")
    scores = torch.zeros((len(prompts), K), dtype=torch.float32)
    greedy = torch.zeros((len(prompts), K), dtype=torch.bool)
    for length in sorted(groups):
        packed = pack_candidates(candidates, length)
        suffix, keep = packed.suffix.to(device), packed.keep.to(device)
        additive = torch.zeros(packed.attention.shape, dtype=torch.float32)
        additive.masked_fill_(~packed.attention, torch.finfo(torch.float32).min)
        additive = additive.to(device)[None, None]
        positions = packed.positions.to(device)[None]
        idx = groups[length]
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            B = len(chunk)
            ids = torch.tensor([list(prompts[i]) for i in chunk], dtype=torch.long, device=device)
            ids = torch.cat([ids, suffix[None].expand(B, -1)], dim=1)
            out = model(input_ids=ids, attention_mask=additive.expand(B, 1, -1, -1),
                        position_ids=positions.expand(B, -1), use_cache=False, logits_to_keep=keep)
            lp = out.logits.float().log_softmax(-1).cpu()
            sc, gr = candidate_scores(lp, packed)
            scores[chunk], greedy[chunk] = sc, gr
    return scores, greedy


@dataclass
class RankingCounts:
    """Result of :func:`ranking_counts`.

    Attributes:
        correct: rows whose best-scored candidate is their own answer.
        total: rows scored.
        picks: per row (input order of the shard), the index of the picked candidate.
        exact: rows whose own answer greedy decoding produces exactly (the exact-match count).
    """

    correct: int
    total: int
    picks: list[int]
    exact: int = 0

    @property
    def accuracy(self) -> float:
        """``correct / total`` (0.0 for no rows)."""
        return self.correct / self.total if self.total else 0.0


def ranking_counts(
    model: torch.nn.Module,
    rows: Sequence[EvalRow],
    candidates: Sequence[Candidate],
    *,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 64,
) -> RankingCounts:
    """Ranking (and exact-match) counts over this rank's share ``rows[rank::world]`` of
    ``(prompt, answer)`` rows, ``batch_size`` prompts per forward.

    Summing the counts of ranks ``0..world-1`` gives the counts over all rows. Every row's answer
    must be one of ``candidates`` (``ValueError`` naming the row otherwise).
    """
    if not 0 <= rank < world:
        raise ValueError(f"ranking_counts: rank {rank} is not in 0..{world - 1}")
    index = {tuple(int(t) for t in c): k for k, c in enumerate(candidates)}
    shard = list(rows)[rank::world]
    gold = []
    for n, (_, answer) in enumerate(shard):
        key = tuple(int(t) for t in answer)
        if key not in index:
            raise ValueError(f"ranking_counts(rows): row {rank + n * world}'s answer {list(key)} is not a candidate")
        gold.append(index[key])
    if not shard:
        return RankingCounts(0, 0, [])
    scores, greedy = candidate_log_likelihoods(model, [p for p, _ in shard], candidates, batch_size=batch_size)
    picks = pick_candidates(scores)
    exact = sum(int(greedy[n, g]) for n, g in enumerate(gold))
    return RankingCounts(sum(int(p == g) for p, g in zip(picks, gold)), len(shard), picks, exact)


__all__ = [
    "Candidate",
    "PackedCandidates",
    "RankingCounts",
    "candidate_log_likelihoods",
    "candidate_scores",
    "candidate_set",
    "pack_candidates",
    "pick_candidates",
    "ranking_counts",
]
