"""The interface every continual-learning method implements.

A method has a name, builds its adapter on a backbone, and may add loss terms to the task's
cross-entropy. Hooks around each task (``before_task`` / ``after_task``), after each optimizer step
(``after_step``) and a state dict let a method with its own state (frozen earlier adapters, EWC
importances) plug in without touching the others or the training loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from cl_platform.fields import setting, validate
from cl_platform.mode.routing import GENERATION_ROUTINGS
from cl_platform.models.modality import ModalitySpec
from cl_platform.methods.kd import TeacherTargets


@dataclass
class MethodConfig:
    """Hyperparameters shared by the methods (each method reads the fields it needs).

    Each field's documentation, command-line flag, bounds and sweep role are in its declaration
    (:func:`cl_platform.fields.setting`); construction checks every field (``ValueError`` naming it).
    """

    r_text: int = setting(8, ge=1, sweep="search",
                          help="rank of each text expert (MoDE, MoELoRA) or of the plain LoRA (SeqLoRA)")
    r_image: int = setting(8, ge=1, sweep="search", help="rank of MoDE's visual LoRA")
    num_experts: int = setting(4, ge=1, sweep="search", help="text experts (MoDE, MoELoRA)")
    lora_alpha: float = setting(16.0, gt=0, sweep="search", help="LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = setting(0.05, ge=0, lt=1, sweep="search", help="dropout on the adapter input")
    target_modules: list[str] = setting(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"], sweep="fixed",
                                        help="names of the linear layers to adapt")
    kd_weight: float = setting(0.3, ge=0, sweep="search", help="lambda of the KD term (methods with KD only)")
    kd_temperature: float = setting(2.0, gt=0, sweep="fixed", help="T of the KD term")
    kd_top_k: int = setting(256, ge=1, sweep="fixed", help="K, teacher ids the KD distributions are renormalised on")
    generation_routing: str = setting("token", choices=GENERATION_ROUTINGS, sweep="search",
                                      help="MoDE (mode, mode_nokd): how image-generation forwards (the KD stream, the "
                                           "generation probes) route: 'token' by each token's id, 'sequence' every "
                                           "token, the text prompt included, to the visual LoRA; understanding "
                                           "always routes by token id (one of: token, sequence)")
    olora_slots: int = setting(8, ge=1, sweep="fixed",
                               help="task slots of O-LoRA's adapter (a LoRA of rank r_text each): the most tasks "
                                    "an olora sequence, with the runs it continues, can learn")
    olora_lambda: float = setting(0.5, ge=0, sweep="search",
                                  help="lambda_1 of O-LoRA's orthogonality term (olora only)")
    seed: int = setting(0, ge=0, cli=False, help="seed of the adapter initialisation (the run's --seed)")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KDBatch:
    """A batch of the image-generation stream with the frozen teacher's targets.

    Attributes:
        input_ids: ``[B, L]`` token ids.
        attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding.
        loss_mask: ``[B, L]`` True at the logit positions the KD term counts (positions that
            predict image tokens of the stream, padding excluded).
        targets: the teacher's top-K ids and log-probs aligned with the logits.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    targets: TeacherTargets


@dataclass
class StepInputs:
    """What the training loop hands a method at each step besides the task batch's loss."""

    task_batch: dict[str, torch.Tensor]
    kd_batch: Optional[KDBatch] = None
    step: int = 0


class ContinualMethod(ABC):
    """A continual-learning method: build the adapter, add loss terms, keep its own state."""

    #: registry name (``--method NAME``)
    name: ClassVar[str]
    #: one-line description for ``--help`` and reports
    description: ClassVar[str] = ""
    #: whether the training loop must supply :class:`KDBatch` inputs (teacher cache needed)
    needs_teacher: ClassVar[bool] = False

    def __init__(self, config: Optional[MethodConfig] = None) -> None:
        self.config = config or MethodConfig()

    @abstractmethod
    def build(self, model: nn.Module, spec: ModalitySpec) -> nn.Module:
        """Wrap ``model`` with this method's adapter (a ``peft.PeftModel``); the backbone stays frozen."""

    def loss_terms(self, model: nn.Module, inputs: StepInputs) -> dict[str, torch.Tensor]:
        """Extra loss terms (already weighted) added to the task cross-entropy. Default: none."""
        return {}

    def before_task(self, model: nn.Module, task: str) -> None:
        """Called before training on ``task`` (e.g. snapshot parameters)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (e.g. restore parameters the step must not change)."""

    def after_task(self, model: nn.Module, task: str, data: Any = None) -> None:
        """Called after training on ``task`` (e.g. fill a replay buffer, compute importances)."""

    def state_dict(self) -> dict[str, Any]:
        """Method state saved in checkpoints besides the adapter weights."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
