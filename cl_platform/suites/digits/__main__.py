"""``python -m cl_platform.suites.digits --store URL [--seed 0]``: write the digits suite into a store.

Writes the five tasks, the ``kd`` and ``probe`` streams, the tokenizer, the judge and
``suites/digits/suite.json``; skips what is already present and valid (see
:mod:`cl_platform.suites.digits.publish`).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cl_platform.suites.digits", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="store URL (file://..., a local path or s3://bucket/prefix); default file://$PWD/.cl_store")
    parser.add_argument("--seed", type=int, default=0, help="suite seed: split, rows, streams, judge (default 0)")
    parser.add_argument("--prefix", default="", help="prefix of the task and stream names, e.g. 'digits-' (default none)")
    parser.add_argument("--overwrite", action="store_true", help="replace artifacts that exist with different content")
    parser.add_argument("--json", action="store_true", help="print suite.json's summary (sizes, names, judge) as JSON at the end")
    args = parser.parse_args(argv)

    from cl_platform.suites.digits.publish import SuiteConflictError, write_suite

    try:
        desc = write_suite(args.store, args.seed, prefix=args.prefix, overwrite=args.overwrite)
    except SuiteConflictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: desc[k] for k in ("seed", "task_order_names", "names", "sizes", "judge")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
