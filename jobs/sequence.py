"""Continual-learning sequence on Ray Train: ``python jobs/sequence.py --help`` (also ``cl-sequence``).

Runs on an embedded local Ray, or on a cluster under ``ray job submit --working-dir . -- python
jobs/sequence.py ...``.
"""

import sys

from cl_platform.cli.sequence import main

if __name__ == "__main__":
    sys.exit(main())
