"""MoDE (Modality-Decoupled Experts) as a PEFT method.

After ``import cl_platform.mode``, ``peft.get_peft_model(model, ModeConfig(...))`` builds a MoDE
model, and ``PeftModel.from_pretrained`` loads a saved MoDE adapter. The registration lives in
:mod:`cl_platform.mode.registration`.
"""

from cl_platform.mode.config import MODE_PEFT_TYPE, ModeConfig
from cl_platform.mode.layer import ModeLayer, ModeLinear, mode_delta
from cl_platform.mode.model import ModeModel
from cl_platform.mode.registration import register
from cl_platform.mode.routing import GENERATION_ROUTINGS, RoutingError, RoutingState, generating_image


def routing_scope(model, image_mask):
    """``with routing_scope(peft_model, mask):`` route by an explicit mask (inputs_embeds calls)."""
    tuner = getattr(model, "base_model", model)
    return tuner.routing_scope(image_mask)


__all__ = [
    "GENERATION_ROUTINGS",
    "MODE_PEFT_TYPE",
    "ModeConfig",
    "ModeLayer",
    "ModeLinear",
    "ModeModel",
    "RoutingError",
    "RoutingState",
    "generating_image",
    "mode_delta",
    "routing_scope",
]

register()
