"""``ModeConfig``: the PEFT configuration of MoDE (Modality-Decoupled Experts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from cl_platform.mode.routing import GENERATION_ROUTINGS
from cl_platform.models.modality import normalize_ranges

#: The ``peft_type`` string written to ``adapter_config.json``. PEFT resolves it through its
#: mapping dicts, which hold it only after ``import cl_platform.mode``; without that import, PEFT's
#: lookup fails with a KeyError that carries this text, which says what is missing.
MODE_PEFT_TYPE = "MODE (import cl_platform.mode to load this adapter)"

DEFAULT_TARGET_MODULES = ("gate_proj", "up_proj", "down_proj")


@dataclass
class ModeConfig(PeftConfig):
    """Configuration of a MoDE adapter.

    For every targeted linear layer with frozen weight W, a text token x gets
    ``W x + (alpha / r_text) * sum_e softmax(R x)_e * B_e A_e x`` (``num_experts`` experts of rank
    ``r_text``, router R) and an image token gets ``W x + (alpha / r_image) * B_v A_v x``. B is
    initialised to zero, so a fresh adapter is exactly the base model. A token is an image token
    when its id falls in one of ``image_token_ranges``. Inside an image-generation call
    (:func:`cl_platform.mode.generating_image`) ``generation_routing="sequence"`` routes every
    token, its text prompt included, to the visual LoRA.
    """

    r_text: int = field(default=8, metadata={"help": "Rank of each text LoRA expert."})
    r_image: int = field(default=8, metadata={"help": "Rank of the visual LoRA (image tokens)."})
    lora_alpha: float = field(
        default=16, metadata={"help": "LoRA scaling numerator: text scale alpha/r_text, image scale alpha/r_image."}
    )
    num_experts: int = field(default=4, metadata={"help": "Number of text LoRA experts mixed by the softmax router."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input (not on the router)."})
    target_modules: Optional[Union[list[str], str]] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "Module names (or a regex) of the linear layers to adapt; default the MLP projections."},
    )
    image_token_ranges: list[list[int]] = field(
        default_factory=list,
        metadata={
            "help": "List of [lo, hi) token-id ranges routed to the visual LoRA. Include the model's "
            "begin/end-of-image ids by listing them. Usually ModalitySpec.image_token_ranges."
        },
    )
    decoupled: bool = field(
        default=True,
        metadata={
            "help": "True: MoDE (image tokens take the visual LoRA). False: modality-coupled MoELoRA, every "
            "token takes the routed text experts and no visual LoRA is built."
        },
    )
    generation_routing: str = field(
        default="token",
        metadata={
            "help": "How image-generation calls route: 'token' (by each token's id, as every other call) or "
            "'sequence' (every token of the call, its text prompt included, to the visual LoRA)."
        },
    )
    init_seed: Optional[int] = field(
        default=None, metadata={"help": "Seed for the adapter's A and router initialisation (None: global RNG)."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only adapt these layer indices (as in LoraConfig)."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Name of the layer list used with layers_to_transform."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names (or a regex) never adapted."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules trained and saved in full (PEFT semantics)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MODE_PEFT_TYPE
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = sorted(set(self.target_modules))
        for name in ("r_text", "num_experts"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModeConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.decoupled and int(self.r_image) <= 0:
            raise ValueError(f"ModeConfig.r_image must be a positive integer, got {self.r_image!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"ModeConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.generation_routing not in GENERATION_ROUTINGS:
            raise ValueError(f"ModeConfig.generation_routing must be one of {', '.join(GENERATION_ROUTINGS)}, "
                             f"got {self.generation_routing!r}")
        if self.generation_routing == "sequence" and not self.decoupled:
            raise ValueError("ModeConfig.generation_routing 'sequence' routes to the visual LoRA, which a "
                             "modality-coupled adapter (decoupled=False) does not have; use 'token'")
        self.image_token_ranges = normalize_ranges(self.image_token_ranges, what="ModeConfig.image_token_ranges")
        if self.decoupled and not self.image_token_ranges:
            raise ValueError(
                "ModeConfig.image_token_ranges is empty: MoDE needs the image-token id ranges of the model "
                "(e.g. ModalitySpec.image_token_ranges), or decoupled=False for a modality-coupled adapter"
            )

    @property
    def scale_text(self) -> float:
        return float(self.lora_alpha) / float(self.r_text)

    @property
    def scale_image(self) -> float:
        return float(self.lora_alpha) / float(self.r_image) if self.decoupled else 0.0
