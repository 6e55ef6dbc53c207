"""``python -m cl_platform.scheduler run|status ...`` (same as ``jobs/scheduler.py``)."""

import sys

from cl_platform.scheduler.cli import main

if __name__ == "__main__":
    sys.exit(main())
