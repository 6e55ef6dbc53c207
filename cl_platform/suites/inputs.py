"""``resolve_run_inputs``: the one place where a run's inputs are resolved.

Sequences (``jobs/sequence.py``), sweeps (``sweeps/sweep.py``) and lineage rounds all call it:
the suite writes its data if it ships any, resolves the model and its spec, the tasks, the KD
stream and the generation probe; then the common checks run (order, every task validated against
the spec, streams present) so that a bad input is an error naming it before anything trains.
"""

from __future__ import annotations

from typing import Optional

from cl_platform.models.modality import ModalitySpec, normalize_ranges
from cl_platform.store import Store
from cl_platform.suites.base import Log, RunInputs, RunRequest, Suite
from cl_platform.suites.registry import DEFAULT_SUITE, get_suite


def suite_for(request: RunRequest) -> Suite:
    """The suite a request names; ``tasks`` when it names tasks or a model but no suite."""
    if request.suite:
        return get_suite(request.suite)
    return get_suite("tasks" if (request.tasks or request.model) else DEFAULT_SUITE)


def _with_ranges(spec: ModalitySpec, ranges: Optional[list[list[int]]]) -> ModalitySpec:
    if not ranges:
        return spec
    return ModalitySpec.from_dict({**spec.to_dict(), "image_token_ranges": normalize_ranges(ranges, what="--image-token-ranges")})


def resolve_model(store: Store, request: RunRequest, log: Log = print) -> tuple[str, ModalitySpec]:
    """``(model URI, modality spec)`` of a request (the suite's data written first if absent)."""
    suite = suite_for(request)
    suite.prepare(store, request, log)
    uri, spec = suite.resolve_model(store, request, log)
    return uri, _with_ranges(spec, request.image_token_ranges)


def resolve_spec(store: Store, request: RunRequest) -> ModalitySpec:
    """The modality spec of a request's model, writing and training nothing (for validating tasks)."""
    return _with_ranges(suite_for(request).resolve_spec(store, request), request.image_token_ranges)


def resolve_run_inputs(store: Store, request: RunRequest, log: Log = print) -> RunInputs:
    """Everything a run needs, checked; raises ``ValueError`` (or ``TaskValidationError``) naming a bad input."""
    from cl_platform.train.sequence import validate_tasks

    suite = suite_for(request)
    if (request.clip_model or request.vqgan) and suite.name != "tasks":
        raise ValueError(f"--clip-model/--vqgan choose the CLIP probe of the 'tasks' suite (a Chameleon/Anole model "
                         f"whose image tokens a VQ-GAN decodes); suite {suite.name!r} measures generation with its own probe")
    model_uri, spec = resolve_model(store, request, log)
    tasks = suite.resolve_tasks(store, request)
    order = list(request.order) or tasks
    if sorted(order) != sorted(tasks):
        raise ValueError(f"--order {order} is not a permutation of the tasks {tasks}")
    validate_tasks(store, order, spec)
    kd_stream = suite.resolve_kd_stream(store, request)
    if kd_stream and not store.exists(f"streams/{kd_stream}/manifest.json"):
        raise ValueError(f"KD stream {kd_stream!r}: no stream at {store.uri(f'streams/{kd_stream}')}")
    probe = suite.resolve_probe(store, request, spec, log)
    stream = probe.params.get("stream") if probe else None
    if stream and not store.exists(f"streams/{stream}/manifest.json"):
        raise ValueError(f"probe stream {stream!r}: no stream at {store.uri(f'streams/{stream}')}")
    return RunInputs(suite=suite.name, store=store, tasks=order, model_uri=model_uri, spec=spec,
                     kd_stream=kd_stream, probe=probe)


__all__ = ["resolve_model", "resolve_run_inputs", "resolve_spec", "suite_for"]
