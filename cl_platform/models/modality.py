"""Which token ids are image tokens, and the special ids of a model's vocabulary.

A :class:`ModalitySpec` is the single source of the image-token ranges that MoDE routes on
(``ModeConfig(image_token_ranges=spec.image_token_ranges)``), of the begin/end-of-image markers,
the pad id and the prompt/answer separator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch


def normalize_ranges(ranges: Sequence[Sequence[int]] | None, *, what: str = "image_token_ranges") -> list[list[int]]:
    """Validate ``[lo, hi)`` id ranges and return them as a sorted list of ``[lo, hi]`` lists."""
    if ranges is None:
        return []
    out: list[list[int]] = []
    for item in ranges:
        if len(item) != 2:
            raise ValueError(f"{what}: each range must be [lo, hi), got {list(item)!r}")
        lo, hi = int(item[0]), int(item[1])
        if lo < 0 or hi <= lo:
            raise ValueError(f"{what}: range [{lo}, {hi}) is empty or negative; need 0 <= lo < hi")
        out.append([lo, hi])
    out.sort()
    for (a_lo, a_hi), (b_lo, b_hi) in zip(out, out[1:]):
        if b_lo < a_hi:
            raise ValueError(f"{what}: ranges [{a_lo}, {a_hi}) and [{b_lo}, {b_hi}) overlap")
    return out


def image_token_mask(input_ids: torch.Tensor, ranges: Sequence[Sequence[int]]) -> torch.Tensor:
    """Boolean mask, same shape as ``input_ids``: True where the id falls in one of the ranges.

    Vectorised (a handful of comparisons over the whole tensor); no host synchronisation.
    """
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for lo, hi in ranges:
        mask |= (input_ids >= lo) & (input_ids < hi)
    return mask


@dataclass(frozen=True)
class ModalitySpec:
    """Token layout of a unified model's vocabulary.

    Attributes:
        spec_id: short name stored in task manifests (e.g. ``"anole"``).
        vocab_size: number of token ids; every id in a task must be below it.
        image_code_range: ``[lo, hi)`` of the image content codes (what an image tokenizer emits).
        boi_id: begin-of-image marker.
        eoi_id: end-of-image marker.
        pad_id: padding id.
        sep_id: separator between prompt and answer (loss starts after it).
        image_token_ranges: ``[lo, hi)`` ranges routed to the visual adapter: image codes and both
            markers, as in the reference implementation. Derived when left empty.
        eos_id: end-of-sequence id that ends an answer (``None``: answers are decoded to their
            full length without an early stop).
    """

    spec_id: str
    vocab_size: int
    image_code_range: tuple[int, int]
    boi_id: int
    eoi_id: int
    pad_id: int
    sep_id: int
    image_token_ranges: tuple[tuple[int, int], ...] = field(default=())
    eos_id: Optional[int] = None

    def __post_init__(self) -> None:
        lo, hi = self.image_code_range
        if self.eos_id is not None and not 0 <= self.eos_id < self.vocab_size:
            raise ValueError(f"ModalitySpec {self.spec_id}: eos_id {self.eos_id} outside vocab {self.vocab_size}")
        if not 0 <= lo < hi <= self.vocab_size:
            raise ValueError(f"ModalitySpec {self.spec_id}: image_code_range {self.image_code_range} outside vocab {self.vocab_size}")
        if not self.image_token_ranges:
            ids = [(lo, hi), (self.boi_id, self.boi_id + 1), (self.eoi_id, self.eoi_id + 1)]
            merged: list[list[int]] = []
            for a, b in sorted(ids):
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            object.__setattr__(self, "image_token_ranges", tuple(tuple(r) for r in merged))
        normalize_ranges(self.image_token_ranges)

    @property
    def num_image_codes(self) -> int:
        return self.image_code_range[1] - self.image_code_range[0]

    def is_image(self, input_ids: torch.Tensor) -> torch.Tensor:
        return image_token_mask(input_ids, self.image_token_ranges)

    def to_dict(self) -> dict:
        return {
            "spec_id": self.spec_id,
            "vocab_size": self.vocab_size,
            "image_code_range": list(self.image_code_range),
            "boi_id": self.boi_id,
            "eoi_id": self.eoi_id,
            "pad_id": self.pad_id,
            "sep_id": self.sep_id,
            "image_token_ranges": [list(r) for r in self.image_token_ranges],
            "eos_id": self.eos_id,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModalitySpec":
        return cls(
            spec_id=d["spec_id"],
            vocab_size=int(d["vocab_size"]),
            image_code_range=tuple(d["image_code_range"]),
            boi_id=int(d["boi_id"]),
            eoi_id=int(d["eoi_id"]),
            pad_id=int(d["pad_id"]),
            sep_id=int(d["sep_id"]),
            image_token_ranges=tuple(tuple(r) for r in d.get("image_token_ranges", ())),
            eos_id=None if d.get("eos_id") is None else int(d["eos_id"]),
        )


#: Anole-7b / Chameleon token layout, as used by the MoDE reference code:
#: BOS 0, PAD 1, EOS 2, image codes 4..8195, end-of-image 8196, begin-of-image 8197, separator 8710.
ANOLE = ModalitySpec(
    spec_id="anole",
    vocab_size=65536,
    image_code_range=(4, 8196),
    boi_id=8197,
    eoi_id=8196,
    pad_id=1,
    sep_id=8710,
    eos_id=2,
)
