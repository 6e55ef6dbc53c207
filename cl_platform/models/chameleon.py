"""Chameleon / Anole backbones: loading, lifting upstream's image-logit mask, the image-token grammar.

**The upstream mask.** ``transformers``' ``ChameleonForConditionalGeneration.forward`` ends with::

    image_tokens = self.model.vocabulary_mapping.image_tokens
    logits[:, :, image_tokens] = torch.finfo(logits.dtype).min

where ``image_tokens`` are the ids of every ``vocabulary_map`` entry whose name starts with
``IMGIMG`` (the 8192 VQ codes of Chameleon-7B / Anole). The write is in place and happens before
the loss, so such a model can neither emit an image code nor learn to (the cross-entropy of an
image-code label is astronomically large). A logits hook cannot undo it: the original logits are
gone. :func:`allow_image_generation` disables the mask at its source instead: it swaps the model's
:class:`ChameleonImageVocabularyMapping` for :class:`ImageGenerationVocabularyMapping`, whose
``image_tokens`` (the list the forward masks) is empty while the image-code <-> VQ-index mapping
used to *read* images (``get_image_tokens``) is unchanged.

The swap lives on the loaded module, not in ``config.json``: every ``from_pretrained`` builds a
fresh, masking mapping, so load through :func:`load_model` (which applies it) or call
:func:`allow_image_generation` yourself.

**The platform's own constraint.** Lifting the mask lets the model emit image codes anywhere;
:class:`ImageTokenConstraint` (a ``transformers`` logits processor) keeps generated images
well-formed instead: inside an image only image codes, exactly ``num_codes`` of them, then the
end-of-image marker; outside an image no image codes.
"""

from __future__ import annotations

import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor
from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

from cl_platform.models.modality import ModalitySpec

#: Prefix of upstream Chameleon's image-code token names (``IMGIMG`` + the code's decimal places written as letters + ``Z``).
UPSTREAM_IMAGE_PREFIX = "IMGIMG"


def chameleon_image_token_name(code: int) -> str:
    """Upstream Chameleon's vocabulary name of VQ code ``code``: ``IMGIMG`` + decimal places as ``A``..``J`` + ``Z``.

    The inverse of the decoding in ``ChameleonImageVocabularyMapping.bpe2img`` (``A`` -> 0, ...,
    ``J`` -> 9, last character dropped): code 0 is ``IMGIMGAZ``, code 127 is ``IMGIMGBCHZ``.
    """
    code = int(code)
    if code < 0:
        raise ValueError(f"chameleon_image_token_name(code): code must be >= 0, got {code}")
    return UPSTREAM_IMAGE_PREFIX + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


class ImageGenerationVocabularyMapping(ChameleonImageVocabularyMapping):
    """Chameleon's vocabulary mapping with the generation mask lifted.

    ``image_tokens`` (what upstream's forward overwrites with the dtype minimum) is empty;
    ``image_code_ids`` holds the ``IMGIMG*`` ids instead, and the image <-> BPE conversions
    (``bpe2img``, ``img2bpe``, ``convert_img2bpe``) are computed from it, exactly as upstream.
    """

    @cached_property
    def image_code_ids(self) -> list[int]:
        """Ids of every ``IMGIMG*`` entry of the vocabulary map, sorted (upstream's ``image_tokens``)."""
        return sorted(v for name, v in self.vocab_map.items() if name.startswith(UPSTREAM_IMAGE_PREFIX))

    @cached_property
    def image_tokens(self) -> list[int]:
        """Ids the upstream forward masks out of the logits: none."""
        return []

    @cached_property
    def bpe2img(self) -> dict[int, int]:
        letters = {chr(ord("A") + i): str(i) for i in range(10)}

        def remap(name: str) -> str:
            return "".join(letters.get(c, c) for c in name[len(UPSTREAM_IMAGE_PREFIX) : -1])

        return {tok: int(remap(self.val2name[tok])) for tok in self.image_code_ids}


