"""Logging set-up run in every Ray worker process of an embedded local Ray.

The embedded Ray starts without the dashboard (faster, no port to pick), so Ray's State API is
not served. Ray Train's ``PlacementGroupCleaner`` polls that API about once a second and logs a
warning on every failed call ("Failed to query Ray Train Controller actor state"), which would
bury the progress lines of a run. Placement groups of a finished or failed fit are still released
by the controller itself; only the cleaner's liveness poll is silenced.
"""

from __future__ import annotations

import logging

#: Loggers lowered to ERROR in the workers of an embedded Ray.
QUIET_LOGGERS: tuple[str, ...] = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)

#: Import path of :func:`quiet_ray_internals`, for ``runtime_env["worker_process_setup_hook"]``.
SETUP_HOOK = f"{__name__}.quiet_ray_internals"


def quiet_ray_internals() -> None:
    """Raise the level of :data:`QUIET_LOGGERS` to ERROR in this process."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


__all__ = ["QUIET_LOGGERS", "SETUP_HOOK", "quiet_ray_internals"]
