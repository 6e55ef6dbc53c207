"""Hyperparameter sweep over continual-learning sequences: ``python sweeps/sweep.py --config sweeps/<name>.yaml``
(also ``cl-sweep``).

Runs on an embedded local Ray, or on a cluster under ``ray job submit --working-dir . -- python
sweeps/sweep.py --config sweeps/digits_quick.yaml``. ``--help`` lists the options.
"""

import sys

from cl_platform.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
