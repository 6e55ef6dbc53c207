"""Knowledge distillation from the frozen base model: top-K renormalised KL with temperature.

The loss (docs/architecture.md, "The method") at one position, with teacher logits ``z_t``, student logits
``z_s`` over the vocabulary, ``I`` the ids of the teacher's K largest logits and temperature T::

    p_t = softmax(z_t[I] / T)          # teacher, renormalised on its top-K
    p_s = softmax(z_s[I] / T)          # student, renormalised on the same K ids
    kl  = sum_k p_t,k * (log p_t,k - log p_s,k)
    loss = T**2 * mean over valid positions of kl

T is applied exactly once to both sides (applying it to the
logits and again to the log-probs would make the effective temperature T**2) and the ``T**2`` factor keeps gradient magnitudes comparable across T.

The teacher side is carried as :class:`TeacherTargets`: the top-K ids and the teacher's
log-probabilities at temperature 1 at those ids. Renormalising those log-probs at temperature T
gives exactly ``softmax(z_t[I] / T)``, because ``log_softmax(z)[I] = z[I] - logsumexp(z)`` and
the constant shift cancels inside the softmax. So the targets do not depend on T, and the
teacher cache (:mod:`cl_platform.methods.teacher_cache`) can store them once.

Alignment: in a causal language model the logits at position ``t`` predict token ``t + 1``. The
targets and the mask are indexed by logit position, the same as ``logits[:, t]``; use
:func:`shifted_mask` to turn a mask over *tokens* (which tokens should be distilled) into a mask
over the *logit positions* that predict them.

Numerics: the K student logits of each position are gathered in their own dtype (one gather
over the ``[N, V]`` logits, whose backward is one scatter into the gradient); everything after
runs in float32 (float64 inputs stay float64), also for bf16/fp16 logits, on ``chunk_size``
flattened positions at a time. No ``[N, V]`` float32 tensor is ever made: only ``[chunk, K]``
pieces are upcast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = [
    "KDConfig",
    "TeacherTargets",
    "kd_loss",
    "shifted_mask",
    "teacher_targets_from_logits",
]


@dataclass
class KDConfig:
    """Settings of the knowledge-distillation term of the training loss.

    Attributes:
        weight: lambda, the weight of the KD term in ``task_ce + weight * kd``. 0 disables KD.
        temperature: T, applied once to teacher and student logits; the loss is scaled by T**2.
        top_k: K, the number of teacher token ids both distributions are renormalised on (and the
            number the teacher cache stores per position).
        chunk_size: number of flattened (batch x position) rows processed at a time, bounding the
            float32 intermediates to ``[chunk_size, top_k]`` (and ``[chunk_size, vocab]`` when
            teacher targets are computed from live logits).
    """

    weight: float = 0.3
    temperature: float = 2.0
    top_k: int = 256
    chunk_size: int = 4096

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"KDConfig.weight must be a finite number >= 0, got {self.weight!r}")
        _check_temperature(self.temperature, "KDConfig.temperature")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"KDConfig.top_k must be an int >= 1, got {self.top_k!r}")
        _check_chunk_size(self.chunk_size, "KDConfig.chunk_size")


@dataclass(eq=False)
class TeacherTargets:
    """The teacher's top-K token ids and log-probabilities at each position of a batch.

    Attributes:
        ids: integer tensor ``[B, L, K]`` (int32 or int64), the teacher's K most likely next-token
            ids at each logit position, most likely first.
        logprobs: float tensor ``[B, L, K]``, the teacher's log-probabilities at temperature 1
            (normalised over the full vocabulary) at those ids. Values at positions the loss
            mask excludes are ignored (padding fills them with 0).
    """

    ids: torch.Tensor
    logprobs: torch.Tensor

    def __post_init__(self) -> None:
        if self.ids.dim() != 3:
            raise ValueError(f"TeacherTargets.ids must be [B, L, K], got shape {tuple(self.ids.shape)}")
        if self.ids.dtype.is_floating_point or self.ids.dtype.is_complex or self.ids.dtype == torch.bool:
            raise ValueError(f"TeacherTargets.ids must be an integer tensor, got {self.ids.dtype}")
        if self.logprobs.shape != self.ids.shape:
            raise ValueError(
                f"TeacherTargets.logprobs shape {tuple(self.logprobs.shape)} differs from ids shape {tuple(self.ids.shape)}"
            )
        if not self.logprobs.dtype.is_floating_point:
            raise ValueError(f"TeacherTargets.logprobs must be a float tensor, got {self.logprobs.dtype}")

    @property
    def k(self) -> int:
        """K, the number of teacher ids per position."""
        return self.ids.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """``[B, L, K]``."""
        return self.ids.shape

    def __len__(self) -> int:
        return self.ids.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TeacherTargets":
        """Both tensors moved to ``device`` (dtypes unchanged)."""
        return TeacherTargets(
            self.ids.to(device, non_blocking=non_blocking),
            self.logprobs.to(device, non_blocking=non_blocking),
        )

    def __getitem__(self, rows: int | slice | Sequence[int] | torch.Tensor) -> "TeacherTargets":
        """The targets of some batch rows; an int selects a batch of one (the batch dim is kept)."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1 if rows != -1 else None)
        elif not isinstance(rows, (slice, torch.Tensor)):
            rows = torch.as_tensor(list(rows), dtype=torch.long)
        return TeacherTargets(self.ids[rows], self.logprobs[rows])


