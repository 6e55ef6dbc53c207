"""The digits suite as a plug-in: five tasks, a pre-trained tiny base model, a KD stream and the judge.

``prepare`` writes the suite into the store when ``suite.json`` is absent
(:func:`~cl_platform.suites.digits.publish.write_suite`); the base model is the stored
``digits-base``, pre-trained into the store the first time
(:func:`~cl_platform.suites.digits.pretrain.ensure_base_model`) unless ``--model`` names another.
The generation probe is the judge's share of correctly drawn digits
(:mod:`cl_platform.suites.digits.probe`), or the image-token likelihood probe when a probe stream
is asked for.
"""

from __future__ import annotations

from typing import Optional

from cl_platform.eval.likelihood import image_likelihood_spec
from cl_platform.eval.probe import ProbeSpec
from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store
from cl_platform.suites.base import Log, RunRequest, Suite
from cl_platform.suites.digits.tasks import TASK_ORDER

#: Images per digit of the judge probe: a full run, and a quick one.
PROBE_PER_DIGIT, QUICK_PROBE_PER_DIGIT = 10, 2


class Digits(Suite):
    """The built-in benchmark on scikit-learn's 8x8 handwritten digits (offline, CPU-sized)."""

    name = "digits"
    default_tasks = TASK_ORDER

    def prepare(self, store: Store, request: RunRequest, log: Log) -> None:
        from cl_platform.suites.digits.publish import JUDGE_FILE, SUITE_JSON, write_suite

        if not store.exists(SUITE_JSON) or not store.exists(JUDGE_FILE):  # absent, or from before the judge's file
            log(f"writing the digits suite into {store.uri()}")
            write_suite(store)

    def resolve_model(self, store: Store, request: RunRequest, log: Log) -> tuple[str, ModalitySpec]:
        from cl_platform.suites.digits.pretrain import ensure_base_model
        from cl_platform.suites.digits.vocab import DIGITS_SPEC

        if request.model:
            uri = request.model if "://" in request.model else store.uri(request.model)
        else:
            uri = ensure_base_model(store, log=log).uri
        return uri, DIGITS_SPEC

    def resolve_spec(self, store: Store, request: RunRequest) -> ModalitySpec:
        from cl_platform.suites.digits.vocab import DIGITS_SPEC

        return DIGITS_SPEC

    def resolve_tasks(self, store: Store, request: RunRequest) -> list[str]:
        from cl_platform.suites.digits.publish import read_suite_info

        return list(request.tasks) or list(read_suite_info(store)["task_order"])

    def resolve_kd_stream(self, store: Store, request: RunRequest) -> Optional[str]:
        return request.kd_stream or "kd"

    def resolve_probe(self, store: Store, request: RunRequest, spec: ModalitySpec, log: Log) -> Optional[ProbeSpec]:
        from cl_platform.suites.digits.probe import digits_judge_spec
        from cl_platform.suites.digits.publish import JUDGE_FILE

        if request.probe_stream:
            return image_likelihood_spec(request.probe_stream, request.probe_size)
        per_digit = request.probe_size or (QUICK_PROBE_PER_DIGIT if request.quick else PROBE_PER_DIGIT)
        return digits_judge_spec(JUDGE_FILE, per_digit)


__all__ = ["Digits", "PROBE_PER_DIGIT", "QUICK_PROBE_PER_DIGIT"]
