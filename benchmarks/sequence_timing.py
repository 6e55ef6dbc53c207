"""Wall time of a continual-learning sequence and how much of it is Ray's fixed overhead.

Runs ``jobs/sequence.py`` (same arguments; default: the digits demo) in a subprocess, then reads
the run's ledger: the time inside the training loops (train steps + evaluation of every round) is
the useful work; the rest of the wall time (Ray start, fit set-up, dataset start-up, checkpoint
I/O, teacher cache, suite checks) is overhead. Pre-training the base model, when the store has
none yet, is reported apart. Prints a table, then one JSON line last.

    python benchmarks/sequence_timing.py [--store URL] [-- extra jobs/sequence.py arguments]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=os.path.join(ROOT, ".cl_store"))
    p.add_argument("--methods", default="mode,seq_lora,moe_lora")
    p.add_argument("extra", nargs="*", help="more jobs/sequence.py arguments (after --)")
    args = p.parse_args(argv)

    from cl_platform.store import Store
    from cl_platform.train.ledger import Ledger

    store = Store(args.store)
    base_present = store.exists("models/digits-base/model_card.json")
    run = "timing-" + time.strftime("%Y%m%d-%H%M%S")
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "sequence.py"), "--store", args.store,
           "--methods", args.methods, "--run", run, *args.extra]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.time() - t0
    ledger = Ledger.open(store, run)
    train = sum(r.metrics.get("train_seconds") or 0.0 for r in ledger.rounds)
    evals = sum(r.metrics.get("eval_seconds") or 0.0 for r in ledger.rounds)
    # pre-training the base (first run on a store) is neither useful sequence work nor Ray's overhead
    pretrain = 0.0 if base_present else store.read_json("models/digits-base/model_card.json")["train_seconds"]
    overhead = wall - train - evals - pretrain
    result = {
        "run": run, "methods": args.methods, "rounds": len(ledger.rounds), "base_was_present": base_present,
        "wall_s": round(wall, 1), "train_s": round(train, 1), "eval_s": round(evals, 1), "pretrain_s": round(pretrain, 1),
        "overhead_s": round(overhead, 1), "overhead_fraction": round(overhead / wall, 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(f"\n{'wall':<10}{'pretrain':>10}{'train':>10}{'eval':>10}{'overhead':>12}")
    print(f"{wall:<10.1f}{pretrain:>10.1f}{train:>10.1f}{evals:>10.1f}{overhead:>9.1f} ({overhead / wall:.0%})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
