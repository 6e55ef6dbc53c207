"""MoDE and its no-KD ablation."""

from __future__ import annotations

import peft
import torch
from torch import nn

from cl_platform.methods.base import ContinualMethod, StepInputs
from cl_platform.methods.registry import register_method
from cl_platform.mode import ModeConfig, generating_image
from cl_platform.models.modality import ModalitySpec
from cl_platform.methods.kd import kd_loss


def mode_config(method: ContinualMethod, spec: ModalitySpec, *, decoupled: bool) -> ModeConfig:
    c = method.config
    return ModeConfig(
        r_text=c.r_text, r_image=c.r_image, num_experts=c.num_experts, lora_alpha=c.lora_alpha,
        lora_dropout=c.lora_dropout, target_modules=list(c.target_modules),
        image_token_ranges=[list(r) for r in spec.image_token_ranges] if decoupled else [],
        decoupled=decoupled, init_seed=c.seed, task_type="CAUSAL_LM",
        generation_routing=c.generation_routing if decoupled else "token",
    )


@register_method
class ModeMethod(ContinualMethod):
    name = "mode"
    description = "MoDE: text mixture of LoRA experts + visual LoRA + KD from the frozen base on image generation"
    needs_teacher = True

    def build(self, model: nn.Module, spec: ModalitySpec) -> nn.Module:
        return peft.get_peft_model(model, mode_config(self, spec, decoupled=True))

    def loss_terms(self, model: nn.Module, inputs: StepInputs) -> dict[str, torch.Tensor]:
        kd = inputs.kd_batch
        if kd is None or self.config.kd_weight == 0:
            return {}
        with generating_image(model):  # the KD stream is image generation: routed as the config says
            logits = model(input_ids=kd.input_ids, attention_mask=kd.attention_mask).logits
        loss = kd_loss(logits, kd.targets, kd.loss_mask, temperature=self.config.kd_temperature)
        return {"kd": self.config.kd_weight * loss}


@register_method
class ModeNoKDMethod(ModeMethod):
    name = "mode_nokd"
    description = "MoDE without knowledge distillation (ablation)"
    needs_teacher = False

    def loss_terms(self, model: nn.Module, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {}
