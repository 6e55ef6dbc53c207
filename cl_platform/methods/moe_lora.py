"""MoELoRA: modality-coupled experts (the same router and experts for every token)."""

from __future__ import annotations

import peft
from torch import nn

from cl_platform.methods.base import ContinualMethod
from cl_platform.methods.mode import mode_config
from cl_platform.methods.registry import register_method
from cl_platform.models.modality import ModalitySpec


@register_method
class MoeLoraMethod(ContinualMethod):
    name = "moe_lora"
    description = "MoELoRA: num_experts routed LoRA experts shared by text and image tokens, no KD"

    def build(self, model: nn.Module, spec: ModalitySpec) -> nn.Module:
        return peft.get_peft_model(model, mode_config(self, spec, decoupled=False))
