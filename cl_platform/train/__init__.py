"""Training: the Ray Train loop of a round / sequence, checkpoints, KD and the teacher cache.

Public API re-exported here:

- :mod:`cl_platform.train.kd`: :class:`KDConfig`, :class:`TeacherTargets`, :func:`kd_loss`,
  :func:`teacher_targets_from_logits`, :func:`shifted_mask`
- :mod:`cl_platform.train.teacher_cache`: :class:`TeacherCache`, :func:`compute_teacher_cache`,
  :func:`cache_key`, :func:`tokens_digest`
"""

from cl_platform.train.kd import KDConfig, TeacherTargets, kd_loss, shifted_mask, teacher_targets_from_logits
from cl_platform.train.teacher_cache import TeacherCache, cache_key, compute_teacher_cache, tokens_digest

__all__ = [
    "KDConfig",
    "TeacherCache",
    "TeacherTargets",
    "cache_key",
    "compute_teacher_cache",
    "kd_loss",
    "shifted_mask",
    "teacher_targets_from_logits",
    "tokens_digest",
]
