"""Wall time of a continual-learning sequence and how much of it is Ray's fixed overhead.

Runs ``jobs/sequence.py`` (same arguments; default: the digits demo) in a subprocess, then reads
the run's ledger and ``timing.json``. Training steps and evaluation (of the base model and after
every round) are the useful work. Ray's fixed overhead is the Ray start plus everything else inside
the fit (worker group and dataset start-up, checkpoint I/O, shutdown). ``other`` is the rest of
the wall time: interpreter start and imports, suite and task checks, teacher cache, report and
plots. Pre-training the base model, when the store has none yet, is reported apart. Prints a
table, then one JSON line last.

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
    base_eval = sum(r.metrics.get("base_eval_seconds") or 0.0 for r in ledger.rounds)
    timing = store.read_json(f"runs/{run}/timing.json")
    # pre-training the base (first run on a store) is neither useful sequence work nor Ray's overhead
    pretrain = 0.0 if base_present else store.read_json("models/digits-base/model_card.json")["train_seconds"]
    # Ray's fixed overhead: starting Ray, and everything in the fit that is not training or
    # evaluation (worker group and dataset start-up, checkpoint I/O, shutdown)
    ray_overhead = timing["ray_start_s"] + timing["fit_s"] - train - evals - base_eval
    # the rest: interpreter start and imports, suite and task checks, teacher cache, report and plots
    other = wall - pretrain - timing["ray_start_s"] - timing["fit_s"]
    result = {
        "run": run, "methods": args.methods, "rounds": len(ledger.rounds), "base_was_present": base_present,
        "wall_s": round(wall, 1), "pretrain_s": round(pretrain, 1), "train_s": round(train, 1),
        "eval_s": round(evals + base_eval, 1), "ray_start_s": round(timing["ray_start_s"], 1),
        "fit_s": round(timing["fit_s"], 1), "ray_overhead_s": round(ray_overhead, 1),
        "ray_overhead_fraction": round(ray_overhead / wall, 3), "other_s": round(other, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(f"\n{'wall':<8}{'pretrain':>10}{'train':>8}{'eval':>8}{'Ray overhead':>16}{'other':>8}")
    print(f"{wall:<8.1f}{pretrain:>10.1f}{train:>8.1f}{evals + base_eval:>8.1f}"
          f"{ray_overhead:>9.1f} ({ray_overhead / wall:.0%}){other:>8.1f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
