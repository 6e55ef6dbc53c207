"""Sweeps: Ray Tune with Optuna over a method's hyperparameters across task orders.

- :mod:`cl_platform.sweeps.space`: the YAML sweep file, parsed and validated (:func:`load_sweep`).
- :mod:`cl_platform.sweeps.trial`: the Tune function (one continual sequence per order, one report per round).
- :mod:`cl_platform.sweeps.pareto`: Pareto fronts as pure functions.
- :mod:`cl_platform.sweeps.results`: the trials table, best / Pareto JSON, the plot and the summary.
- :mod:`cl_platform.sweeps.runner`: :func:`run_sweep`, the driver; :mod:`cl_platform.sweeps.cli`: its command line.
- :mod:`cl_platform.sweeps.study`, :mod:`~cl_platform.sweeps.study_report`, :mod:`~cl_platform.sweeps.study_runner`:
  studies over task orders x seeds (orders and aggregation, tables and plots, the Ray driver).
"""

from cl_platform.sweeps.pareto import dominates, pareto_front
from cl_platform.sweeps.space import SweepConfigError, SweepSpec, load_sweep, parse_sweep

__all__ = ["SweepConfigError", "SweepSpec", "dominates", "load_sweep", "pareto_front", "parse_sweep"]
