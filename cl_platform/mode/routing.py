"""Token-id routing shared by every MoDE layer of a model.

The image-token mask is computed once per forward of the model (a forward pre-hook reads the
``input_ids`` of that forward, so ``generate()`` with a KV cache routes each new token by its own
id) and read by every MoDE layer. Gradient checkpointing re-runs layers during backward, possibly
after other forwards changed the mask; the checkpoint function is wrapped so the re-run sees the
mask captured when the layer first ran.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from cl_platform.models.modality import image_token_mask


class RoutingError(RuntimeError):
    """A MoDE layer ran without a routing mask that matches its input."""


class RoutingState:
    """The current forward's image-token mask (``True`` = image token), shared by all layers."""

    def __init__(self, image_token_ranges: Sequence[Sequence[int]]) -> None:
        self.image_token_ranges = [list(r) for r in image_token_ranges]
        self.image_mask: Optional[torch.Tensor] = None
        self.explicit_mask: Optional[torch.Tensor] = None
        self.reason_missing = "no forward has run yet"

    def set_from_ids(self, input_ids: Optional[torch.Tensor]) -> None:
        if self.explicit_mask is not None:
            self.image_mask = self.explicit_mask
        elif input_ids is None:
            self.image_mask = None
            self.reason_missing = (
                "the model was called without input_ids (inputs_embeds only); MoDE routes by token ids: "
                "pass input_ids, or wrap the call in `with cl_platform.mode.routing_scope(model, image_mask):`"
            )
        else:
            self.image_mask = image_token_mask(input_ids, self.image_token_ranges)

    @contextlib.contextmanager
    def use(self, image_mask: Optional[torch.Tensor]) -> Iterator[None]:
        previous = self.image_mask
        self.image_mask = image_mask
        try:
            yield
        finally:
            self.image_mask = previous

    def mask_for(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.image_mask
        if mask is None:
            raise RoutingError(f"MoDE layer has no routing mask: {self.reason_missing}")
        if mask.shape != x.shape[:-1]:
            raise RoutingError(
                f"MoDE routing mask has shape {tuple(mask.shape)} but the layer input has tokens of shape "
                f"{tuple(x.shape[:-1])}; the mask comes from the input_ids of the model's forward"
            )
        return mask


def _input_ids_of(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    ids = kwargs.get("input_ids")
    if ids is None and args and isinstance(args[0], torch.Tensor) and not torch.is_floating_point(args[0]):
        ids = args[0]
    return ids


def wrap_checkpoint_function(func: Callable, state: RoutingState) -> Callable:
    """Wrap a ``checkpoint``-like function so recomputation reuses the mask of the first run."""
    if getattr(func, "_mode_routing_state", None) is state:
        return func

    @functools.wraps(func)
    def checkpoint_with_routing(function: Callable, *args: Any, **kwargs: Any) -> Any:
        captured = state.image_mask

        def run(*a: Any, **k: Any) -> Any:
            with state.use(captured):
                return function(*a, **k)

        return func(run, *args, **kwargs)

    checkpoint_with_routing._mode_routing_state = state  # type: ignore[attr-defined]
    return checkpoint_with_routing


class RoutingHook:
    """Forward pre-hook on the wrapped transformers model: sets the mask for this forward."""

    def __init__(self, model: nn.Module, state: RoutingState) -> None:
        self.state = state
        self._ckpt_modules = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.state.set_from_ids(_input_ids_of(args, kwargs))
        for m in self._ckpt_modules:
            func = getattr(m, "_gradient_checkpointing_func", None)
            if func is not None and getattr(func, "_mode_routing_state", None) is not self.state:
                m._gradient_checkpointing_func = wrap_checkpoint_function(func, self.state)
        return None

    def remove(self) -> None:
        self.handle.remove()
