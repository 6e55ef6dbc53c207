"""Entry points: command lines that parse arguments and call the library (the top layer).

- :mod:`.sequence`: ``cl-sequence`` / ``jobs/sequence.py`` / ``python -m cl_platform.cli.sequence``
- :mod:`.sweep`: ``cl-sweep`` / ``sweeps/sweep.py`` / ``python -m cl_platform.cli.sweep``
- :mod:`.scheduler`: ``cl-scheduler`` / ``jobs/scheduler.py`` / ``python -m cl_platform.cli.scheduler``
- :mod:`.study`: ``cl-study`` / ``jobs/study.py`` / ``python -m cl_platform.cli.study``

``cl-pretrain`` / ``jobs/pretrain_base.py`` belongs to the suite it pre-trains for
(``cl_platform/suites/<suite>/pretrain_cli.py``).
"""
