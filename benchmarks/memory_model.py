"""The memory model (``cl_platform.train.memory``) against the measured peak of one training step.

For each tiny-Chameleon size of ``CHECK_SIZES`` (0.8 M, 7 M and 59 M parameters), precision and
checkpointing setting: one MoDE training step with KD (forward of the task and KD batches,
backward, clip, AdamW) in a child process on the CPU, its peak resident memory less the
runtime's fixed cost (``measure_runtime``), next to ``estimate_memory``'s total. Then the
estimate for Anole-7b on 24, 40 and 80 GB GPUs.

Prints the tables, then one JSON line last.

    python benchmarks/memory_model.py [--sizes 0.8M,7M,59M] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
from typing import Optional

from cl_platform.train.memory import (
    ANOLE_7B, CHECK_SIZES, estimate_memory, gpu_table, measure_runtime, measure_training_step,
)

MIB = 2**20


def compare(size: str, precision: str, checkpointing: bool, runtime: int) -> dict:
    """One size's estimate and measurement (MiB) and their ratio."""
    model, batch, seq, kd_batch = CHECK_SIZES[size]
    m = measure_training_step(model, precision=precision, gradient_checkpointing=checkpointing, batch_size=batch,
                              seq_len=seq, kd_batch_size=kd_batch)
    e = estimate_memory(model, precision=precision, gradient_checkpointing=checkpointing, batch_size=batch,
                        seq_len=seq, kd_batch_size=kd_batch, kd_top_k=16)
    measured = m.total - runtime
    return {"size": size, "parameters": e.settings["base_parameters"] + e.settings["adapter_parameters"],
            "precision": precision, "gradient_checkpointing": checkpointing, "batch_size": batch, "seq_len": seq,
            "kd_batch_size": kd_batch, "measured_mib": round(measured / MIB, 1),
            "estimate_mib": round(e.total / MIB, 1), "ratio": round(e.total / measured, 3),
            "step_seconds": round(m.step_seconds, 3)}


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(CHECK_SIZES), help="sizes to measure (comma-separated)")
    p.add_argument("--precisions", default="fp32,bf16", help="fp32, bf16 or both")
    args = p.parse_args(argv)
    rows = []
    print(f"{'size':>5} {'params':>10} {'prec':>5} {'ckpt':>5} {'measured MiB':>13} {'estimate MiB':>13} {'ratio':>6}")
    for precision in args.precisions.split(","):
        runtime = measure_runtime(precision)
        print(f"runtime's fixed cost ({precision}): {runtime / MIB:.1f} MiB (subtracted)")
        for size in args.sizes.split(","):
            for checkpointing in (False, True):
                r = compare(size, precision, checkpointing, runtime)
                rows.append(r)
                print(f"{size:>5} {r['parameters']:>10,} {precision:>5} {str(checkpointing):>5} "
                      f"{r['measured_mib']:>13.1f} {r['estimate_mib']:>13.1f} {r['ratio']:>6.2f}", flush=True)
    from transformers import ChameleonConfig

    anole = gpu_table(ChameleonConfig(**ANOLE_7B))
    print("\nAnole-7b, MoDE (E=4, r=8), KD batch = task batch x 1026 tokens, K=256 cached, 10% reserve:")
    print(f"{'prec':>5} {'ckpt':>5} {'batch':>5} {'seq':>5} {'GB':>7}  fits")
    for r in anole:
        print(f"{r['precision']:>5} {str(r['gradient_checkpointing']):>5} {r['batch_size']:>5} {r['seq_len']:>5} "
              f"{r['total_gb']:>7.1f}  {', '.join(f'{g} GB' for g in r['fits_gb']) or '-'}")
    ratios = [r["ratio"] for r in rows]
    result = {"benchmark": "memory_model", "machine": f"{platform.machine()} {platform.system()}", "cases": rows,
              "ratio_min": min(ratios), "ratio_max": max(ratios),
              "max_relative_error": round(max(abs(x - 1) for x in ratios), 3), "anole_7b": anole}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
