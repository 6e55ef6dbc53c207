"""The fused MoDE layer.

All adapter weights of a targeted linear layer take part in two matmuls: the text experts' A
matrices and the visual A are stacked (``[E * r_text + r_image, in]``), the hidden activations are
weighted by a per-token gate (softmax router weights for text tokens, a one-hot gate on the visual
LoRA for image tokens, each times its LoRA scale), and the stacked B matrices map back. No Python
loop over experts, no boolean-mask gather or scatter, no host synchronisation: text and image
tokens are separated by multiplying with the routing mask, which also gives exactly zero gradient
across modalities.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from cl_platform.mode.config import ModeConfig
from cl_platform.mode.routing import RoutingState


def mode_delta(
    x: torch.Tensor,
    image_mask: Optional[torch.Tensor],
    text_A: torch.Tensor,
    text_B: torch.Tensor,
    router: torch.Tensor,
    image_A: Optional[torch.Tensor],
    image_B: Optional[torch.Tensor],
    *,
    num_experts: int,
    scale_text: float,
    scale_image: float,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Adapter output of MoDE for inputs ``x[..., in]`` (the base layer's output is added by the caller).

    Args:
        x: layer input, any leading shape.
        image_mask: bool/float mask of shape ``x.shape[:-1]`` (True/1 = image token); None for the
            modality-coupled form (``image_A is None``), where every token takes the text experts.
        text_A: ``[E * r_text, in]`` stacked expert A matrices (expert e owns rows e*r..(e+1)*r).
        text_B: ``[out, E * r_text]`` stacked expert B matrices.
        router: ``[E, in]`` router weight.
        image_A, image_B: ``[r_image, in]`` and ``[out, r_image]``, or None.
    """
    lead = x.shape[:-1]
    xf = x.reshape(-1, x.shape[-1])
    gate = torch.softmax(F.linear(xf, router), dim=-1)  # [N, E]
    n = xf.shape[0]
    r_text = text_A.shape[0] // num_experts
    xd = F.dropout(xf, p=dropout, training=training) if dropout > 0.0 else xf
    if image_A is None:
        h = F.linear(xd, text_A).view(n, num_experts, r_text) * (gate * scale_text).unsqueeze(-1)
        return F.linear(h.view(n, -1), text_B).view(*lead, -1)
    img = image_mask.reshape(n, 1).to(xf.dtype)
    A = torch.cat([text_A, image_A], dim=0)
    B = torch.cat([text_B, image_B], dim=1)
    h = F.linear(xd, A)  # [N, E*r_text + r_image]
    k = num_experts * r_text
    h_text = h[:, :k].view(n, num_experts, r_text) * (gate * ((1.0 - img) * scale_text)).unsqueeze(-1)
    h_img = h[:, k:] * (img * scale_image)
    h = torch.cat([h_text.view(n, k), h_img], dim=1)
    return F.linear(h, B).view(*lead, -1)


class ModeLayer(BaseTunerLayer):
    """Adapter state of one targeted layer (one entry per adapter name)."""

    adapter_layer_names = ("mode_text_A", "mode_text_B", "mode_router", "mode_image_A", "mode_image_B")
    other_param_names = ("mode_num_experts", "mode_scale_text", "mode_scale_image", "mode_dropout", "mode_decoupled")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.mode_text_A = nn.ParameterDict({})
        self.mode_text_B = nn.ParameterDict({})
        self.mode_router = nn.ParameterDict({})
        self.mode_image_A = nn.ParameterDict({})
        self.mode_image_B = nn.ParameterDict({})
        self.mode_num_experts: dict[str, int] = {}
        self.mode_scale_text: dict[str, float] = {}
        self.mode_scale_image: dict[str, float] = {}
        self.mode_dropout: dict[str, float] = {}
        self.mode_decoupled: dict[str, bool] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.routing: Optional[RoutingState] = None
        self.kwargs = kwargs
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"MoDE adapts torch.nn.Linear layers only, got {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features

    def update_layer(self, adapter_name: str, config: ModeConfig, **kwargs: Any) -> None:
        E, r_t, r_v = int(config.num_experts), int(config.r_text), int(config.r_image)
        weight = self.get_base_layer().weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        device = weight.device
        gen = None
        if config.init_seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(int(config.init_seed))

        def kaiming(rows: int) -> torch.Tensor:
            # nn.Linear's default (kaiming_uniform with a=sqrt(5)), as PEFT LoRA initialises A.
            bound = 1.0 / math.sqrt(self.in_features)
            return (torch.rand(rows, self.in_features, generator=gen) * 2 - 1) * bound

        self.mode_text_A[adapter_name] = nn.Parameter(kaiming(E * r_t).to(device=device, dtype=dtype))
        self.mode_text_B[adapter_name] = nn.Parameter(torch.zeros(self.out_features, E * r_t, device=device, dtype=dtype))
        self.mode_router[adapter_name] = nn.Parameter(kaiming(E).to(device=device, dtype=dtype))
        if config.decoupled:
            self.mode_image_A[adapter_name] = nn.Parameter(kaiming(r_v).to(device=device, dtype=dtype))
            self.mode_image_B[adapter_name] = nn.Parameter(
                torch.zeros(self.out_features, r_v, device=device, dtype=dtype)
            )
        self.mode_num_experts[adapter_name] = E
        self.mode_scale_text[adapter_name] = config.scale_text
        self.mode_scale_image[adapter_name] = config.scale_image
        self.mode_dropout[adapter_name] = float(config.lora_dropout)
        self.mode_decoupled[adapter_name] = bool(config.decoupled)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)


class ModeLinear(nn.Module, ModeLayer):
    """``nn.Linear`` with MoDE adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: ModeConfig, **kwargs: Any) -> None:
        super().__init__()
        ModeLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise NotImplementedError(
            "MoDE adapters cannot be merged into the base weights: the update depends on each token's "
            "modality and router weights. Keep the adapter unmerged, or use unload() to drop it."
        )

    def unmerge(self) -> None:
        if self.merged_adapters:
            warnings.warn("MoDE layers are never merged; nothing to unmerge.")

    def adapter_output(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        text_A = self.mode_text_A[adapter]
        decoupled = self.mode_decoupled[adapter]
        mask = None
        if decoupled:
            if self.routing is None:
                raise RuntimeError("MoDE layer is not attached to a routing state (build it through get_peft_model)")
            mask = self.routing.mask_for(x)
        return mode_delta(
            x.to(text_A.dtype),
            mask,
            text_A,
            self.mode_text_B[adapter],
            self.mode_router[adapter],
            self.mode_image_A[adapter] if decoupled else None,
            self.mode_image_B[adapter] if decoupled else None,
            num_experts=self.mode_num_experts[adapter],
            scale_text=self.mode_scale_text[adapter],
            scale_image=self.mode_scale_image[adapter],
            dropout=self.mode_dropout[adapter],
            training=self.training,
        )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for adapter in self.active_adapters:
            if adapter not in self.mode_text_A:
                continue
            result = result + self.adapter_output(x, adapter).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "mode." + super().__repr__()
