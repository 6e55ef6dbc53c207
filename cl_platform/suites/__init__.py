"""Suites: plug-ins that resolve a run's inputs (tasks, model, modality spec, KD stream, probe).

- :mod:`.base`: :class:`Suite`, :class:`RunRequest`, :class:`RunInputs`
- :mod:`.registry`: :func:`register_suite`, :func:`get_suite`, :func:`available_suites`
- :mod:`.inputs`: :func:`resolve_run_inputs`, the one place a run's inputs are resolved
- :mod:`.store_tasks`: the ``tasks`` suite (a user's tasks and model in the store)
- :mod:`.mode_official`: the importer of the MoDE reference data into the task format
- ``digits/``: the built-in benchmark

Importing this package imports no suite: the registry loads a suite on first use.
"""

from cl_platform.suites.base import RunInputs, RunRequest, Suite
from cl_platform.suites.inputs import resolve_model, resolve_run_inputs, resolve_spec
from cl_platform.suites.registry import DEFAULT_SUITE, available_suites, get_suite, register_suite

__all__ = ["DEFAULT_SUITE", "RunInputs", "RunRequest", "Suite", "available_suites", "get_suite",
           "register_suite", "resolve_model", "resolve_run_inputs", "resolve_spec"]
