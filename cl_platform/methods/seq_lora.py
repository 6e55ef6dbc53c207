"""Sequential LoRA: one plain PEFT LoRA trained task after task."""

from __future__ import annotations

import peft
import torch
from torch import nn

from cl_platform.methods.base import ContinualMethod
from cl_platform.methods.registry import register_method
from cl_platform.models.modality import ModalitySpec


@register_method
class SeqLoraMethod(ContinualMethod):
    name = "seq_lora"
    description = "plain PEFT LoRA of rank r_text on the same modules, trained task after task"

    def build(self, model: nn.Module, spec: ModalitySpec) -> nn.Module:
        c = self.config
        torch.manual_seed(c.seed)
        cfg = peft.LoraConfig(
            r=c.r_text, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
            target_modules=list(c.target_modules), task_type="CAUSAL_LM",
        )
        return peft.get_peft_model(model, cfg)
