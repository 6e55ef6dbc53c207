"""Understanding accuracy: greedy-decode the answer after each prompt, exact match.

An eval row (docs/architecture.md) is ``(prompt_tokens, answer_tokens)``; the prompt ends with the
separator and ``answer_tokens`` is what the model must emit next (answer words + end-of-sequence).
A row is correct when the first ``len(answer_tokens)`` greedily generated tokens equal
``answer_tokens`` exactly.

Rows are grouped by prompt length and each group is decoded in batches with ``model.generate``
(KV cache, no padding, so no attention-mask or position subtleties), which works for a plain model
and for a PEFT/MoDE-wrapped one alike.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch

EvalRow = tuple[Sequence[int], Sequence[int]]


@dataclass
class AnswerAccuracy:
    """Result of :func:`answer_accuracy`.

    Attributes:
        accuracy: fraction of rows answered exactly (0.0 for no rows).
        correct: number of exactly answered rows.
        total: number of rows.
        predictions: per row (input order), the generated tokens compared with the answer.
    """

    accuracy: float
    correct: int
    total: int
    predictions: list[list[int]] = field(repr=False, default_factory=list)


def group_by_length(prompts: Sequence[Sequence[int]], caller: str) -> dict[int, list[int]]:
    """Prompt length -> indices of the prompts of that length (input order); an empty prompt is a
    ``ValueError`` naming ``caller`` and the prompt."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"{caller}(prompts): prompt {i} is empty")
        groups[len(p)].append(i)
    return groups


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    *,
    batch_size: int = 64,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (input order), each at most its ``max_new_tokens``.

    Generation of a batch stops early when every row has produced ``eos_token_id`` (the tokens
    after a row's end are not returned). The model is put in eval mode and left there.
    """
    n = len(prompts)
    limits = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
    if len(limits) != n:
        raise ValueError(f"greedy_answers: {n} prompts but {len(limits)} max_new_tokens")
    model.eval()
    device = next(model.parameters()).device
    groups = group_by_length(prompts, "greedy_answers")
    out: list[list[int]] = [[] for _ in range(n)]
    for length in sorted(groups):
        idx = groups[length]
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            ids = torch.tensor([list(prompts[i]) for i in chunk], dtype=torch.long, device=device)
            steps = max(limits[i] for i in chunk)
            if steps <= 0:
                continue
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=steps,
                min_new_tokens=0,
                do_sample=False,
                use_cache=True,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
            )
            new = gen[:, length:].tolist()
            for row, i in zip(new, chunk):
                row = row[: limits[i]]
                if eos_token_id is not None and eos_token_id in row:
                    row = row[: row.index(eos_token_id) + 1]
                out[i] = row
    return out


def answer_accuracy(
    model: torch.nn.Module,
    rows: Sequence[EvalRow],
    *,
    batch_size: int = 64,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> AnswerAccuracy:
    """Exact-match accuracy of greedy answers over ``(prompt_tokens, answer_tokens)`` rows.

    Each row decodes ``len(answer_tokens)`` tokens; ``eos_token_id`` only lets a batch stop early
    once every row has ended (it must then be the answers' last token, as in the task format).
    """
    for i, (p, a) in enumerate(rows):
        if len(a) == 0:
            raise ValueError(f"answer_accuracy(rows): row {i} has no answer tokens")
    prompts = [list(p) for p, _ in rows]
    answers = [[int(t) for t in a] for _, a in rows]
    preds = greedy_answers(
        model, prompts, [len(a) for a in answers], batch_size=batch_size, eos_token_id=eos_token_id, pad_token_id=pad_token_id
    )
    correct = sum(int(p[: len(a)] == a) for p, a in zip(preds, answers))
    total = len(rows)
    return AnswerAccuracy(accuracy=correct / total if total else 0.0, correct=correct, total=total, predictions=preds)


def eval_rows_from_table(table) -> list[EvalRow]:
    """``(prompt_tokens, answer_tokens)`` rows of a pyarrow table in the eval format."""
    missing = {"prompt_tokens", "answer_tokens"} - set(table.column_names)
    if missing:
        raise ValueError(f"eval_rows_from_table(table): missing column(s) {sorted(missing)}; has {table.column_names}")
    return list(zip(table.column("prompt_tokens").to_pylist(), table.column("answer_tokens").to_pylist()))


__all__ = ["AnswerAccuracy", "EvalRow", "answer_accuracy", "eval_rows_from_table", "greedy_answers", "group_by_length"]
