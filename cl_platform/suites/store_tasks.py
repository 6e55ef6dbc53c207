"""The ``tasks`` suite: a user's own tasks, streams and model, already in the store.

Nothing is written: the tasks (``--tasks``), the base model (``--model``, a ``save_pretrained``
directory, e.g. an Anole/Chameleon checkpoint), the KD stream (``--kd-stream``) and the probe
stream come from the store as the user put them there (for the MoDE reference data:
``python -m cl_platform.suites.mode_official --data-root DIR --store URL``).

The modality spec is ``--spec anole`` / ``--spec FILE.json``, else the model's ``config.json``
(:func:`cl_platform.models.chameleon.modality_spec_of`: its ``modality_spec``, or the Anole layout
recognised from its vocabulary). The generation probe is the model-agnostic image-token
likelihood (:mod:`cl_platform.eval.likelihood`) on ``--probe-stream``, by default the
``<kd stream>-probe`` stream the importer holds out of the KD stream.
"""

from __future__ import annotations

import json
from typing import Optional

from cl_platform.eval.likelihood import image_likelihood_spec
from cl_platform.eval.probe import ProbeSpec
from cl_platform.models.modality import ANOLE, ModalitySpec
from cl_platform.store import Store
from cl_platform.suites.base import Log, RunRequest, Suite


def stream_exists(store: Store, name: str) -> bool:
    """Whether ``streams/<name>`` has landed (its manifest exists)."""
    return store.exists(f"streams/{name}/manifest.json")


def spec_of_model(store: Store, model_uri: str, spec: Optional[str]) -> ModalitySpec:
    """The spec of ``--spec`` (``anole`` or a JSON file), else of the model's ``config.json``."""
    from cl_platform.models.chameleon import modality_spec_of

    if spec == "anole":
        return ANOLE
    if spec:
        try:
            with open(spec) as f:
                return ModalitySpec.from_dict(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"--spec {spec}: not a readable ModalitySpec JSON file ({exc})") from None
    parent, _, name = model_uri.rstrip("/").rpartition("/")
    try:
        config = Store(parent).read_json(f"{name}/config.json")
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise ValueError(f"--model {model_uri}: cannot read its config.json ({exc})") from None
    try:
        return modality_spec_of(config)
    except ValueError as exc:
        raise ValueError(f"--model {model_uri}: {exc}") from None


class StoreTasks(Suite):
    """Tasks, streams and a model the user brought (see the module docstring)."""

    name = "tasks"

    def resolve_model(self, store: Store, request: RunRequest, log: Log) -> tuple[str, ModalitySpec]:
        if not request.model:
            raise ValueError("--model is required with --tasks: a save_pretrained directory in the store "
                             "(or choose a suite that ships a model, e.g. --suite digits)")
        uri = request.model if "://" in request.model else store.uri(request.model)
        return uri, spec_of_model(store, uri, request.spec)

    def resolve_tasks(self, store: Store, request: RunRequest) -> list[str]:
        if not request.tasks:
            raise ValueError("--tasks is required: comma-separated task names in the store")
        return list(request.tasks)

    def resolve_kd_stream(self, store: Store, request: RunRequest) -> Optional[str]:
        return request.kd_stream

    def resolve_probe(self, store: Store, request: RunRequest, spec: ModalitySpec, log: Log) -> Optional[ProbeSpec]:
        stream = request.probe_stream
        if stream is None and request.kd_stream and stream_exists(store, f"{request.kd_stream}-probe"):
            stream = f"{request.kd_stream}-probe"
        if stream is None:
            log("no generation probe: pass --probe-stream (a held-out generation stream) to measure "
                "image-generation forgetting")
            return None
        return image_likelihood_spec(stream, request.probe_size)


__all__ = ["StoreTasks", "spec_of_model", "stream_exists"]
