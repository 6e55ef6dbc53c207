"""Ray's routine lines are off unless --verbose: the loggers and Ray Train's LoggingConfig."""

from __future__ import annotations

import logging

from cl_platform.train.ray_logging import (
    QUIET_LOGGERS, quiet_ray_internals, routine_loggers, set_routine_logging, train_logging_config,
)


def test_routine_loggers_are_raised_unless_verbose():
    names = routine_loggers()
    assert "ray.data" in names
    assert any(n.endswith("execution/context.py") for n in names)  # Ray Train's report logger (named by file)
    set_routine_logging(False)
    assert all(logging.getLogger(n).getEffectiveLevel() >= logging.WARNING for n in names)
    report = logging.getLogger(next(n for n in names if n.endswith("context.py")))
    assert not report.isEnabledFor(logging.INFO)  # "Reporting training result ..." is an INFO line
    set_routine_logging(True)
    assert all(logging.getLogger(n).level == logging.NOTSET for n in names)
    set_routine_logging(False)


def test_train_logging_config_and_the_worker_hook():
    assert train_logging_config(False).log_level == "WARNING"
    assert train_logging_config(True).log_level == "INFO"
    quiet_ray_internals()
    assert all(logging.getLogger(n).level == logging.ERROR for n in QUIET_LOGGERS)
