"""What Ray prints around a run: its own progress lines stay, its internals only with ``--verbose``.

A run's terminal shows the platform's lines (inputs, progress with loss, rate and time left, the
final table, the report's path) and Ray's warnings and errors. Ray's routine lines are off unless
``--verbose``, through Ray's own settings rather than by filtering text:

- Ray Train's per-report and per-checkpoint lines (``Reporting training result ...``,
  ``Checkpoint successfully created at ...``): the ``ray.train`` loggers through
  ``RunConfig(logging_config=LoggingConfig(log_level=...))`` (:func:`train_logging_config`), and
  the report logger of the workers' training context, which is named after its file and so is
  outside ``ray.train``: its level is raised in every Train worker (:func:`set_routine_logging`,
  called by the training loop);
- Ray Data's per-dataset lines (execution start, plan, progress bars): the ``DataContext``
  (:func:`cl_platform.data.pipeline.configure_data_context`) and the ``ray.data`` logger.

The embedded Ray also starts without the dashboard (faster, no port to pick), so Ray's State API
is not served; Ray Train's ``PlacementGroupCleaner`` polls that API about once a second and logs a
warning on every failed call, which would bury the progress lines. Placement groups of a finished
or failed fit are still released by the controller itself; only the cleaner's poll is silenced.
"""

from __future__ import annotations

import logging
from typing import Any

#: Loggers lowered to ERROR in the workers of an embedded Ray (their warnings are noise there).
QUIET_LOGGERS: tuple[str, ...] = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)

#: Loggers of routine per-dataset lines, raised to WARNING unless verbose (``ray.train``'s own
#: loggers follow the fit's :func:`train_logging_config`, which keeps Ray's system log files whole).
ROUTINE_LOGGERS: tuple[str, ...] = ("ray.data",)

#: Import path of :func:`quiet_ray_internals`, for ``runtime_env["worker_process_setup_hook"]``.
SETUP_HOOK = f"{__name__}.quiet_ray_internals"


def _train_context_logger() -> str:
    """Name of the logger Ray Train's worker context reports through (its module's file path)."""
    from ray.train.v2._internal.execution import context

    return context.__file__


def routine_loggers() -> list[str]:
    """Every logger :func:`set_routine_logging` raises to WARNING when not verbose."""
    names = list(ROUTINE_LOGGERS)
    try:
        names.append(_train_context_logger())
    except ImportError:  # another Ray Train version: its loggers live under ray.train
        pass
    return names


def quiet_ray_internals() -> None:
    """Raise :data:`QUIET_LOGGERS` to ERROR in this process (every worker of an embedded Ray)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def set_routine_logging(verbose: bool = False) -> None:
    """:func:`routine_loggers` at WARNING in this process unless ``verbose`` (then as Ray set them);
    called by the driver and at the start of every Train worker's loop."""
    for name in routine_loggers():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def train_logging_config(verbose: bool = False) -> Any:
    """Ray Train's ``LoggingConfig`` for a fit: INFO with ``verbose``, else WARNING."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING")


__all__ = ["QUIET_LOGGERS", "ROUTINE_LOGGERS", "SETUP_HOOK", "quiet_ray_internals", "routine_loggers",
           "set_routine_logging", "train_logging_config"]
