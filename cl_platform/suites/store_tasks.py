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

**The CLIP image-alignment probe instead** (:mod:`cl_platform.eval.clip_probe`, the paper's
image-generation metric on real Anole models; ``docs/image_metric.md``): set, in the environment
of the process that resolves the run's inputs (``cl-sequence``, ``cl-sweep``, or the entry point
of their Ray job),

- ``CL_CLIP_PROBE_MODEL``: a CLIP ``save_pretrained`` directory (OpenAI CLIP ViT-B/32): a local
  path on the workers, a URI, or a path in the store;
- ``CL_CLIP_PROBE_VQGAN``: the VQ-GAN image tokenizer: an Anole checkpoint directory (holding
  ``tokenizer/vqgan.ckpt`` and ``tokenizer/vqgan.yaml``), a ``.ckpt`` or a ``.safetensors`` file,
  in the same forms;
- optionally ``CL_CLIP_PROBE_SAMPLES`` (images per prompt, default 1) and ``CL_CLIP_PROBE_BATCH``
  (prompts per ``generate`` call, default 4).

The probe stream and ``--probe-size`` (here: the number of prompts) are chosen as above. Both
paths or neither: one without the other is an error.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

from cl_platform.eval.likelihood import image_likelihood_spec
from cl_platform.eval.probe import ProbeSpec
from cl_platform.models.modality import ANOLE, ModalitySpec
from cl_platform.store import Store
from cl_platform.suites.base import Log, RunRequest, Suite


#: Environment variables that select the CLIP image-alignment probe (see the module docstring).
CLIP_PROBE_ENV: dict[str, str] = {
    "clip_model": "CL_CLIP_PROBE_MODEL",
    "vqgan": "CL_CLIP_PROBE_VQGAN",
    "samples_per_prompt": "CL_CLIP_PROBE_SAMPLES",
    "batch_size": "CL_CLIP_PROBE_BATCH",
}


def _positive_int(name: str, value: str) -> int:
    """``value`` as a positive int; ``ValueError`` naming the variable otherwise."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive integer")
    return number


def clip_probe_from_env_or_args(stream: str, size: Optional[int] = None, *, clip_model: Optional[str] = None,
                                vqgan: Optional[str] = None,
                                env: Optional[Mapping[str, str]] = None) -> Optional[ProbeSpec]:
    """The CLIP image-alignment :class:`ProbeSpec` over ``streams/<stream>``, or ``None`` when not asked for.

    ``clip_model`` / ``vqgan`` win over ``CL_CLIP_PROBE_MODEL`` / ``CL_CLIP_PROBE_VQGAN`` of ``env``
    (``os.environ`` when ``None``); ``CL_CLIP_PROBE_SAMPLES`` and ``CL_CLIP_PROBE_BATCH`` set the
    images per prompt and the prompts per ``generate`` call. ``size`` keeps the first prompts.

    Raises:
        ValueError: only one of the CLIP model and the VQ-GAN is given, or a count is not a positive integer.
    """
    from cl_platform.eval.clip_probe import clip_alignment_spec  # loads transformers: only when asked for

    env = os.environ if env is None else env
    clip_model = clip_model or env.get(CLIP_PROBE_ENV["clip_model"]) or None
    vqgan = vqgan or env.get(CLIP_PROBE_ENV["vqgan"]) or None
    if clip_model is None and vqgan is None:
        return None
    if clip_model is None or vqgan is None:
        missing = CLIP_PROBE_ENV["clip_model"] if clip_model is None else CLIP_PROBE_ENV["vqgan"]
        raise ValueError(f"CLIP image-alignment probe: {missing} is not set; it needs both a CLIP model "
                         f"({CLIP_PROBE_ENV['clip_model']}) and the VQ-GAN ({CLIP_PROBE_ENV['vqgan']})")
    options = {key: _positive_int(var, env[var]) for key, var in CLIP_PROBE_ENV.items()
               if key in ("samples_per_prompt", "batch_size") and env.get(var)}
    return clip_alignment_spec(stream, clip_model, vqgan, size=size, **options)


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
        clip = clip_probe_from_env_or_args(stream, request.probe_size, clip_model=request.clip_model,
                                           vqgan=request.vqgan)
        if clip is not None:
            return clip
        return image_likelihood_spec(stream, request.probe_size)


__all__ = ["CLIP_PROBE_ENV", "StoreTasks", "clip_probe_from_env_or_args", "spec_of_model", "stream_exists"]
