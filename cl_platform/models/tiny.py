"""A small Chameleon-architecture model built from a config, for laptops and tests.

:func:`build_tiny_model` returns a randomly initialised ``transformers.ChameleonForConditionalGeneration``
for a :class:`~cl_platform.models.modality.ModalitySpec`: same decoder blocks as Chameleon-7B /
Anole (RMSNorm, q/k LayerNorm, RoPE, SwiGLU MLP named ``gate_proj``/``up_proj``/``down_proj``,
which is what MoDE targets), only smaller. Nothing is downloaded.

The spec's ids go into the config: ``pad_token_id``/``bos_token_id``/``eos_token_id`` as usual,
plus ``boi_token_id``, ``eoi_token_id``, ``sep_token_id`` and the whole spec as ``modality_spec``
(a dict, see :meth:`ModalitySpec.to_dict`), so a saved model says which ids are image tokens.

Chameleon's VQ image encoder is part of the architecture but unused here (a benchmark with its own
image tokeniser tokenises its images); it is built as small as the architecture allows and frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

from cl_platform.models.modality import ModalitySpec

#: Names of the MLP projections MoDE (and the LoRA baselines) target by default.
MLP_MODULE_NAMES: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")

#: Smallest VQ-VAE the Chameleon architecture builds (GroupNorm needs 32 channels); ~60k
#: parameters that a benchmark with its own image tokeniser never uses (it has its own image tokeniser).
TINY_VQ_CONFIG: dict = {
    "embed_dim": 4,
    "num_embeddings": 8,
    "latent_channels": 4,
    "resolution": 8,
    "in_channels": 1,
    "base_channels": 32,
    "channel_multiplier": [1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
}


@dataclass
class TinyModelConfig:
    """Size of a tiny Chameleon-architecture decoder.

    Attributes:
        hidden_size: width of the residual stream.
        num_hidden_layers: number of decoder blocks.
        num_attention_heads: attention heads (``hidden_size`` must be divisible by it).
        num_key_value_heads: key/value heads (grouped-query attention when below the head count);
            ``None`` means one per attention head.
        intermediate_size: width of the SwiGLU MLP (``gate_proj``/``up_proj`` out, ``down_proj`` in).
        max_position_embeddings: longest sequence the model is meant for (RoPE, so not a hard cap).
        rope_theta: RoPE base frequency.
        rms_norm_eps: epsilon of the RMSNorms.
        initializer_range: std of the normal weight initialisation.
        attention_dropout: dropout on attention probabilities during training.
        tie_word_embeddings: share the input embedding and the LM head.
        vq_config: config of Chameleon's (unused) VQ image encoder; small by default.
    """

    hidden_size: int = 128
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    intermediate_size: int = 256
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    vq_config: dict = field(default_factory=lambda: dict(TINY_VQ_CONFIG))

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TinyModelConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"TinyModelConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        kv = self.num_key_value_heads
        if kv is not None and (kv <= 0 or self.num_attention_heads % kv):
            raise ValueError(
                f"TinyModelConfig.num_key_value_heads ({kv}) must be positive and divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "TinyModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TinyModelConfig.from_dict: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))


def default_vocabulary_map(spec: ModalitySpec) -> dict[str, int]:
    """A minimal ``vocabulary_map`` for ``spec`` when no tokenizer vocabulary is given.

    Names the special ids and the image codes (``<img_k>`` for code ``k``). None of the names
    starts with ``IMGIMG``, so upstream Chameleon's image-logit mask stays empty (see
    :mod:`cl_platform.models.chameleon`).
    """
    lo, hi = spec.image_code_range
    vmap = {"<pad>": spec.pad_id, "<sep>": spec.sep_id, "<boi>": spec.boi_id, "<eoi>": spec.eoi_id}
    vmap.update({f"<img_{k}>": lo + k for k in range(hi - lo)})
    return vmap


def chameleon_config(
    spec: ModalitySpec,
    config: TinyModelConfig | None = None,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    vocabulary_map: Mapping[str, int] | None = None,
):
    """The ``transformers.ChameleonConfig`` of a tiny model for ``spec``.

    Args:
        spec: the vocabulary's token layout (size, pad, boi/eoi, sep, image ranges).
        config: model size; :class:`TinyModelConfig` defaults when ``None``.
        bos_token_id / eos_token_id: sequence start / end ids (Chameleon defaults 1 / 2 when ``None``).
        vocabulary_map: token name -> id (usually the tokenizer's vocabulary); stored in the config
            as upstream Chameleon does. :func:`default_vocabulary_map` when ``None``.
    """
    from transformers import ChameleonConfig

    cfg = config or TinyModelConfig()
    vmap = dict(vocabulary_map) if vocabulary_map is not None else default_vocabulary_map(spec)
    bad = {k: v for k, v in vmap.items() if not 0 <= int(v) < spec.vocab_size}
    if bad:
        raise ValueError(f"vocabulary_map: ids outside the spec's vocabulary [0, {spec.vocab_size}): {bad}")
    bos = 1 if bos_token_id is None else int(bos_token_id)
    eos = 2 if eos_token_id is None else int(eos_token_id)
    for name, value in (("bos_token_id", bos), ("eos_token_id", eos)):
        if not 0 <= value < spec.vocab_size:
            raise ValueError(f"{name}={value} outside the spec's vocabulary [0, {spec.vocab_size})")
    return ChameleonConfig(
        vocab_size=spec.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads or cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.initializer_range,
        attention_dropout=cfg.attention_dropout,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=spec.pad_id,
        bos_token_id=bos,
        eos_token_id=eos,
        vq_config=dict(cfg.vq_config),
        vocabulary_map=vmap,
        # Not ChameleonConfig fields; kept in config.json so a saved model carries its layout.
        boi_token_id=spec.boi_id,
        eoi_token_id=spec.eoi_id,
        sep_token_id=spec.sep_id,
        modality_spec=spec.to_dict(),
        tiny_model_config=cfg.to_dict(),
    )


def build_tiny_model(
    spec: ModalitySpec,
    config: TinyModelConfig | None = None,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    vocabulary_map: Mapping[str, int] | None = None,
    seed: int | None = None,
):
    """A randomly initialised tiny ``ChameleonForConditionalGeneration`` for ``spec``.

    Arguments as in :func:`chameleon_config`; ``seed`` makes the initialisation reproducible
    (the global torch RNG is restored afterwards). The VQ encoder is frozen (it is not used).
    Image generation is allowed (:func:`cl_platform.models.chameleon.allow_image_generation`),
    so a ``vocabulary_map`` with upstream ``IMGIMG*`` names still trains and generates images.
    """
    import torch
    from transformers import ChameleonForConditionalGeneration

    from cl_platform.models.chameleon import allow_image_generation

    hf_config = chameleon_config(
        spec, config, bos_token_id=bos_token_id, eos_token_id=eos_token_id, vocabulary_map=vocabulary_map
    )
    if seed is None:
        model = ChameleonForConditionalGeneration(hf_config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = ChameleonForConditionalGeneration(hf_config)
    model.model.vqmodel.requires_grad_(False)
    allow_image_generation(model)
    return model


def mlp_module_names(model) -> list[str]:
    """Fully qualified names of every ``gate_proj``/``up_proj``/``down_proj`` linear layer of ``model``."""
    return [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in MLP_MODULE_NAMES]


def count_parameters(model, *, trainable_only: bool = False, exclude_vq: bool = True) -> int:
    """Number of parameters of ``model`` (by default without the unused VQ image encoder)."""
    total = 0
    for name, p in model.named_parameters():
        if exclude_vq and ".vqmodel." in f".{name}":
            continue
        if trainable_only and not p.requires_grad:
            continue
        total += p.numel()
    return total


__all__ = [
    "MLP_MODULE_NAMES",
    "TINY_VQ_CONFIG",
    "TinyModelConfig",
    "build_tiny_model",
    "chameleon_config",
    "count_parameters",
    "default_vocabulary_map",
    "mlp_module_names",
]