def _vocabulary_mapping_owners(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every submodule of ``model`` (itself included) that holds a Chameleon vocabulary mapping."""
    owners = [m for m in model.modules() if isinstance(getattr(m, "vocabulary_mapping", None), ChameleonImageVocabularyMapping)]
    if not owners:
        raise TypeError(
            f"{type(model).__name__} has no Chameleon vocabulary mapping (model.model.vocabulary_mapping); "
            "is it a ChameleonForConditionalGeneration (or a PEFT model wrapping one)?"
        )
    return owners


def allow_image_generation(model: torch.nn.Module) -> torch.nn.Module:
    """Let a loaded Chameleon/Anole model emit (and learn) image tokens; returns ``model``.

    Replaces every ``vocabulary_mapping`` in ``model`` (also inside a PEFT wrapper) by an
    :class:`ImageGenerationVocabularyMapping` over the same vocabulary map, so the in-place
    ``IMGIMG*`` logit mask of the upstream forward becomes a no-op. Idempotent. Pair it with
    :class:`ImageTokenConstraint` when generating.
    """
    for owner in _vocabulary_mapping_owners(model):
        mapping = owner.vocabulary_mapping
        if not isinstance(mapping, ImageGenerationVocabularyMapping):
            owner.vocabulary_mapping = ImageGenerationVocabularyMapping(mapping.vocab_map)
    return model


def masked_image_token_ids(model: torch.nn.Module) -> list[int]:
    """Ids the model's forward currently forces to the dtype minimum (empty once lifted)."""
    ids: set[int] = set()
    for owner in _vocabulary_mapping_owners(model):
        ids.update(int(i) for i in owner.vocabulary_mapping.image_tokens)
    return sorted(ids)


def image_generation_allowed(model: torch.nn.Module) -> bool:
    """True when no vocabulary id is masked out of the model's logits."""
    return not masked_image_token_ids(model)


def modality_spec_of(model_or_config: Any) -> ModalitySpec:
    """The :class:`ModalitySpec` of a model, a ``transformers`` config or a ``config.json`` dict.

    The config's ``modality_spec`` when it has one (models built by
    :func:`cl_platform.models.tiny.build_tiny_model` carry it); otherwise an upstream
    Chameleon/Anole config is recognised from its vocabulary: when its size, its ``IMGIMG*``
    image codes, ``<racm3:break>`` (begin-of-image), ``<eoss>`` (end-of-image) and its pad id are
    those of :data:`~cl_platform.models.modality.ANOLE`, that spec is returned. Anything else
    raises ``ValueError`` saying what differs (pass the spec explicitly then).
    """
    from cl_platform.models.modality import ANOLE

    config = getattr(model_or_config, "config", model_or_config)
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    d = get("modality_spec")
    if d:
        return ModalitySpec.from_dict(dict(d))
    what = type(model_or_config).__name__
    vmap = get("vocabulary_map") or {}
    if get("model_type") != "chameleon" or not vmap:
        raise ValueError(f"{what}: config has no 'modality_spec' and is not a Chameleon config with a vocabulary_map; "
                         "pass the spec explicitly (e.g. --spec anole or --spec FILE.json)")
    codes = sorted(int(v) for k, v in vmap.items() if k.startswith(UPSTREAM_IMAGE_PREFIX))
    found = {
        "vocab_size": get("vocab_size"),
        "image_code_range": (codes[0], codes[-1] + 1) if codes else None,
        "boi_id": vmap.get("<racm3:break>"),
        "eoi_id": vmap.get("<eoss>"),
        "pad_id": get("pad_token_id"),
    }
    want = {"vocab_size": ANOLE.vocab_size, "image_code_range": ANOLE.image_code_range, "boi_id": ANOLE.boi_id,
            "eoi_id": ANOLE.eoi_id, "pad_id": ANOLE.pad_id}
    diff = {k: found[k] for k in want if found[k] != want[k]}
    if codes and len(codes) != codes[-1] + 1 - codes[0]:
        diff["image codes"] = "not contiguous"
    if diff:
        raise ValueError(f"{what}: config has no 'modality_spec' and its vocabulary is not the Anole/Chameleon layout "
                         f"(differs at {diff}); pass the spec explicitly (--spec FILE.json)")
    return ANOLE


def fetch_model_dir(path_or_uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory holding a saved model: the path itself (plain path or ``file://``), or a
    download of a store URI (``s3://bucket/.../model``) into ``cache_dir`` (a fresh temporary
    directory when ``None``)."""
    text = os.fspath(path_or_uri)
    if "://" not in text:
        return Path(text)
    scheme, rest = text.split("://", 1)
    if scheme == "file":
        return Path(rest)
    from cl_platform.store import Store

    parent, _, name = text.rstrip("/").rpartition("/")
    if "://" not in parent or not name:
        raise ValueError(f"load_model({text!r}): expected <store URL>/<path to the model directory>")
    target = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="cl_model_"))
    Store(parent).get_dir(name, target)
    return target


def load_model(
    path_or_uri: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    allow_images: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """Load a ``ChameleonForConditionalGeneration`` saved with ``save_pretrained``, in eval mode.

    Args:
        path_or_uri: a local directory, a ``file://`` URI, or a store URI (``s3://bucket/.../model``,
            see :mod:`cl_platform.store`; credentials from the AWS environment) that is downloaded
            to ``cache_dir`` (a fresh temporary directory when ``None``) first.
        dtype: parameter dtype (``torch.float32`` when ``None``).
        device: where to put the model (CPU when ``None``).
        allow_images: apply :func:`allow_image_generation` (default). ``False`` keeps upstream's
            ``IMGIMG*`` mask, i.e. the model as transformers loads it.
        cache_dir: where a remote model is downloaded.

    Raises:
        FileNotFoundError: when the directory or its ``config.json`` does not exist.
    """
    from transformers import ChameleonForConditionalGeneration

    local = fetch_model_dir(path_or_uri, cache_dir)
    if not (local / "config.json").is_file():
        raise FileNotFoundError(f"load_model({os.fspath(path_or_uri)!r}): no config.json in {local}")
    model = ChameleonForConditionalGeneration.from_pretrained(str(local), dtype=dtype or torch.float32)
    if device is not None:
        model = model.to(device)
    if allow_images:
        allow_image_generation(model)
    model.eval()
    return model


class ImageTokenConstraint(LogitsProcessor):
    """Modality-aware logits processor: generated images are ``<boi>`` + ``num_codes`` codes + ``<eoi>``.

    For each row, from the ids so far:

    - inside an image (a ``<boi>`` after the last ``<eoi>``) with fewer than ``num_codes`` codes
      since that ``<boi>``: only image codes are allowed;
    - inside an image with ``num_codes`` codes: only ``<eoi>``;
    - outside an image: image codes and ``<eoi>`` are forbidden; with ``start_image`` the first
      generated token is forced to ``<boi>``, and with ``end_after_image`` the token after the
      generated image's ``<eoi>`` is forced to ``eos_token_id``.

    Args:
        spec: the vocabulary layout (image code range, ``<boi>``, ``<eoi>``).
        num_codes: codes per image (64 for an 8x8 image, 1024 for Chameleon's 512px images).
        prompt_length: length of the (equal-length or left-padded) prompts; tokens before it are
            never counted as generated. Needed only with ``start_image``/``end_after_image``.
        start_image: force ``<boi>`` as the first generated token.
        end_after_image: force ``eos_token_id`` right after a generated image.
        eos_token_id: the end-of-sequence id (required with ``end_after_image``).

    Disallowed ids get ``-inf``; allowed ids keep their scores, so sampling and top-k behave as
    usual inside the allowed set. Vectorised over the batch; no host synchronisation.
    """

    def __init__(
        self,
        spec: ModalitySpec,
        num_codes: int,
        *,
        prompt_length: int = 0,
        start_image: bool = False,
        end_after_image: bool = False,
        eos_token_id: int | None = None,
    ) -> None:
        if num_codes <= 0:
            raise ValueError(f"ImageTokenConstraint: num_codes must be positive, got {num_codes}")
        if end_after_image and eos_token_id is None:
            raise ValueError("ImageTokenConstraint: end_after_image needs eos_token_id")
        self.spec = spec
        self.num_codes = int(num_codes)
        self.prompt_length = int(prompt_length)
        self.start_image = bool(start_image)
        self.end_after_image = bool(end_after_image)
        self.eos_token_id = eos_token_id
        lo, hi = spec.image_code_range
        self._code_lo, self._code_hi = lo, hi

    def _only(self, scores: torch.Tensor, rows: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Set ``-inf`` on ``rows`` (bool [B]) everywhere outside ``allowed`` (bool [V])."""
        keep = (~rows)[:, None] | allowed[None, :]
        return scores.masked_fill(~keep, float("-inf"))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        device = scores.device
        ids = torch.arange(vocab, device=device)
        is_code_vocab = (ids >= self._code_lo) & (ids < self._code_hi)
        boi_vocab = ids == self.spec.boi_id
        eoi_vocab = ids == self.spec.eoi_id

        batch, length = input_ids.shape
        pos = torch.arange(length, device=device).expand(batch, length)
        minus_one = torch.full_like(pos, -1)
        last_boi = torch.where(input_ids == self.spec.boi_id, pos, minus_one).max(dim=1).values
        last_eoi = torch.where(input_ids == self.spec.eoi_id, pos, minus_one).max(dim=1).values
        inside = last_boi > last_eoi
        is_code = (input_ids >= self._code_lo) & (input_ids < self._code_hi)
        codes = (is_code & (pos > last_boi[:, None])).sum(dim=1)

        need_code = inside & (codes < self.num_codes)
        need_eoi = inside & (codes >= self.num_codes)
        outside = ~inside

        scores = self._only(scores, need_code, is_code_vocab)
        scores = self._only(scores, need_eoi, eoi_vocab)
        scores = self._only(scores, outside, ~(is_code_vocab | eoi_vocab))
        if self.start_image and length == self.prompt_length:
            scores = self._only(scores, torch.ones(batch, dtype=torch.bool, device=device), boi_vocab)
        if self.end_after_image and self.eos_token_id is not None:
            just_closed = (input_ids[:, -1] == self.spec.eoi_id) & (last_eoi >= self.prompt_length)
            scores = self._only(scores, just_closed, ids == int(self.eos_token_id))
        return scores


__all__ = [
    "UPSTREAM_IMAGE_PREFIX",
    "ImageGenerationVocabularyMapping",
    "ImageTokenConstraint",
    "allow_image_generation",
    "chameleon_image_token_name",
    "image_generation_allowed",
    "fetch_model_dir",
    "load_model",
    "masked_image_token_ids",
    "modality_spec_of",
]
