"""The digits suite's generation probe: the judge's verdict on images the model draws.

``partial`` asks the model to "draw a <digit>" for this rank's share of the probe digits
(:func:`cl_platform.suites.digits.generation.generate_images`) and counts the images the judge
labels as the requested digit; the score is the fraction of hits over all ranks. Generation is an
image-generation call (:func:`cl_platform.mode.generating_image`): a MoDE model routed by
``sequence`` sends the prompt to the visual LoRA too.
"""

from __future__ import annotations

import numpy as np
import torch

from cl_platform.eval.probe import GenerationProbe, ProbeSpec
from cl_platform.mode import generating_image
from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store

FACTORY = "cl_platform.suites.digits.probe:digits_judge_probe"


class DigitsJudgeProbe(GenerationProbe):
    """Fraction of generated digit images the judge labels as the requested digit."""

    def __init__(self, judge, digits: list[int], seed: int) -> None:
        self.judge, self.digits, self.seed = judge, list(digits), int(seed)

    def partial(self, model: torch.nn.Module, rank: int, world: int) -> tuple[float, float]:
        from cl_platform.suites.digits.generation import generate_images

        digits = self.digits[rank::world]
        if not digits:
            return 0.0, 0.0
        with generating_image(model):
            images = generate_images(model, digits, seed=self.seed * 1000 + rank)
        return float((np.asarray(self.judge.predict(images)) == np.asarray(digits)).sum()), float(len(digits))


def digits_judge_probe(*, store: Store, spec: ModalitySpec, seed: int, judge: str, per_digit: int) -> DigitsJudgeProbe:
    """Factory: the judge stored at ``judge`` (a store path to a safetensors judge, never a pickle:
    :func:`~cl_platform.suites.digits.publish.load_judge`) over ``per_digit`` images of each digit."""
    from cl_platform.suites.digits.generation import probe_digits
    from cl_platform.suites.digits.publish import load_judge

    return DigitsJudgeProbe(load_judge(store, judge), probe_digits(per_digit), seed)


def digits_judge_spec(judge: str, per_digit: int) -> ProbeSpec:
    """The :class:`ProbeSpec` of the digits judge probe."""
    return ProbeSpec(factory=FACTORY, params={"judge": judge, "per_digit": int(per_digit)},
                     description=f"digits judge: share of {10 * int(per_digit)} generated images "
                                 "labelled as the requested digit")


__all__ = ["DigitsJudgeProbe", "FACTORY", "digits_judge_probe", "digits_judge_spec"]
