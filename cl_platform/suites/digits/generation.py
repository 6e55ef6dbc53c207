"""Image generation on the digits benchmark and its score.

:func:`generate_images` asks a model to "draw a <digit>" for each requested digit and decodes the
sampled image tokens to 8x8 grey-level images; :func:`generation_eval` scores them with a judge.
The same functions run on the pre-trained base model and after every continual-learning round, so
the scores are comparable across rounds.

Sampling (decided once, documented in :class:`ImageSampling`): temperature 1.0 with top-k 5,
``torch.manual_seed(seed)`` before one batched ``model.generate`` call (KV cache) over all
prompts, under :class:`~cl_platform.models.chameleon.ImageTokenConstraint` so that every output is
``<boi>`` + 64 grey-level codes + ``<eoi>``: a malformed image is impossible, a bad one is the
model's fault. The seed and the digit list fix the result (on a given machine and library version).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from cl_platform.models.chameleon import ImageTokenConstraint


@dataclass(frozen=True)
class ImageSampling:
    """How images are sampled.

    Attributes:
        temperature: softmax temperature. 1.0 samples the model's own distribution, so the score
            tracks how much of it survives a continual-learning round; ``0`` means greedy decoding
            (one image per digit, repeated; on the base model greedy images collapse to an
            average-looking stroke and score lower than samples: 0.80 vs 0.95).
        top_k: sample among the ``top_k`` most likely grey levels only (``None``/0: all 17); cuts
            the tail of single-pixel noise (base model, 4 seeds: 0.95 every seed with top-k 5,
            0.85-0.90 without).
        batch_size: prompts per ``generate`` call.
    """

    temperature: float = 1.0
    top_k: int | None = 5
    batch_size: int = 100

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"ImageSampling.temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"ImageSampling.top_k must be >= 0 or None, got {self.top_k}")
        if self.batch_size <= 0:
            raise ValueError(f"ImageSampling.batch_size must be positive, got {self.batch_size}")

    def to_dict(self) -> dict:
        return asdict(self)


def probe_digits(per_digit: int = 10) -> list[int]:
    """The digits of the generation probe, digit-major: ``[0] * per_digit + [1] * per_digit + ...``."""
    if per_digit <= 0:
        raise ValueError(f"probe_digits(per_digit={per_digit}): must be positive")
    return [d for d in range(10) for _ in range(per_digit)]


@torch.no_grad()
def generate_image_tokens(
    model: torch.nn.Module,
    digits: Sequence[int],
    seed: int,
    sampling: ImageSampling = ImageSampling(),
) -> np.ndarray:
    """Sampled ``[N, 66]`` image token ids (``<boi>`` + 64 codes + ``<eoi>``) for "draw a <digit>".

    ``model`` is a digits model (plain or PEFT-wrapped) whose image-logit mask is lifted. It is put
    in eval mode; the global torch RNG is restored afterwards.
    """
    from cl_platform.suites.digits import vocab as V

    digits = [int(d) for d in digits]
    if not digits:
        return np.zeros((0, V.IMAGE_SEQ_LEN), dtype=np.int64)
    prompts = [V.generation_prompt(d) for d in digits]  # validates the digits
    lengths = {len(p) for p in prompts}
    if len(lengths) != 1:  # every digit word is one token; guard against a vocabulary change
        raise ValueError(f"generate_image_tokens: generation prompts differ in length {sorted(lengths)}")
    prompt_len = lengths.pop()
    model.eval()
    device = next(model.parameters()).device
    greedy = sampling.temperature == 0
    out: list[np.ndarray] = []
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(int(seed))
        for s in range(0, len(prompts), sampling.batch_size):
            ids = torch.tensor(prompts[s : s + sampling.batch_size], dtype=torch.long, device=device)
            constraint = ImageTokenConstraint(V.DIGITS_SPEC, V.IMAGE_NUM_CODES, prompt_length=prompt_len, start_image=True)
            kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=float(sampling.temperature), top_k=int(sampling.top_k or 0), top_p=1.0)
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=V.IMAGE_SEQ_LEN,
                min_new_tokens=V.IMAGE_SEQ_LEN,
                logits_processor=[constraint],
                use_cache=True,
                eos_token_id=V.EOS_ID,
                pad_token_id=V.PAD_ID,
                **kwargs,
            )
            out.append(gen[:, prompt_len : prompt_len + V.IMAGE_SEQ_LEN].cpu().numpy())
    return np.concatenate(out).astype(np.int64)


def generate_images(
    model: torch.nn.Module,
    digits: Sequence[int],
    seed: int,
    sampling: ImageSampling = ImageSampling(),
) -> np.ndarray:
    """``[N, 8, 8]`` int64 grey-level images (0..16) sampled for "draw a <digit>", one per entry of ``digits``."""
    from cl_platform.suites.digits import vocab as V

    return V.decode_images(generate_image_tokens(model, digits, seed, sampling))


@dataclass
class GenerationEval:
    """Result of :func:`generation_eval`.

    Attributes:
        score: fraction of generated images the judge labels as the requested digit.
        per_digit: that fraction for each digit 0..9 (``nan`` for a digit not requested).
        predicted: the judge's label of each image (10 = not a digit).
        images: the generated images ``[N, 8, 8]``.
        digits: the requested digits.
        seed: the sampling seed.
        sampling: the sampling settings.
    """

    score: float
    per_digit: list[float]
    predicted: np.ndarray
    images: np.ndarray
    digits: np.ndarray
    seed: int
    sampling: ImageSampling

    def summary(self) -> dict:
        """JSON-friendly summary (no images)."""
        return {
            "score": self.score,
            "per_digit": [None if np.isnan(x) else x for x in self.per_digit],
            "n": int(self.digits.size),
            "seed": self.seed,
            "sampling": self.sampling.to_dict(),
        }


def generation_eval(
    model: torch.nn.Module,
    judge,
    *,
    per_digit: int = 10,
    seed: int = 0,
    sampling: ImageSampling = ImageSampling(),
) -> GenerationEval:
    """Generate ``per_digit`` images of each digit with :func:`generate_images` and score them with ``judge``."""
    digits = np.asarray(probe_digits(per_digit), dtype=np.int64)
    images = generate_images(model, digits.tolist(), seed, sampling)
    predicted = judge.predict(images)
    hits = predicted == digits
    per = [float(hits[digits == d].mean()) if (digits == d).any() else float("nan") for d in range(10)]
    return GenerationEval(
        score=float(hits.mean()),
        per_digit=per,
        predicted=predicted,
        images=images,
        digits=digits,
        seed=int(seed),
        sampling=sampling,
    )


__all__ = ["GenerationEval", "ImageSampling", "generate_image_tokens", "generate_images", "generation_eval", "probe_digits"]
