"""Continual-learning sequence on Ray Train: ``python jobs/sequence.py --help``.

Runs on an embedded local Ray, or on a cluster under ``ray job submit --working-dir . -- python
jobs/sequence.py ...``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cl_platform.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
