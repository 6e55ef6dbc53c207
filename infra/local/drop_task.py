"""Drop a digits task into a store, the way a data team would land a new task (local walkthrough).

    python infra/local/drop_task.py --store "$CL_STORE" parity my-parity [--rows 64]

publishes a copy of the built-in digits task ``parity`` as ``tasks/my-parity`` (``_READY``
written last, so a scheduler watching the store sees it only once it is complete).

The first call also seeds what a digits lineage needs besides its tasks (``models/digits-base``,
``streams/``, ``suites/digits/``), copied from a local staging store (default
``.s3_local/digits``) where the suite is written and the base model pre-trained once
(``--base-steps``; the full 600 steps take a few minutes on a laptop CPU, 30 are enough to see
the loop work). The suite's own five tasks stay in the staging store: a scheduler watching the
target store learns only what you drop.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: What a digits lineage reads besides its tasks, in the order it is copied (the suite's
#: ``suite.json`` tells ``jobs/sequence.py`` the suite is present, so it goes last).
SEED_DIRS = ("models", "streams", "suites")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infra/local/drop_task.py", description=__doc__.splitlines()[0])
    p.add_argument("source", help="digits task to copy: parity, plus_k, compare, name or pair")
    p.add_argument("name", help="name of the new task in the store (the task-name rule: [a-z0-9][a-z0-9_-]{0,63})")
    p.add_argument("--store", default=os.environ.get("CL_STORE"), help="target store URL (default $CL_STORE)")
    p.add_argument("--rows", type=int, default=None, help="keep only the first N train rows (quicker rounds)")
    p.add_argument("--staging", default=os.path.join(REPO, ".s3_local", "digits"),
                   help="local store where the suite and base model are built once (default .s3_local/digits)")
    p.add_argument("--base-steps", type=int, default=None, help="pre-training steps of the base model (default: the full run)")
    return p


def seed(target, staging, *, base_steps: int | None, log=print) -> None:
    """Write the suite and base model into ``staging`` (once) and copy them to ``target`` where absent."""
    from cl_platform.suites.digits.pretrain import PretrainConfig, ensure_base_model
    from cl_platform.suites.digits.publish import write_suite

    write_suite(staging, log=lambda *_: None)
    cfg = PretrainConfig() if base_steps is None else PretrainConfig(steps=base_steps, log_every=max(1, base_steps // 3))
    ensure_base_model(staging, cfg, log=log)
    local_root = staging.uri("").split("://", 1)[1]
    for d in SEED_DIRS:
        if not target.exists(d):
            log(f"seeding {target.uri(d)}")
            target.put_dir(os.path.join(local_root, d), d)


def drop(target, staging, source: str, name: str, *, rows: int | None) -> dict:
    """Publish ``staging``'s task ``source`` as ``target``'s task ``name``; returns its manifest."""
    from cl_platform.data.task_format import read_task, validate_name, write_task

    validate_name(name)
    task = read_task(staging, source)
    train = task.train if rows is None else task.train.slice(0, rows)
    return write_task(target, name, train, task.eval, spec_id=task.spec_id, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.store:
        print("error: no --store and no CL_STORE in the environment (. .s3_local/env after make s3-up)", file=sys.stderr)
        return 2
    from cl_platform.store import Store

    try:
        target, staging = Store(args.store), Store(os.path.abspath(args.staging))
        seed(target, staging, base_steps=args.base_steps)
        manifest = drop(target, staging, args.source, args.name, rows=args.rows)
    except (ValueError, FileNotFoundError) as exc:  # bad name, unknown source task, unreachable store ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"dropped {target.uri('tasks/' + args.name)} (rows {manifest['rows']}); a scheduler watching the store picks it up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