def _check_temperature(temperature: float, what: str) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"{what} must be a number > 0, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {temperature!r}")


def _check_chunk_size(chunk_size: int, what: str) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{what} must be an int >= 1, got {chunk_size!r}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def shifted_mask(token_mask: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mask over logit positions from a mask over the tokens they predict.

    Logits at position ``t`` predict token ``t + 1``, so ``out[:, t] = token_mask[:, t + 1]`` and
    the last position (which predicts past the end) is always False. With ``attention_mask``
    given, positions whose own token is padding are dropped too (needed with left padding, where
    a pad position can precede the first real token).

    Args:
        token_mask: ``[B, L]`` bool or 0/1 tensor: the tokens whose prediction should count, e.g.
            the attention mask of a right-padded batch, or it ANDed with an image-token mask.
        attention_mask: optional ``[B, L]`` bool or 0/1 tensor, True at real tokens.

    Returns:
        A ``[B, L]`` bool tensor on the same device, aligned with ``logits[:, :L]``.
    """
    if token_mask.dim() != 2:
        raise ValueError(f"shifted_mask: token_mask must be [B, L], got shape {tuple(token_mask.shape)}")
    tokens = token_mask.bool()
    out = torch.zeros_like(tokens)
    out[:, :-1] = tokens[:, 1:]
    if attention_mask is not None:
        if attention_mask.shape != token_mask.shape:
            raise ValueError(
                f"shifted_mask: attention_mask shape {tuple(attention_mask.shape)} differs from "
                f"token_mask shape {tuple(token_mask.shape)}"
            )
        out &= attention_mask.bool()
    return out


@torch.no_grad()
def teacher_targets_from_logits(logits: torch.Tensor, k: int, chunk_size: int = 4096) -> TeacherTargets:
    """The top-K ids of teacher logits and their log-probabilities at temperature 1.

    Args:
        logits: ``[B, L, V]`` teacher logits, any float dtype. Not differentiated.
        k: number of ids per position, ``1 <= k <= V``.
        chunk_size: flattened positions per chunk; bounds the float32 upcast to ``[chunk, V]``.

    Returns:
        :class:`TeacherTargets` with int64 ids (most likely first) and float32 log-probs (float64
        for float64 logits), on the logits' device.
    """
    if logits.dim() != 3:
        raise ValueError(f"teacher_targets_from_logits: logits must be [B, L, V], got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"teacher_targets_from_logits: logits must be floating point, got {logits.dtype}")
    B, L, V = logits.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= V:
        raise ValueError(f"teacher_targets_from_logits: k must be an int in [1, vocab={V}], got {k!r}")
    _check_chunk_size(chunk_size, "teacher_targets_from_logits: chunk_size")
    dtype = _compute_dtype(logits.dtype)
    flat = logits.detach().reshape(B * L, V)
    ids = torch.empty(B * L, k, dtype=torch.long, device=logits.device)
    logprobs = torch.empty(B * L, k, dtype=dtype, device=logits.device)
    for start in range(0, B * L, chunk_size):
        x = flat[start : start + chunk_size].to(dtype)
        values, idx = x.topk(k, dim=-1, sorted=True)
        ids[start : start + chunk_size] = idx
        logprobs[start : start + chunk_size] = values - torch.logsumexp(x, dim=-1, keepdim=True)
    return TeacherTargets(ids.reshape(B, L, k), logprobs.reshape(B, L, k))


def kd_loss(
    student_logits: torch.Tensor,
    targets: TeacherTargets,
    mask: torch.Tensor,
    temperature: float = 2.0,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """KL(teacher || student) on the teacher's top-K ids, temperature T once, scaled by T**2.

    Args:
        student_logits: ``[B, L, V]`` student logits (any float dtype; differentiable).
        targets: the teacher's top-K ids and temperature-1 log-probs, ``[B, L, K]``, aligned with
            ``student_logits`` position by position.
        mask: ``[B, L]`` bool (or 0/1) tensor, True at the logit positions that count. Masked
            positions contribute nothing to the value or the gradient, whatever their logits,
            ids or log-probs hold (NaN and out-of-range ids included).
        temperature: T > 0.
        chunk_size: flattened positions per chunk.

    Returns:
        A scalar: ``T**2 * sum over valid positions of KL / number of valid positions`` (a mean
        over all valid tokens of the batch, not a mean of per-sequence means), in float32
        (float64 for float64 logits). Exactly 0 with a finite zero gradient when no position is
        valid. Teacher ids whose log-prob is ``-inf`` have probability 0 and contribute 0.
    """
    if student_logits.dim() != 3:
        raise ValueError(f"kd_loss: student_logits must be [B, L, V], got shape {tuple(student_logits.shape)}")
    if not student_logits.dtype.is_floating_point:
        raise ValueError(f"kd_loss: student_logits must be floating point, got {student_logits.dtype}")
    if not isinstance(targets, TeacherTargets):
        raise ValueError(f"kd_loss: targets must be TeacherTargets, got {type(targets).__name__}")
    B, L, V = student_logits.shape
    if targets.shape[:2] != (B, L):
        raise ValueError(
            f"kd_loss: targets are [B, L, K] = {tuple(targets.shape)} but student_logits are [B, L, V] = {(B, L, V)}"
        )
    if targets.k > V:
        raise ValueError(f"kd_loss: targets have K={targets.k} ids per position, more than the vocab V={V}")
    if mask.shape != (B, L):
        raise ValueError(f"kd_loss: mask must be [B, L] = {(B, L)}, got shape {tuple(mask.shape)}")
    _check_temperature(temperature, "kd_loss: temperature")
    _check_chunk_size(chunk_size, "kd_loss: chunk_size")

    dtype = _compute_dtype(student_logits.dtype)
    device = student_logits.device
    n, k = B * L, targets.k
    z = student_logits.reshape(n, V)
    ids = targets.ids.reshape(n, k).to(device)
    teacher = targets.logprobs.reshape(n, k).to(device)
    valid = mask.reshape(n).to(device=device, dtype=torch.bool)
    t = float(temperature)

    # One gather of the K student logits per position, in the logits' own dtype: the only op that
    # touches [N, V] (its backward is one scatter into the [N, V] gradient). Ids at masked
    # positions are replaced by 0 so garbage there cannot fail the gather.
    picked = z.gather(1, torch.where(valid[:, None], ids.long(), 0))
    total = torch.zeros((), dtype=dtype, device=device)
    # split (not slicing) so the backward is a single concatenation, whatever the chunk count.
    for zs, zt, keep in zip(picked.split(chunk_size), teacher.split(chunk_size), valid[:, None].split(chunk_size)):
        # Masked rows are replaced by zeros before any arithmetic: they give KL(u || u) = 0 and,
        # through torch.where, an exactly zero gradient, even if they held NaN or inf.
        zs = torch.where(keep, zs.to(dtype), 0.0)
        zt = torch.where(keep, zt.detach().to(dtype), 0.0)
        logp_t = torch.log_softmax(zt / t, dim=-1)
        logp_s = torch.log_softmax(zs / t, dim=-1)
        p_t = logp_t.exp()
        diff = torch.where(p_t > 0, logp_t - logp_s, 0.0)
        total = total + (p_t * diff).sum()
    count = valid.sum().to(dtype).clamp(min=1.0)
    return total * (t * t) / count
