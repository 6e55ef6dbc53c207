"""Generation probes: how much of a model's image generation survives a round.

A probe measures image generation after every round (and on the base model, round 0) and gives
one higher-is-better ``generation_score``; ``generation_drop`` is the base model's score minus the
current one. Evaluation is sharded over the Ray Train workers: each rank computes a partial
``(numerator, denominator)`` on its share, the pairs are summed across ranks, and
:meth:`GenerationProbe.score` turns the sums into the score.

A probe travels inside a run's config as a :class:`ProbeSpec` (plain data): the dotted path of a
factory, its keyword arguments and a one-line description. The worker builds the probe from it
with :func:`build_probe`, so a suite can ship its own probe without the training code importing
the suite (see ``docs/architecture.md``, "Adding a suite").

Built in: :class:`cl_platform.eval.likelihood.ImageLikelihoodProbe`, the model-agnostic default.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store


class GenerationProbe(ABC):
    """Measures image generation of a model; partial sums per rank, one score from their totals.

    A forward that generates (or teacher-forces) an image runs inside
    ``with cl_platform.mode.generating_image(model):``, so a MoDE model routes it as its
    ``generation_routing`` says (nothing changes for other models).
    """

    @abstractmethod
    def partial(self, model: torch.nn.Module, rank: int, world: int) -> tuple[float, float]:
        """``(numerator, denominator)`` of this rank's share (both summed across ranks)."""

    def score(self, numerator: float, denominator: float) -> float:
        """The score in ``[0, 1]`` from the summed partials (default: their ratio; 0 for no data)."""
        return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class ProbeSpec:
    """How to build a run's generation probe in a worker.

    Attributes:
        factory: ``"package.module:callable"``; called as ``callable(store=, spec=, seed=, **params)``
            and returning a :class:`GenerationProbe`.
        params: JSON-serialisable keyword arguments of the factory.
        description: one line for people (the README, reports and logs say which probe a run used).
    """

    factory: str
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        module, sep, attr = self.factory.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"ProbeSpec.factory {self.factory!r}: must be 'package.module:callable'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProbeSpec":
        return cls(factory=d["factory"], params=dict(d.get("params") or {}), description=d.get("description", ""))


def build_probe(probe: Optional[dict], store: Store, spec: ModalitySpec, seed: int) -> Optional[GenerationProbe]:
    """The probe a :class:`ProbeSpec` dict describes (``None`` for no probe)."""
    if not probe:
        return None
    ps = ProbeSpec.from_dict(probe)
    module, _, attr = ps.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"generation probe factory {ps.factory!r} cannot be imported: {exc}") from None
    built = factory(store=store, spec=spec, seed=seed, **ps.params)
    if not isinstance(built, GenerationProbe):
        raise TypeError(f"generation probe factory {ps.factory!r} returned {type(built).__name__}, not a GenerationProbe")
    return built


__all__ = ["GenerationProbe", "ProbeSpec", "build_probe"]
