"""O-LoRA: a LoRA of rank ``r_text`` per task, earlier tasks' LoRAs frozen, each new one kept
orthogonal to them.

All tasks share one PEFT LoRA of rank ``r_text * olora_slots`` on the target modules: slot ``s``
is rows ``[s*r, (s+1)*r)`` of every ``lora_A`` and the same columns of every ``lora_B``, and
``lora_alpha`` is scaled by the slot count so each slot's scale is ``lora_alpha / r_text``. At
inference the full-rank product sums every slot's ``B_s A_s x``; ``B`` starts at zero, so a slot
no task has used contributes nothing. While task ``t`` learns only its slot: gradient hooks zero
the other slots' gradients and :meth:`OLoraMethod.after_step` copies them back after each step
(weight decay would otherwise shrink them). The loss adds ``olora_lambda * sum over layers and
earlier slots s of ||A_s A_t^T||_F^2``.

Everything that says which slots are taken is in the adapter weights (a used slot has a non-zero
``B``), so a run continuing another run's adapter or a lineage round finds its slot from them.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import peft
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from cl_platform.methods.base import ContinualMethod, MethodConfig, StepInputs
from cl_platform.methods.registry import register_method
from cl_platform.models.modality import ModalitySpec


def lora_weights(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Parameter]]:
    """``(layer name, A weight [R, in], B weight [out, R])`` of every LoRA layer of ``model``'s
    active adapter (a DDP wrapper is looked through)."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    yield name, module.lora_A[adapter].weight, module.lora_B[adapter].weight


def slot_span(slot: int, rank: int) -> slice:
    """The rows of ``A`` (columns of ``B``) of slot ``slot``."""
    return slice(slot * rank, (slot + 1) * rank)


def orthogonality_loss(earlier: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``sum_{j,k} (A_e A_t^T)[j,k]^2``: the squared entries of the product of the earlier slots' ``A``
    (``[n*r, in]``, the slots stacked; ``[0, in]`` when none) and the current slot's (``[r, in]``),
    which is the sum over the earlier slots of each one's loss with the current slot."""
    return (earlier @ current.transpose(0, 1)).pow(2).sum()


def used_slots(model: nn.Module, rank: int, slots: int) -> list[bool]:
    """Per slot, whether any layer's ``B`` has a non-zero entry in its columns."""
    used = [False] * slots
    for _, _, b in lora_weights(model):
        for s in range(slots):
            used[s] = used[s] or bool(b[:, slot_span(s, rank)].detach().ne(0).any())
    return used


@register_method
class OLoraMethod(ContinualMethod):
    name = "olora"
    description = ("O-LoRA: a LoRA of rank r_text per task (olora_slots slots), earlier ones frozen, the new one "
                   "kept orthogonal to them (olora_lambda)")

    def __init__(self, config: Optional[MethodConfig] = None) -> None:
        super().__init__(config)
        #: task -> slot of every task learned or in progress
        self.slots: dict[str, int] = {}
        #: the task being learned (between before_task and after_task), else None
        self.training: Optional[str] = None
        self.current: Optional[int] = None
        self._hooks: list[Any] = []
        self._snapshot: list[tuple[nn.Parameter, torch.Tensor, str]] = []

    def build(self, model: nn.Module, spec: ModalitySpec) -> nn.Module:
        c = self.config
        torch.manual_seed(c.seed)
        cfg = peft.LoraConfig(
            r=c.r_text * c.olora_slots, lora_alpha=c.lora_alpha * c.olora_slots, lora_dropout=c.lora_dropout,
            target_modules=list(c.target_modules), task_type="CAUSAL_LM",
        )
        return peft.get_peft_model(model, cfg)

    def pick_slot(self, model: nn.Module, task: str) -> int:
        """The slot ``task`` learns in: its own when resumed in the middle of it, else the first one whose
        ``B`` is zero in every layer."""
        if self.training == task and task in self.slots:
            return self.slots[task]
        c = self.config
        used = used_slots(model, c.r_text, c.olora_slots)
        for s, taken in enumerate(used):
            if not taken:
                return s
        raise ValueError(f"olora: all {c.olora_slots} task slots of the adapter are used, no slot left for task "
                         f"{task!r}; raise MethodConfig.olora_slots (--olora-slots) to at least the number of "
                         "tasks the sequence and the runs it continues learn")

    def before_task(self, model: nn.Module, task: str) -> None:
        self._release()
        slot = self.pick_slot(model, task)
        self.slots[task], self.training, self.current = slot, task, slot
        span = slot_span(slot, self.config.r_text)
        for _, a, b in lora_weights(model):
            for p, kind in ((a, "A"), (b, "B")):
                keep = torch.zeros(p.shape[0], 1) if kind == "A" else torch.zeros(1, p.shape[1])
                keep[(span, 0) if kind == "A" else (0, span)] = 1
                keep = keep.to(device=p.device, dtype=p.dtype)
                self._hooks.append(p.register_hook(lambda g, keep=keep: g * keep))
                self._snapshot.append((p, p.detach().clone(), kind))

    def after_step(self, model: nn.Module) -> None:
        """Put back every slot but the current one (as they were when the task started)."""
        if self.current is None:
            return
        span = slot_span(self.current, self.config.r_text)
        with torch.no_grad():
            for p, saved, kind in self._snapshot:
                if kind == "A":
                    p[: span.start].copy_(saved[: span.start])
                    p[span.stop:].copy_(saved[span.stop:])
                else:
                    p[:, : span.start].copy_(saved[:, : span.start])
                    p[:, span.stop:].copy_(saved[:, span.stop:])

    def loss_terms(self, model: nn.Module, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.current is None:
            return {}
        r, span = self.config.r_text, slot_span(self.current, self.config.r_text)
        total: Optional[torch.Tensor] = None
        for _, a, _ in lora_weights(model):
            with torch.autocast(device_type=a.device.type, enabled=False):
                term = orthogonality_loss(a[: self.current * r].detach().float(), a[span].float())
            total = term if total is None else total + term
        if total is None:
            return {}
        return {"orth": self.config.olora_lambda * total}

    def after_task(self, model: nn.Module, task: str, data: Any = None) -> None:
        self._release()
        self.training, self.current = None, None

    def _release(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self._snapshot = [], []

    def state_dict(self) -> dict[str, Any]:
        return {"slots": dict(self.slots), "training": self.training}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.slots = {str(k): int(v) for k, v in state.get("slots", {}).items()}
        self.training = state.get("training")
