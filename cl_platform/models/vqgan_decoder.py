"""Chameleon / Anole's VQ-GAN decoder: image codes back to pixels.

``transformers``' Chameleon ships the VQ-VAE *encoder* (images -> codes) but no decoder, so the
image tokens an Anole model writes cannot be looked at. This module rebuilds the decoder half of
the VQ-GAN that Chameleon and Anole tokenise images with, with the parameter names of their
released tokenizer checkpoint, so its weights load as they are:

- ``quantize.embedding.weight``: the codebook, ``n_embed`` x ``embed_dim``;
- ``post_quant_conv``: a 1x1 convolution ``embed_dim`` -> ``z_channels``;
- ``decoder.conv_in``; ``decoder.mid.block_1`` / ``attn_1`` / ``block_2``;
  ``decoder.up.N.block.M`` (``num_res_blocks + 1`` residual blocks per level, ``N = 0`` the
  finest level), ``decoder.up.N.attn.M`` (at the resolutions in ``attn_resolutions``),
  ``decoder.up.N.upsample.conv`` (every level but 0); ``decoder.norm_out``; ``decoder.conv_out``.

A residual block is GroupNorm -> swish -> 3x3 conv -> GroupNorm -> swish -> dropout -> 3x3 conv,
plus the input (through a 1x1 ``nin_shortcut`` when the width changes); an attention block is
single-head self-attention over the pixels with 1x1 ``q``/``k``/``v``/``proj_out`` convolutions;
upsampling is nearest-neighbour x2 then a 3x3 conv. Pixels come out in ``[-1, 1]`` (not clamped:
:func:`to_uint8` clamps, as the reference tokenizer does before writing an image).

**Checkpoint layout.** An Anole / Chameleon checkpoint directory keeps the image tokenizer next to
the language model: ``tokenizer/vqgan.yaml`` (the architecture, under ``model.params``:
``embed_dim``, ``n_embed`` and ``ddconfig``) and ``tokenizer/vqgan.ckpt`` (a torch pickle whose
``state_dict`` holds encoder, quantizer and decoder weights). :func:`load_vqgan_decoder` reads
either the directory, the ``.ckpt`` file or a ``.safetensors`` file with the same key names, and
keeps the decoder's keys only. A ``.ckpt`` is read with ``torch.load(weights_only=True)``: plain
tensors and containers only; a file that needs arbitrary unpickling is refused (convert it once,
in a trusted environment, to safetensors; see ``docs/image_metric.md``).

**Tokens to codes.** Anole writes an image as ``<boi>`` + 1,024 BPE ids + ``<eoi>``; each BPE id
names one VQ code (``IMGIMG`` + the code's decimal places written as letters ``A``..``J`` + ``Z``, see
:func:`cl_platform.models.chameleon.chameleon_image_token_name`). :func:`image_tokens_to_codes`
maps ids to codes through that vocabulary mapping, or, for vocabularies without those names (the
tiny models), as offsets into the spec's ``image_code_range``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cl_platform.models.modality import ModalitySpec

#: Where an Anole / Chameleon checkpoint directory keeps its image tokenizer.
TOKENIZER_CONFIG = "tokenizer/vqgan.yaml"
TOKENIZER_WEIGHTS = "tokenizer/vqgan.ckpt"

#: Prefixes of the state-dict keys the decoder owns (the rest of a VQ-GAN checkpoint is dropped).
DECODER_PREFIXES: tuple[str, ...] = ("decoder.", "post_quant_conv.", "quantize.embedding.")


@dataclass(frozen=True)
class VQGANDecoderConfig:
    """Architecture of the VQ-GAN decoder; the defaults are Chameleon-7B / Anole's image tokenizer.

    Attributes:
        embed_dim: width of a codebook vector (256).
        n_embed: number of codes in the codebook (8192).
        z_channels: channels of the latent the decoder starts from (256).
        ch: base channel count; level ``i`` has ``ch * ch_mult[i]`` channels (128).
        ch_mult: channel multiplier per resolution level, finest first ((1, 1, 2, 2, 4)); the
            latent grid is ``resolution / 2 ** (len(ch_mult) - 1)`` pixels wide (32 for 512).
        num_res_blocks: residual blocks per level in the encoder; the decoder has one more (2).
        attn_resolutions: resolutions (in pixels) whose decoder levels get attention blocks (none).
        resolution: output image side in pixels (512).
        out_ch: output image channels (3, RGB).
        dropout: dropout inside the residual blocks (0.0; inactive in eval mode anyway).
        attn_type: ``"vanilla"`` (single-head pixel attention in the middle block and at
            ``attn_resolutions``) or ``"none"`` (no attention anywhere).
        num_groups: GroupNorm groups (32 in the released model; tiny test models use fewer).
    """

    embed_dim: int = 256
    n_embed: int = 8192
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    resolution: int = 512
    out_ch: int = 3
    dropout: float = 0.0
    attn_type: str = "vanilla"
    num_groups: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        for name in ("embed_dim", "n_embed", "z_channels", "ch", "num_res_blocks", "resolution", "out_ch", "num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"VQGANDecoderConfig.{name} must be a positive int, got {value!r}")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"VQGANDecoderConfig.ch_mult must be positive ints, got {self.ch_mult!r}")
        if self.resolution % self.upsampling:
            raise ValueError(f"VQGANDecoderConfig.resolution {self.resolution} is not divisible by "
                             f"2 ** (len(ch_mult) - 1) = {self.upsampling}")
        if self.attn_type not in ("vanilla", "none"):
            raise ValueError(f"VQGANDecoderConfig.attn_type must be 'vanilla' or 'none', got {self.attn_type!r}")
        widths = {self.ch * m for m in self.ch_mult}
        bad = sorted(w for w in widths if w % self.num_groups)
        if bad:
            raise ValueError(f"VQGANDecoderConfig: channel widths {bad} are not divisible by num_groups {self.num_groups}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"VQGANDecoderConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def upsampling(self) -> int:
        """Pixels per latent cell along a side: ``2 ** (len(ch_mult) - 1)``."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent grid of codes (32 for Anole)."""
        return self.resolution // self.upsampling

    @property
    def num_codes(self) -> int:
        """Codes per image: ``latent_size ** 2`` (1,024 for Anole)."""
        return self.latent_size**2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VQGANDecoderConfig":
        """From :meth:`to_dict`'s fields; unknown names are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"VQGANDecoderConfig.from_dict: unknown field(s) {sorted(unknown)}")
        return cls(**dict(d))

    @classmethod
    def from_vqgan_yaml(cls, path: Union[str, os.PathLike]) -> "VQGANDecoderConfig":
        """From a tokenizer's ``vqgan.yaml``: ``model.params`` (or top-level ``params``) with
        ``embed_dim``, ``n_embed`` and ``ddconfig`` (``z_channels``, ``ch``, ``ch_mult``,
        ``num_res_blocks``, ``attn_resolutions``, ``resolution``, ``out_ch``, ``dropout``,
        optionally ``attn_type``); everything else (losses, training settings) is ignored."""
        import yaml

        try:
            with open(path) as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"vqgan config {os.fspath(path)!r}: cannot be read as YAML ({exc})") from None
        params = _yaml_params(doc)
        dd = params.get("ddconfig")
        if not isinstance(dd, Mapping) or "embed_dim" not in params or "n_embed" not in params:
            raise ValueError(f"vqgan config {os.fspath(path)!r}: expected model.params with embed_dim, n_embed "
                             "and ddconfig")
        if dd.get("double_z"):
            raise ValueError(f"vqgan config {os.fspath(path)!r}: double_z is true; not a VQ-GAN tokenizer")
        try:
            return cls(
                embed_dim=int(params["embed_dim"]), n_embed=int(params["n_embed"]), z_channels=int(dd["z_channels"]),
                ch=int(dd["ch"]), ch_mult=tuple(dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
                attn_resolutions=tuple(dd.get("attn_resolutions") or ()), resolution=int(dd["resolution"]),
                out_ch=int(dd.get("out_ch", 3)), dropout=float(dd.get("dropout", 0.0)),
                attn_type=str(dd.get("attn_type", "vanilla")),
            )
        except KeyError as exc:
            raise ValueError(f"vqgan config {os.fspath(path)!r}: ddconfig lacks {exc}") from None

    @classmethod
    def from_vq_config(cls, vq_config: Any, **overrides: Any) -> "VQGANDecoderConfig":
        """From ``transformers``' ``ChameleonVQVAEConfig`` (or its dict, a model config's
        ``vq_config``): the same tokenizer described by the encoder's field names. ``out_ch`` is
        its ``in_channels``; ``overrides`` set fields it does not have (e.g. ``num_groups``)."""
        get = vq_config.get if isinstance(vq_config, Mapping) else (lambda k, default=None: getattr(vq_config, k, default))
        fields = dict(
            embed_dim=get("embed_dim", 256), n_embed=get("num_embeddings", 8192), z_channels=get("latent_channels", 256),
            ch=get("base_channels", 128), ch_mult=tuple(get("channel_multiplier", (1, 1, 2, 2, 4))),
            num_res_blocks=get("num_res_blocks", 2), attn_resolutions=tuple(get("attn_resolutions") or ()),
            resolution=get("resolution", 512), out_ch=get("in_channels", 3), dropout=float(get("dropout", 0.0)),
            attn_type=get("attn_type") or "none",
        )
        fields.update(overrides)
        return cls(**fields)


def _yaml_params(doc: Any) -> Mapping[str, Any]:
    """``model.params`` (or ``params``) of a parsed ``vqgan.yaml``; ``{}`` when absent."""
    if not isinstance(doc, Mapping):
        return {}
    holder = doc.get("model", doc)
    params = holder.get("params") if isinstance(holder, Mapping) else None
    return params if isinstance(params, Mapping) else {}


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Two GroupNorm-swish-conv stages plus the input (1x1 ``nin_shortcut`` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map, added to its input."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (conv(hn).reshape(b, c, h * w).transpose(1, 2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _attention(channels: int, cfg: VQGANDecoderConfig) -> nn.Module:
    return AttnBlock(channels, cfg.num_groups) if cfg.attn_type == "vanilla" else nn.Identity()


class Decoder(nn.Module):
    """Latent ``(B, z_channels, s, s)`` -> image ``(B, out_ch, resolution, resolution)``."""

    def __init__(self, cfg: VQGANDecoderConfig) -> None:
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.latent_size
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, cfg.num_groups)
        self.mid.attn_1 = _attention(block_in, cfg)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, cfg.num_groups)
        ups: list[nn.Module] = []
        for level in reversed(range(levels)):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            block_out = cfg.ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, block_out, cfg.dropout, cfg.num_groups))
                block_in = block_out
                if res in cfg.attn_resolutions and cfg.attn_type == "vanilla":
                    up.attn.append(AttnBlock(block_in, cfg.num_groups))
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(block_in, cfg.num_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Codebook(nn.Module):
    """Holds ``embedding`` so the codebook's key is ``quantize.embedding.weight``."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)


