"""Training batches from ``(tokens, answer_start)`` rows and the answer-only loss.

A task's train row (docs/architecture.md) is ``tokens`` (prompt + answer) and ``answer_start``: the loss
is taken only on ``tokens[answer_start:]``. :func:`collate_rows` pads a list of rows into tensors
(right padding; labels ``-100`` outside the answers) and :func:`answer_loss` is the matching
cross-entropy, computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: Label value ignored by the loss (prompt and padding positions).
IGNORE_INDEX = -100

Row = tuple[Sequence[int], int]


@dataclass
class Batch:
    """A padded batch of ``(tokens, answer_start)`` rows.

    Attributes:
        input_ids: ``[B, T]`` int64, right-padded with the pad id.
        attention_mask: ``[B, T]`` int64, 1 on real tokens.
        labels: ``[B, T]`` int64, the token id on answer positions (``>= answer_start``), else
            :data:`IGNORE_INDEX`. Not shifted: position ``t``'s logits predict ``labels[t + 1]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    @property
    def num_answer_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def collate_rows(rows: Sequence[Row], pad_id: int, *, pad_to_multiple_of: int | None = None) -> Batch:
    """Pad ``(tokens, answer_start)`` rows into a :class:`Batch`.

    Raises ValueError naming the row when ``answer_start`` is outside ``[1, len(tokens))`` (the
    first answer token must have a token before it to be predicted from).
    """
    if not rows:
        raise ValueError("collate_rows(rows): empty batch")
    lengths = [len(tokens) for tokens, _ in rows]
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, ((tokens, start), n) in enumerate(zip(rows, lengths)):
        start = int(start)
        if not 1 <= start < n:
            raise ValueError(f"collate_rows(rows): row {i} has answer_start={start} outside [1, {n}) (len(tokens)={n})")
        t = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        input_ids[i, :n] = t
        attention_mask[i, :n] = 1
        labels[i, start:n] = t[start:]
    return Batch(input_ids, attention_mask, labels)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "token") -> torch.Tensor:
    """Cross-entropy of next-token predictions on the answer positions, in float32.

    Args:
        logits: ``[B, T, V]`` model outputs.
        labels: ``[B, T]`` from :func:`collate_rows` (unshifted; :data:`IGNORE_INDEX` elsewhere).
        reduction: ``"token"`` averages over all answer tokens of the batch (long answers weigh
            more); ``"row"`` averages each row's answer tokens first, then over rows (every row
            weighs the same, e.g. a one-word answer as much as a 64-code image).
    """
    if reduction not in ("token", "row"):
        raise ValueError(f"answer_loss(reduction={reduction!r}): use 'token' or 'row'")
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    mask = (shift_labels != IGNORE_INDEX).float()
    if reduction == "token":
        return (per_token * mask).sum() / mask.sum().clamp_min(1.0)
    per_row = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    has_answer = (mask.sum(dim=1) > 0).float()
    return (per_row * has_answer).sum() / has_answer.sum().clamp_min(1.0)


def batch_loss(model: torch.nn.Module, batch: Batch, *, reduction: str = "token") -> torch.Tensor:
    """Forward ``batch`` through ``model`` (no cache) and return :func:`answer_loss`."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return answer_loss(out.logits, batch.labels, reduction=reduction)


def shuffled_batches(
    rows: Sequence[Row], batch_size: int, pad_id: int, *, rng: np.random.Generator, drop_last: bool = True
) -> Iterator[Batch]:
    """One epoch of :class:`Batch` es over ``rows`` in a random order drawn from ``rng``."""
    if batch_size <= 0:
        raise ValueError(f"shuffled_batches(batch_size={batch_size}): must be positive")
    order = rng.permutation(len(rows))
    stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
    for i in range(0, stop, batch_size):
        yield collate_rows([rows[j] for j in order[i : i + batch_size]], pad_id)


def rows_from_table(table) -> list[Row]:
    """``(tokens, answer_start)`` rows of a pyarrow table with those two columns (train format)."""
    missing = {"tokens", "answer_start"} - set(table.column_names)
    if missing:
        raise ValueError(f"rows_from_table(table): missing column(s) {sorted(missing)}; has {table.column_names}")
    return list(zip(table.column("tokens").to_pylist(), table.column("answer_start").to_pylist()))


__all__ = ["IGNORE_INDEX", "Batch", "Row", "answer_loss", "batch_loss", "collate_rows", "rows_from_table", "shuffled_batches"]
