"""Orders x seeds study on Ray: ``python jobs/study.py --help`` (also ``cl-study``).

Runs on an embedded local Ray, or on a cluster under ``ray job submit --working-dir . -- python
jobs/study.py ...``.
"""

import sys

from cl_platform.cli.study import main

if __name__ == "__main__":
    sys.exit(main())
