"""Token-id routing shared by every MoDE layer of a model.

The image-token mask is computed once per forward of the model (a forward pre-hook reads the
``input_ids`` of that forward, so ``generate()`` with a KV cache routes each new token by its own
id) and read by every MoDE layer. Gradient checkpointing re-runs layers during backward, possibly
after other forwards changed the mask; the checkpoint function is wrapped so the re-run sees the
mask captured when the layer first ran.

Image generation may route differently (the state's ``generation_routing``): ``token`` routes a
generation call like any other, by each token's id; ``sequence`` routes every token of it, its
text prompt included, to the visual LoRA. A caller says "this call generates an image" with
:func:`generating_image`; while it is open every forward's mask is all-image, whatever the
number of tokens (a KV-cached ``generate()`` included). Understanding always routes by token id.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from cl_platform.models.modality import image_token_mask


#: The values of ``generation_routing``: ``token`` (by each token's id) or ``sequence`` (every
#: token of an image-generation call to the visual LoRA).
GENERATION_ROUTINGS = ("token", "sequence")


class RoutingError(RuntimeError):
    """A MoDE layer ran without a routing mask that matches its input."""


class RoutingState:
    """The current forward's image-token mask (``True`` = image token), shared by all layers.

    ``generation_routing`` (one of :data:`GENERATION_ROUTINGS`) is how image-generation calls
    route; ``all_image`` is True while such a call routes every token to the visual LoRA.
    """

    def __init__(self, image_token_ranges: Sequence[Sequence[int]], generation_routing: str = "token") -> None:
        if generation_routing not in GENERATION_ROUTINGS:
            raise ValueError(f"generation_routing must be one of {', '.join(GENERATION_ROUTINGS)}, "
                             f"got {generation_routing!r}")
        self.image_token_ranges = [list(r) for r in image_token_ranges]
        self.generation_routing = generation_routing
        self.all_image = False
        self.image_mask: Optional[torch.Tensor] = None
        self.explicit_mask: Optional[torch.Tensor] = None
        self.reason_missing = "no forward has run yet"

    def set_from_ids(self, input_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor] = None) -> None:
        """The mask of a forward: the explicit mask if one is set, else all-image inside an image
        generation routed by sequence, else the image tokens among ``input_ids``."""
        if self.explicit_mask is not None:
            self.image_mask = self.explicit_mask
        elif self.all_image and (input_ids is not None or inputs_embeds is not None):
            like = input_ids if input_ids is not None else inputs_embeds[..., 0]
            self.image_mask = torch.ones(like.shape, dtype=torch.bool, device=like.device)
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

    @contextlib.contextmanager
    def generating_image(self) -> Iterator[None]:
        """Forwards inside route as image generation does (all-image under ``sequence``)."""
        previous = self.all_image
        self.all_image = self.generation_routing == "sequence"
        try:
            yield
        finally:
            self.all_image = previous

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
        self.state.set_from_ids(_input_ids_of(args, kwargs), kwargs.get("inputs_embeds"))
        for m in self._ckpt_modules:
            func = getattr(m, "_gradient_checkpointing_func", None)
            if func is not None and getattr(func, "_mode_routing_state", None) is not self.state:
                m._gradient_checkpointing_func = wrap_checkpoint_function(func, self.state)
        return None

    def remove(self) -> None:
        self.handle.remove()


def routing_state_of(model: nn.Module) -> Optional[RoutingState]:
    """The :class:`RoutingState` of a model with MoDE layers (PEFT- or DDP-wrapped), else ``None``."""
    for module in model.modules():
        state = getattr(module, "routing", None)
        if isinstance(state, RoutingState):
            return state
    return None


@contextlib.contextmanager
def generating_image(model: nn.Module) -> Iterator[None]:
    """``with generating_image(model):`` the forwards inside (``generate()`` included) generate an
    image and route as the model's ``generation_routing`` says; nothing changes for a model
    without MoDE layers or routed by ``token``."""
    state = routing_state_of(model)
    if state is None:
        yield
        return
    with state.generating_image():
        yield
