"""Where the KD teacher's targets come from during training: a cache, or the frozen base online.

The KD teacher is the frozen base model: the student with its adapters disabled. A run gets its
top-K targets in one of two ways, chosen per run (``--teacher-mode``):

- ``cached``: computed once over the KD stream before the fit (a Ray Data batch-inference job
  over actors, each with the GPUs it asks for; :mod:`cl_platform.train.teacher_build`) and
  stored in shards that each worker streams (:class:`~cl_platform.methods.teacher_cache.ShardedTeacherCache`).
  Training then needs one forward per KD batch (the student's). The cache costs store space:
  ``positions x K x (4 + 2)`` bytes (int32 ids, float16 log-probs), about 1.5 MB per row of
  1,026 positions at K = 256.
- ``online``: the worker runs the frozen base itself, a no-grad forward of the same model with
  the adapters disabled (:class:`OnlineTeacher`): no extra weights in memory and nothing stored,
  at the cost of a second forward per KD batch.

``auto`` (the default) estimates the cache (:func:`estimate_cache_bytes`) and takes ``cached``
when it fits ``--teacher-cache-limit-gb``, else ``online``; the run says which and why
(:func:`choose_teacher_mode`). Both give the same KD loss on the same batch up to the float16
rounding of the stored log-probs (``tests/methods/test_teacher_modes.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

from cl_platform.methods.kd import TeacherTargets, teacher_targets_from_logits

#: Teacher modes a run accepts.
TEACHER_MODES = ("auto", "cached", "online")
#: Bytes per cached (position, id): an int32 id and a float16 log-prob.
CACHE_BYTES_PER_ENTRY = 4 + 2


class TeacherSource(Protocol):
    """Gives a KD batch's teacher targets."""

    def batch_targets(self, row_ids: Sequence[int], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      model: torch.nn.Module) -> TeacherTargets:
        """Targets ``[B, L, K]`` for the stream rows ``row_ids`` padded as ``input_ids`` ``[B, L]``."""


@dataclass
class CachedTeacher:
    """Targets read from a teacher cache (a :class:`TeacherCache` or a :class:`ShardedTeacherCache`)."""

    cache: Any

    def batch_targets(self, row_ids: Sequence[int], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      model: torch.nn.Module) -> TeacherTargets:
        return self.cache.targets(list(row_ids), int(input_ids.shape[1])).to(input_ids.device)


@dataclass
class OnlineTeacher:
    """Targets from the frozen base, computed in the training worker: the same (PEFT) model with
    its adapters disabled, in eval mode, without gradients.

    Attributes:
        k: K, the teacher ids kept per position.
    """

    k: int

    @torch.no_grad()
    def batch_targets(self, row_ids: Sequence[int], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      model: torch.nn.Module) -> TeacherTargets:
        was_training = model.training
        model.eval()
        try:
            with model.disable_adapter():
                out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            model.train(was_training)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return teacher_targets_from_logits(logits.float(), self.k)


def estimate_cache_bytes(positions: int, k: int) -> int:
    """Bytes of a teacher cache of ``positions`` stream positions (tokens) at top-``k``."""
    return int(positions) * int(k) * CACHE_BYTES_PER_ENTRY


@dataclass(frozen=True)
class TeacherChoice:
    """The teacher mode a run uses and why.

    Attributes:
        mode: ``"cached"`` or ``"online"``.
        cache_bytes: the estimated cache size.
        reason: one line for the run's log.
    """

    mode: str
    cache_bytes: int
    reason: str


def choose_teacher_mode(asked: str, *, rows: int, positions: int, k: int, limit_bytes: int) -> TeacherChoice:
    """Resolve ``asked`` (``auto``, ``cached`` or ``online``) for a KD stream of ``rows`` rows and
    ``positions`` tokens at top-``k``; ``auto`` caches when the estimate fits ``limit_bytes``."""
    if asked not in TEACHER_MODES:
        raise ValueError(f"teacher mode {asked!r}: expected one of {', '.join(TEACHER_MODES)}")
    size = estimate_cache_bytes(positions, k)
    what = f"cache of {rows} rows x {positions / max(rows, 1):.0f} positions x top-{k} = {size / 2**20:.1f} MiB"
    if asked == "online":
        return TeacherChoice("online", size, f"online (asked; a {what} is not built)")
    if asked == "cached":
        return TeacherChoice("cached", size, f"cached (asked; {what})")
    if size <= limit_bytes:
        return TeacherChoice("cached", size, f"cached (auto: {what} <= the {limit_bytes / 2**30:g} GiB limit)")
    return TeacherChoice("online", size, f"online (auto: {what} > the {limit_bytes / 2**30:g} GiB limit; "
                                         "the frozen base runs in each worker instead)")


__all__ = [
    "CACHE_BYTES_PER_ENTRY",
    "CachedTeacher",
    "OnlineTeacher",
    "TEACHER_MODES",
    "TeacherChoice",
    "TeacherSource",
    "choose_teacher_mode",
    "estimate_cache_bytes",
]
