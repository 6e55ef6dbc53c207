"""What a suite is: a plug-in that resolves everything a run needs.

A run asks for its inputs with a :class:`RunRequest` (what the user said: suite, tasks, order,
model, spec, streams, probe size). The suite turns it into :class:`RunInputs` (the tasks in
training order, the base model, its :class:`~cl_platform.models.modality.ModalitySpec`, the KD
stream and the generation probe), writing its own data into the store first when it ships any.
:func:`cl_platform.suites.resolve_run_inputs` is the one place that does this, for sequences,
sweeps and lineages alike (see ``docs/architecture.md``, "Adding a suite").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from cl_platform.eval.probe import ProbeSpec
from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store

Log = Callable[[str], None]


@dataclass
class RunRequest:
    """What a run asks for; every field is optional and the suite fills in the rest.

    Attributes:
        suite: suite name (``None``: ``tasks`` when tasks or a model are given, else the default suite).
        tasks: task names in the store (empty: the suite's own tasks).
        order: training order, a permutation of the tasks (empty: the tasks as given).
        model: base model, a store path or URI of a ``save_pretrained`` directory (``None``: the suite's).
        spec: modality spec of the model's vocabulary: ``"anole"`` or a JSON file of a
            ``ModalitySpec`` (``None``: from the model's ``config.json``).
        image_token_ranges: ``[[lo, hi], ...]`` id ranges routed to the visual adapter (overrides the spec's).
        kd_stream: generation stream used for knowledge distillation (``None``: the suite's).
        probe_stream: held-out generation stream of the default probe (``None``: the suite's choice).
        probe_size: size of the generation probe (images per class for a judge, rows for the
            likelihood probe; ``None``: the suite's default).
        quick: a short run (CI, smoke tests): the suite may choose a smaller probe.
        clip_model: a CLIP ``save_pretrained`` directory (store path or URI): with ``vqgan``, the
            ``tasks`` suite measures generation with the CLIP image-alignment probe
            (:mod:`cl_platform.eval.clip_probe`) instead of the likelihood probe.
        vqgan: the VQ-GAN image decoder (an Anole checkpoint directory or its ``vqgan`` file).
    """

    suite: Optional[str] = None
    tasks: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    model: Optional[str] = None
    spec: Optional[str] = None
    image_token_ranges: Optional[list[list[int]]] = None
    kd_stream: Optional[str] = None
    probe_stream: Optional[str] = None
    probe_size: Optional[int] = None
    quick: bool = False
    clip_model: Optional[str] = None
    vqgan: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunInputs:
    """Everything a run reads, resolved.

    Attributes:
        suite: the suite that resolved them.
        store: the store.
        tasks: task names in training order.
        model_uri: URI of the base model directory.
        spec: the model's modality spec (image-token ranges, special ids, end-of-sequence id).
        kd_stream: KD stream name (``None``: methods with KD train without it).
        probe: the generation probe (``None``: no generation score).
    """

    suite: str
    store: Store
    tasks: list[str]
    model_uri: str
    spec: ModalitySpec
    kd_stream: Optional[str] = None
    probe: Optional[ProbeSpec] = None

    def sequence_fields(self) -> dict[str, Any]:
        """The ``SequenceConfig`` fields these inputs set."""
        return {"store": self.store.url, "tasks": list(self.tasks), "model_uri": self.model_uri,
                "spec": self.spec.to_dict(), "kd_stream": self.kd_stream,
                "probe": self.probe.to_dict() if self.probe else None}

    def describe(self) -> str:
        """One line for people: suite, model, tasks, streams and probe."""
        probe = self.probe.description if self.probe else "none"
        return (f"suite {self.suite}: model {self.model_uri}, tasks {', '.join(self.tasks)}, "
                f"KD stream {self.kd_stream or '-'}, generation probe: {probe}")


class Suite(ABC):
    """A source of runs: tasks, a base model, a spec, a KD stream and a generation probe.

    Subclasses set :attr:`name` and implement the four ``resolve_*`` methods; :meth:`prepare`
    writes the suite's own data into the store when it ships any.
    """

    #: Registry name (``--suite NAME``).
    name: str = ""
    #: Task names the suite provides, in its training order (empty: it has none of its own).
    default_tasks: tuple[str, ...] = ()

    def prepare(self, store: Store, request: RunRequest, log: Log) -> None:
        """Write the suite's data into ``store`` if absent (default: nothing to write)."""

    @abstractmethod
    def resolve_model(self, store: Store, request: RunRequest, log: Log) -> tuple[str, ModalitySpec]:
        """``(model URI, modality spec)`` of the base model."""

    def resolve_spec(self, store: Store, request: RunRequest) -> ModalitySpec:
        """The modality spec alone, without writing or training anything (task validation needs
        only this). Default: the spec of :meth:`resolve_model`; suites that ship a model override it."""
        return self.resolve_model(store, request, lambda msg: None)[1]

    @abstractmethod
    def resolve_tasks(self, store: Store, request: RunRequest) -> list[str]:
        """Task names of the run (before ``request.order`` is applied)."""

    @abstractmethod
    def resolve_kd_stream(self, store: Store, request: RunRequest) -> Optional[str]:
        """KD stream name, or ``None``."""

    @abstractmethod
    def resolve_probe(self, store: Store, request: RunRequest, spec: ModalitySpec, log: Log) -> Optional[ProbeSpec]:
        """The generation probe, or ``None``."""


__all__ = ["Log", "RunInputs", "RunRequest", "Suite"]
