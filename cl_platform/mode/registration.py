"""Registers MoDE with PEFT's method tables.

``peft.utils.register_peft_method`` only accepts names of PEFT's fixed ``PeftType`` enum, so MoDE
is added to the same mapping dicts it fills (config, tuner and prefix), under a string key. The
key is what ``adapter_config.json`` stores as ``peft_type``; loading a MoDE adapter in a process
that has not imported :mod:`cl_platform.mode` therefore fails in PEFT's lookup with a KeyError
naming the import, instead of building some other adapter.
"""

from __future__ import annotations

from peft import mapping

from cl_platform.mode.config import MODE_PEFT_TYPE, ModeConfig
from cl_platform.mode.model import ModeModel


def register() -> None:
    """Idempotent: add MoDE to PEFT's mapping dicts."""
    for table, value in (
        (mapping.PEFT_TYPE_TO_CONFIG_MAPPING, ModeConfig),
        (mapping.PEFT_TYPE_TO_TUNER_MAPPING, ModeModel),
        (mapping.PEFT_TYPE_TO_PREFIX_MAPPING, ModeModel.prefix),
    ):
        existing = table.get(MODE_PEFT_TYPE)
        if existing is not None and existing is not value:
            raise RuntimeError(f"PEFT already maps {MODE_PEFT_TYPE!r} to {existing!r}")
        table[MODE_PEFT_TYPE] = value
