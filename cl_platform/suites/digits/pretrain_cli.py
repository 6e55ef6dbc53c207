"""Command line of ``jobs/pretrain_base.py`` / ``cl-pretrain``: pre-train the tiny digits base model into a store.

Reuses ``<store>/models/digits-base`` when it is complete (its ``model_card.json`` exists) unless
``--force``. Prints progress lines while training and a summary of the model card at the end.
"""

from __future__ import annotations

import argparse
import json
import sys

from cl_platform.suites.digits.pretrain import BASE_MODEL_NAME, PretrainConfig, card_summary, ensure_base_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = PretrainConfig()
    p = argparse.ArgumentParser(description="Pre-train the tiny Chameleon-architecture digits base model (the UMGM).")
    p.add_argument("--store", default=None, help="store URL or path (file://, s3://, local path); default: CL_STORE, else ./.cl_store")
    p.add_argument("--name", default=BASE_MODEL_NAME, help=f"model name under <store>/models/ (default {BASE_MODEL_NAME})")
    p.add_argument("--force", action="store_true", help="retrain and overwrite even if a complete model exists")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"data split, init and sampling seed (default {defaults.seed})")
    p.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"rows per step (default {defaults.batch_size})")
    p.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr})")
    p.add_argument("--threads", type=int, default=defaults.threads, help=f"torch threads (default {defaults.threads})")
    p.add_argument("--json", action="store_true", help="print the model card as JSON on the last line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = PretrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads)
    from cl_platform.store import Store

    base = ensure_base_model(Store(args.store), cfg, name=args.name, force=args.force)
    print(("reused " if base.reused else "trained ") + base.uri)
    print(card_summary(base.card))
    if args.json:
        print(json.dumps(base.card, sort_keys=True))
    return 0



if __name__ == "__main__":
    sys.exit(main())
