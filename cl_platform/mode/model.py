"""``ModeModel``: the PEFT tuner that injects MoDE layers and owns the routing."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from cl_platform.mode.config import ModeConfig
from cl_platform.mode.layer import ModeLayer, ModeLinear
from cl_platform.mode.routing import RoutingHook, RoutingState


class ModeModel(BaseTuner):
    """Creates a MoDE model from a transformers model (use ``peft.get_peft_model(model, ModeConfig(...))``).

    Besides injecting :class:`ModeLinear` layers, it registers one forward pre-hook on the wrapped
    model that computes the image-token mask from the ``input_ids`` of each forward, shared by all
    layers through one :class:`RoutingState` (which also holds the config's ``generation_routing``).
    """

    prefix: str = "mode_"
    tuner_layer_cls = ModeLayer
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model: nn.Module, config, adapter_name: str, low_cpu_mem_usage: bool = False, **kwargs) -> None:
        cfg = config[adapter_name] if isinstance(config, dict) else config
        self.routing = RoutingState(cfg.image_token_ranges, cfg.generation_routing)
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, **kwargs)
        for module in self.model.modules():
            if isinstance(module, ModeLayer):
                module.routing = self.routing
        self._routing_hook = RoutingHook(self.model, self.routing)

    def _prepare_adapter_config(self, peft_config, model_config):
        if peft_config.target_modules is None:
            raise ValueError("ModeConfig.target_modules must name the linear layers to adapt")
        return peft_config

    def _check_new_adapter_config(self, config: ModeConfig) -> None:
        super()._check_new_adapter_config(config)
        if config.image_token_ranges != self.routing.image_token_ranges and config.decoupled:
            raise ValueError(
                "All MoDE adapters of one model must share image_token_ranges: "
                f"{config.image_token_ranges} != {self.routing.image_token_ranges}"
            )
        if config.generation_routing != self.routing.generation_routing:
            raise ValueError(
                "All MoDE adapters of one model must share generation_routing: "
                f"{config.generation_routing!r} != {self.routing.generation_routing!r}"
            )

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs) -> None:
        if current_key is None:
            raise ValueError("current_key must not be None")
        if isinstance(target, ModeLinear):
            target.update_layer(adapter_name, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"MoDE target module {current_key!r} is a {type(base).__name__}; only torch.nn.Linear is supported"
            )
        new_module = ModeLinear(target, adapter_name, config)
        new_module.routing = getattr(self, "routing", None)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        if merge:
            raise NotImplementedError(
                "MoDE adapters cannot be merged into the base weights (the update depends on each token's "
                "modality and router weights); use unload() to get the base model back."
            )
        self._routing_hook.remove()
        return super()._unload_and_optionally_merge(
            merge=False, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )

    @contextlib.contextmanager
    def routing_scope(self, image_mask: torch.Tensor) -> Iterator[None]:
        """Route by an explicit image mask (for calls with ``inputs_embeds`` instead of ``input_ids``)."""
        previous = self.routing.explicit_mask
        self.routing.explicit_mask = image_mask.to(torch.bool)
        try:
            yield
        finally:
            self.routing.explicit_mask = previous
