"""Pre-train the tiny digits base model into a store: ``python jobs/pretrain_base.py --help`` (also ``cl-pretrain``)."""

import sys

from cl_platform.suites.digits.pretrain_cli import main

if __name__ == "__main__":
    sys.exit(main())
