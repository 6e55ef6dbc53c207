"""Automated retraining: ``python jobs/scheduler.py run --store URL --lineage NAME`` (also ``cl-scheduler``)
trains every new task that lands in ``<store>/tasks/`` exactly once; ``status`` shows the lineage.
See ``python jobs/scheduler.py --help`` and README ("Automated retraining").
"""

import sys

from cl_platform.cli.scheduler import main

if __name__ == "__main__":
    sys.exit(main())
