"""Hyperparameter sweep over continual-learning sequences: ``python sweeps/sweep.py --config sweeps/<name>.yaml``.

Runs on an embedded local Ray, or on a cluster under ``ray job submit --working-dir . -- python
sweeps/sweep.py --config sweeps/digits_quick.yaml``. ``--help`` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cl_platform.sweeps.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
