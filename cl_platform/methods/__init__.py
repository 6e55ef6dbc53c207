"""Continual-learning methods behind one interface (:class:`ContinualMethod`).

Built in: ``mode``, ``mode_nokd``, ``seq_lora``, ``moe_lora``, ``olora``. A new method subclasses
:class:`ContinualMethod` and decorates itself with :func:`register_method`.
"""

from cl_platform.methods.base import ContinualMethod, KDBatch, MethodConfig, StepInputs
from cl_platform.methods.registry import available_methods, get_method, register_method
from cl_platform.methods import mode, moe_lora, olora, seq_lora  # noqa: F401  (registration)

__all__ = [
    "ContinualMethod",
    "KDBatch",
    "MethodConfig",
    "StepInputs",
    "available_methods",
    "get_method",
    "register_method",
]
