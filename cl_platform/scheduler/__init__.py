"""Automated retraining: a scheduler that starts a continual-learning round when a new task lands.

Modules (one concern each):

- :mod:`~cl_platform.scheduler.config`: a lineage's settings (``lineages/<name>/lineage.json``).
- :mod:`~cl_platform.scheduler.state`: the lineage state (``state.json``), atomic and fenced writes.
- :mod:`~cl_platform.scheduler.lease`: one acting scheduler per lineage (conditional-create lease).
- :mod:`~cl_platform.scheduler.detect`: ready tasks in landing order; change fingerprints.
- :mod:`~cl_platform.scheduler.validate`: task checks against the lineage's model, policy minimum rows.
- :mod:`~cl_platform.scheduler.runner`: rounds as Ray jobs (Jobs API) or local processes.
- :mod:`~cl_platform.scheduler.loop`: the loop (:class:`Scheduler`): follow, retry, detect, submit.
- :mod:`~cl_platform.scheduler.status`: ``status`` as a table or JSON.
- :mod:`~cl_platform.scheduler.events`: one JSON line per event.
- :mod:`~cl_platform.scheduler.cli`: ``jobs/scheduler.py`` / ``python -m cl_platform.scheduler``.
"""
