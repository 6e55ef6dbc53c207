"""Automated retraining: ``python jobs/scheduler.py run --store URL --lineage NAME`` trains every
new task that lands in ``<store>/tasks/`` exactly once; ``status`` shows the lineage.
See ``python jobs/scheduler.py --help`` and README ("Automated retraining").
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cl_platform.scheduler.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