class VQGANDecoder(nn.Module):
    """VQ codes -> RGB images in ``[-1, 1]``: codebook lookup, ``post_quant_conv``, decoder.

    Args:
        config: the architecture (:class:`VQGANDecoderConfig`; Anole's by default).
    """

    def __init__(self, config: VQGANDecoderConfig = VQGANDecoderConfig()) -> None:
        super().__init__()
        self.config = config
        self.quantize = _Codebook(config.n_embed, config.embed_dim)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, kernel_size=1)
        self.decoder = Decoder(config)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, H*W)`` or ``(B, H, W)`` codes -> codebook vectors ``(B, embed_dim, H, W)`` (row-major)."""
        side = self.config.latent_size
        codes = torch.as_tensor(codes, device=self.quantize.embedding.weight.device).long()
        if codes.dim() == 3:
            codes = codes.flatten(1)
        if codes.dim() != 2 or codes.shape[1] != side * side:
            raise ValueError(f"VQGANDecoder: codes must be (B, {side * side}) or (B, {side}, {side}), "
                             f"got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.n_embed):
            raise ValueError(f"VQGANDecoder: codes must lie in [0, {self.config.n_embed}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        z = self.quantize.embedding(codes)  # (B, H*W, D)
        return z.reshape(codes.shape[0], side, side, -1).permute(0, 3, 1, 2).contiguous()

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, H*W)`` codes -> images ``(B, out_ch, resolution, resolution)``, nominally in ``[-1, 1]``."""
        return self.decoder(self.post_quant_conv(self.embed_codes(codes)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images of ``codes`` clamped to ``[-1, 1]`` (no gradients)."""
        return self(codes).clamp(-1.0, 1.0)

    @torch.no_grad()
    def decode_uint8(self, codes: torch.Tensor, batch_size: int = 8) -> np.ndarray:
        """``(B, H, W, C)`` uint8 images of ``codes``, decoded ``batch_size`` at a time in eval mode."""
        self.eval()
        codes = torch.as_tensor(codes)
        parts = [to_uint8(self(codes[s : s + batch_size])) for s in range(0, codes.shape[0], batch_size)]
        if not parts:
            side = self.config.resolution
            return np.zeros((0, side, side, self.config.out_ch), dtype=np.uint8)
        return np.concatenate(parts)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` images in ``[-1, 1]`` -> ``(B, H, W, C)`` uint8: clamp, map to ``[0, 255]``,
    truncate (the reference tokenizer's conversion)."""
    x = (images.detach().float().clamp(-1.0, 1.0) + 1.0) / 2.0
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)


def to_pil(images: torch.Tensor) -> list:
    """``(B, 3, H, W)`` images in ``[-1, 1]`` -> RGB ``PIL.Image`` objects."""
    from PIL import Image

    return [Image.fromarray(a).convert("RGB") for a in to_uint8(images)]


# ------------------------------------------------------------------------------------ loading


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    """The raw key -> value mapping of a ``.safetensors`` file or a ``.ckpt``/``.pt``/``.bin`` torch file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"VQ-GAN weights {str(path)!r}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"VQ-GAN weights {str(path)!r}: refusing to unpickle it; it holds Python objects beyond tensors "
            f"and plain containers ({first}). Convert it once, in a trusted environment, to a safetensors file "
            "of its state_dict (see docs/image_metric.md)") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise ValueError(f"VQ-GAN weights {str(path)!r}: not a readable torch checkpoint ({exc})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"VQ-GAN weights {str(path)!r}: expected a state dict (or a dict with 'state_dict'), "
                         f"got {type(obj).__name__}")
    return obj


def decoder_state_dict(raw: Mapping[str, Any], *, source: str = "state dict") -> dict[str, torch.Tensor]:
    """The decoder's entries of a whole VQ-GAN state dict (keys as :class:`VQGANDecoder` names them).

    A common key prefix in front of the VQ-GAN names (e.g. a wrapping model's ``vqmodel.``) is
    dropped when ``<prefix>decoder.conv_in.weight`` is present; keys outside
    :data:`DECODER_PREFIXES` (encoder, ``quant_conv``, losses) are left out.
    """
    prefix = next((k[: -len("decoder.conv_in.weight")] for k in raw if k.endswith("decoder.conv_in.weight")), "")
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.startswith(DECODER_PREFIXES):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
            out[name] = value
    return out


def _resolve_files(location: Path) -> tuple[Path, Path | None]:
    """``(weights file, vqgan.yaml or None)`` of a checkpoint directory or a weights file.

    In a directory: ``tokenizer/vqgan.safetensors`` (a conversion of the ``.ckpt``) when present,
    else ``tokenizer/vqgan.ckpt``, else the first ``.safetensors`` file under ``tokenizer/`` or at the top.
    """
    if location.is_dir():
        config = location / TOKENIZER_CONFIG
        candidates = [location / TOKENIZER_WEIGHTS.replace(".ckpt", ".safetensors"), location / TOKENIZER_WEIGHTS,
                      *sorted(location.glob("tokenizer/*.safetensors")), *sorted(location.glob("*.safetensors"))]
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"VQ-GAN checkpoint {str(location)!r}: no {TOKENIZER_WEIGHTS} "
                                    "(nor a .safetensors file) in it")
        return weights, config if config.is_file() else None
    if not location.is_file():
        raise FileNotFoundError(f"VQ-GAN checkpoint {str(location)!r}: no such file or directory")
    sibling = location.with_name("vqgan.yaml")
    return location, sibling if sibling.is_file() else None


def load_vqgan_decoder(
    checkpoint: Union[str, os.PathLike],
    config: VQGANDecoderConfig | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> VQGANDecoder:
    """The VQ-GAN decoder of a checkpoint, in eval mode with gradients off.

    Args:
        checkpoint: an Anole / Chameleon checkpoint directory (``tokenizer/vqgan.ckpt`` and
            ``tokenizer/vqgan.yaml``), a ``.ckpt`` file (read with ``weights_only=True``) or a
            ``.safetensors`` file with the same key names.
        config: the architecture; ``None`` reads the ``vqgan.yaml`` next to the weights, else
            Anole's defaults.
        device / dtype: where and in which precision to put it.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: an unreadable file, a file that needs full unpickling, or keys that do not
            match the architecture (the message names the missing and unexpected ones).
    """
    weights, yaml_path = _resolve_files(Path(checkpoint))
    if config is None:
        config = VQGANDecoderConfig.from_vqgan_yaml(yaml_path) if yaml_path else VQGANDecoderConfig()
    state = decoder_state_dict(_read_state_dict(weights), source=f"VQ-GAN weights {str(weights)!r}")
    model = VQGANDecoder(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"VQ-GAN weights {str(weights)!r} do not match the decoder architecture: "
                         f"missing {_some(missing)}, unexpected {_some(unexpected)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"VQ-GAN weights {str(weights)!r} do not match the decoder architecture: {exc}") from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _some(keys: Sequence[str], limit: int = 8) -> str:
    """``[a, b, ...] (N in all)`` for error messages."""
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} in all)"


# ----------------------------------------------------------------------------- tokens to codes


def _code_table(spec_or_mapping: Any) -> tuple[torch.Tensor, str]:
    """A lookup tensor id -> code (``-1``: not an image code) and a name for error messages."""
    if isinstance(spec_or_mapping, ModalitySpec):
        lo, hi = spec_or_mapping.image_code_range
        table = torch.full((hi,), -1, dtype=torch.long)
        table[lo:hi] = torch.arange(hi - lo)
        return table, f"spec {spec_or_mapping.spec_id!r} image codes [{lo}, {hi})"
    bpe2img = getattr(spec_or_mapping, "bpe2img", spec_or_mapping)
    if not isinstance(bpe2img, Mapping) or not bpe2img:
        raise ValueError("image_tokens_to_codes: expected a ModalitySpec, a Chameleon vocabulary mapping with "
                         f"IMGIMG image tokens, or a non-empty {{bpe id: code}} dict; got {type(spec_or_mapping).__name__}")
    ids = torch.tensor(list(bpe2img.keys()), dtype=torch.long)
    table = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
    table[ids] = torch.tensor(list(bpe2img.values()), dtype=torch.long)
    return table, f"vocabulary mapping of {len(bpe2img)} image tokens"


def image_tokens_to_codes(token_ids: Any, spec_or_mapping: Any) -> torch.Tensor:
    """VQ codes of image-token ids (any shape; vectorised).

    Args:
        token_ids: BPE ids of image codes (no ``<boi>``/``<eoi>``), a tensor, array or list.
        spec_or_mapping: a Chameleon vocabulary mapping (its ``bpe2img``, built from the
            ``IMGIMG*`` names, e.g. :class:`~cl_platform.models.chameleon.ImageGenerationVocabularyMapping`),
            a ``{bpe id: code}`` dict, or a :class:`ModalitySpec` (code = id - ``image_code_range[0]``).

    Raises:
        ValueError: an id that is not an image code (the message names it).
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    table, what = _code_table(spec_or_mapping)
    table = table.to(ids.device)
    inside = (ids >= 0) & (ids < table.numel())
    codes = torch.where(inside, table[ids.clamp(0, table.numel() - 1)], torch.full_like(ids, -1))
    bad = codes < 0
    if bool(bad.any()):
        raise ValueError(f"image_tokens_to_codes: id {int(ids[bad].flatten()[0])} is not an image code of the {what}")
    return codes


__all__ = [
    "DECODER_PREFIXES",
    "TOKENIZER_CONFIG",
    "TOKENIZER_WEIGHTS",
    "VQGANDecoder",
    "VQGANDecoderConfig",
    "decoder_state_dict",
    "image_tokens_to_codes",
    "load_vqgan_decoder",
    "to_pil",
    "to_uint8",
]
