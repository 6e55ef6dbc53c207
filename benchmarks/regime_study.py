"""Regime study on digits: learning rate x steps per task, for mode, seq_lora and moe_lora.

One sequence per (lr, steps) cell, all methods in one run (``jobs/sequence.py --suite digits
--methods ... --lr X --steps N --run regime-lrX-stepsN``), one cell at a time, cheapest cells first
(of equal cost, the largest learning rate first).
A cell whose run already has ``results.json`` is read back, not rerun; a cell whose run was
interrupted is continued with ``--resume``. From each run's ``results.json``, per method:

- plasticity: mean of the accuracy matrix diagonal (accuracy on each task right after learning it);
- final average accuracy, average forgetting and generation drop (the run's metrics), and the final
  accuracy on the tasks before the last (what is kept of them: near 0 when forgetting is total);
- upper-bound gap: per task, the accuracy of a LoRA trained on that task alone from the base model
  (README "LoRA alone" row, or ``--upper-bound`` a JSON line of ``benchmarks/digits_upper_bound.py``)
  minus the method's diagonal; its mean and maximum over tasks.

Writes ``<store>/studies/regime/regime.json``, ``regime.md`` (the table) and ``regime.png`` (plasticity against final average
accuracy and against forgetting, one marker per (method, lr, steps)), copies the plot to
``docs/images/regime.png``, prints a table, then one JSON line last.

    python benchmarks/regime_study.py [--store ./.cl_store] [--lrs 3e-4,1e-3,3e-3] [--steps 100,200,400]
        [--methods mode,seq_lora,moe_lora] [--upper-bound FILE] [--no-run] [-- extra jobs/sequence.py args]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_PREFIX = "studies/regime"
#: markers of the plot, per method (others get "o")
MARKERS = {"mode": "o", "mode_nokd": "D", "seq_lora": "s", "moe_lora": "^"}


def run_name(lr: float, steps: int) -> str:
    """Run name of a cell: ``regime-lr3e-4-steps100`` (a valid run name: no dots)."""
    mantissa, exponent = f"{lr:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".").replace(".", "p")
    return f"regime-lr{mantissa}e{int(exponent)}-steps{steps}"


def readme_upper_bound(readme_path: str) -> dict[str, float]:
    """Per-task LoRA-alone accuracies from the README's task table ("LoRA alone" row under a task header)."""
    with open(readme_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| LoRA alone"):
            header = [c.strip() for c in lines[i - 2].strip().strip("|").split("|")][1:]
            values = [float(c) for c in line.strip().strip("|").split("|")[1:]]
            if len(header) != len(values):
                raise ValueError(f"{readme_path}: the 'LoRA alone' row has {len(values)} values for {len(header)} tasks")
            return dict(zip(header, values))
    raise ValueError(f"{readme_path}: no '| LoRA alone' row")


def file_upper_bound(path: str) -> dict[str, float]:
    """Per-task accuracies from the JSON line ``benchmarks/digits_upper_bound.py`` prints last (or a file of it)."""
    with open(path, encoding="utf-8") as f:
        text = [line for line in f.read().splitlines() if line.strip()]
    doc = json.loads(text[-1])
    acc = doc.get("accuracy") if isinstance(doc, dict) else None
    if not isinstance(acc, dict) or not acc:
        raise ValueError(f"--upper-bound {path}: last line has no 'accuracy' mapping of task -> accuracy")
    return {str(k): float(v) for k, v in acc.items()}


def method_regime_metrics(entry: Mapping[str, Any], order: Sequence[str], upper: Mapping[str, float]) -> dict[str, Any]:
    """Plasticity, final accuracy, forgetting, generation drop and upper-bound gaps of one method's results."""
    from cl_platform.eval.metrics import earlier_accuracy, plasticity

    R = np.asarray(entry["accuracy_matrix"], dtype=np.float64)
    diag = np.diag(R)
    metrics = entry["metrics"]
    gaps = {t: float(upper[t] - diag[i]) for i, t in enumerate(order) if t in upper}
    return {
        "plasticity": plasticity(R),
        "diagonal": {t: float(diag[i]) for i, t in enumerate(order)},
        "final_accuracy": {t: float(R[-1, i]) for i, t in enumerate(order)},
        "avg_accuracy": float(metrics["avg_accuracy"]),
        "avg_forgetting": float(metrics["avg_forgetting"]),
        "earlier_final": earlier_accuracy(R),
        "generation_drop": float(metrics["generation_drop"]),
        "upper_bound_gap": gaps,
        "mean_gap": float(np.mean(list(gaps.values()))) if gaps else None,
        "max_gap": float(max(gaps.values())) if gaps else None,
        "train_seconds": float(sum(r.get("train_seconds") or 0.0 for r in entry.get("rounds", []))),
        "eval_seconds": float(sum(r.get("eval_seconds") or 0.0 for r in entry.get("rounds", []))),
    }


def cell_summary(results: Mapping[str, Any], upper: Mapping[str, float], timing: Mapping[str, Any] | None) -> dict:
    """Every method's regime metrics of one run's results (and the run's timing when it has one)."""
    order = results["task_order"]
    return {
        "run": results["run"],
        "task_order": list(order),
        "timing": dict(timing) if timing else None,
        "methods": {m: method_regime_metrics(e, order, upper) for m, e in results["methods"].items()},
    }


def run_cell(store_url: str, lr: float, steps: int, methods: str, extra: Sequence[str], *, resume: bool) -> float:
    """Run one cell's sequence in a subprocess (its output goes to ours); returns its wall seconds."""
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "sequence.py"), "--suite", "digits", "--store", store_url,
           "--methods", methods, "--lr", repr(lr), "--steps", str(steps), "--run", run_name(lr, steps), *extra]
    if resume:
        cmd.append("--resume")
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.time() - t0


def table(cells: Sequence[Mapping[str, Any]]) -> str:
    """One line per (lr, steps, method): the regime metrics in percent / points."""
    head = f"{'lr':>7} {'steps':>5} {'method':<9} {'plast.':>6} {'final':>6} {'kept':>5} {'forget':>6} " \
           f"{'gen.drop':>8} {'mean gap':>8} {'max gap':>7} {'wall s':>7}"
    lines = [head, "-" * len(head)]
    for c in cells:
        wall = (c.get("timing") or {}).get("wall_s")
        for m, r in c["methods"].items():
            gap = ("{:8.1f}".format(100 * r["mean_gap"]) if r["mean_gap"] is not None else f"{'-':>8}",
                   "{:7.1f}".format(100 * r["max_gap"]) if r["max_gap"] is not None else f"{'-':>7}")
            lines.append(f"{c['lr']:>7g} {c['steps']:>5} {m:<9} {100 * r['plasticity']:6.1f} "
                         f"{100 * r['avg_accuracy']:6.1f} {100 * (r.get('earlier_final') or 0.0):5.1f} "
                         f"{100 * r['avg_forgetting']:6.1f} "
                         f"{100 * r['generation_drop']:8.1f} {gap[0]} {gap[1]} "
                         f"{wall if wall is not None else '-':>7}")
    return "\n".join(lines)


def markdown_table(cells: Sequence[Mapping[str, Any]]) -> str:
    """The table of :func:`table` in markdown (percent / points), for docs."""
    lines = ["| lr | steps | method | plasticity | final avg acc | kept (earlier tasks) | forgetting | "
             "generation drop | mean gap to LoRA alone | max gap |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        for m, r in c["methods"].items():
            gap = [f"{100 * r[k]:.1f}" if r[k] is not None else "-" for k in ("mean_gap", "max_gap")]
            lines.append(f"| {c['lr']:g} | {c['steps']} | {m} | {100 * r['plasticity']:.1f} | {100 * r['avg_accuracy']:.1f} "
                         f"| {100 * (r.get('earlier_final') or 0.0):.1f} | {100 * r['avg_forgetting']:.1f} "
                         f"| {100 * r['generation_drop']:.1f} | {gap[0]} | {gap[1]} |")
    return "\n".join(lines) + "\n"


def plot(cells: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG: plasticity against final average accuracy (left) and against forgetting (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    lrs = sorted({c["lr"] for c in cells})
    steps = sorted({c["steps"] for c in cells})
    colors = {lr: f"C{i}" for i, lr in enumerate(lrs)}
    sizes = {s: 30 + 50 * i for i, s in enumerate(steps)}
    fig = Figure(figsize=(12, 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    methods: list[str] = []
    for ax, key, label in ((axes[0], "avg_accuracy", "final average accuracy (%)"),
                           (axes[1], "avg_forgetting", "average forgetting (points)")):
        for c in cells:
            for m, r in c["methods"].items():
                if m not in methods:
                    methods.append(m)
                ax.scatter(100 * r["plasticity"], 100 * r[key], marker=MARKERS.get(m, "o"), s=sizes[c["steps"]],
                           color=colors[c["lr"]], edgecolors="black", linewidths=0.5, alpha=0.85)
                ax.annotate(f"{c['lr']:g}/{c['steps']}", (100 * r["plasticity"], 100 * r[key]), fontsize=6,
                            xytext=(4, 3), textcoords="offset points", color="dimgray")
        ax.set_xlabel("plasticity: mean accuracy right after each task (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker=MARKERS.get(m, "o"), linestyle="", color="grey", label=m) for m in methods]
    handles += [Line2D([], [], marker="o", linestyle="", color=colors[lr], label=f"lr {lr:g}") for lr in lrs]
    handles += [Line2D([], [], marker="o", linestyle="", color="grey", markersize=math.sqrt(sizes[s]),
                       label=f"{s} steps/task") for s in steps]
    axes[1].legend(handles=handles, loc="best", fontsize=8)
    fig.suptitle("Digits regime study: learning rate x steps per task")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _floats(text: str, what: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of numbers") from None
    if not out or any(not (x > 0) for x in out):
        raise ValueError(f"{what}: {text!r} needs positive numbers")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=os.path.join(ROOT, ".cl_store"))
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="comma-separated learning rates")
    p.add_argument("--steps", default="100,200,400", help="comma-separated steps per task")
    p.add_argument("--methods", default="mode,seq_lora,moe_lora")
    p.add_argument("--upper-bound", default=None,
                   help="JSON output of benchmarks/digits_upper_bound.py (default: README's 'LoRA alone' row)")
    p.add_argument("--no-run", action="store_true", help="only read back finished cells; run nothing")
    p.add_argument("--images", default=os.path.join(ROOT, "docs", "images", "regime.png"),
                   help="where the plot is copied ('' for nowhere)")
    p.add_argument("extra", nargs="*", help="more jobs/sequence.py arguments (after --)")
    args = p.parse_args(argv)
    try:
        lrs = _floats(args.lrs, "--lrs")
        steps_list = [int(s) for s in _floats(args.steps, "--steps")]
        upper = file_upper_bound(args.upper_bound) if args.upper_bound else readme_upper_bound(
            os.path.join(ROOT, "README.md"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from cl_platform.eval.report import read_results
    from cl_platform.store import Store

    store = Store(args.store)
    cells: list[dict[str, Any]] = []
    skipped: list[str] = []
    for steps in sorted(steps_list):  # cheapest cells first; of equal cost, the largest lr (learns most) first
        for lr in sorted(lrs, reverse=True):
            run = run_name(lr, steps)
            wall_file = f"{STUDY_PREFIX}/cells/{run}.json"
            if not store.exists(f"runs/{run}/results.json"):
                if args.no_run:
                    skipped.append(run)
                    continue
                wall = run_cell(store.url, lr, steps, args.methods, args.extra,
                                resume=store.exists(f"runs/{run}/ledger.json"))
                store.write_json(wall_file, {"run": run, "wall_s": round(wall, 1),
                                             "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            results = read_results(store, f"runs/{run}")
            timing = store.read_json(f"runs/{run}/timing.json") if store.exists(f"runs/{run}/timing.json") else {}
            if store.exists(wall_file):
                timing = {**timing, **{k: v for k, v in store.read_json(wall_file).items() if k != "run"}}
            cell = {"lr": lr, "steps": steps, **cell_summary(results, upper, timing)}
            cells.append(cell)
            store.write_json(f"{STUDY_PREFIX}/regime.json", _document(cells, upper, skipped, args))
            print(table([cell]), flush=True)

    doc = _document(cells, upper, skipped, args)
    store.write_json(f"{STUDY_PREFIX}/regime.json", doc)
    if cells:
        png = plot(cells)
        store.write_bytes(f"{STUDY_PREFIX}/regime.png", png)
        store.write_bytes(f"{STUDY_PREFIX}/regime.md", markdown_table(cells).encode())
        if args.images:
            os.makedirs(os.path.dirname(args.images), exist_ok=True)
            with open(args.images, "wb") as f:
                f.write(png)
    print()
    print(table(cells))
    if skipped:
        print(f"not run yet: {', '.join(skipped)}")
    print(json.dumps({"benchmark": "regime_study", "study": store.uri(f"{STUDY_PREFIX}/regime.json"),
                      "cells": [{"lr": c["lr"], "steps": c["steps"], "run": c["run"],
                                 "methods": {m: {k: r[k] for k in ("plasticity", "avg_accuracy", "avg_forgetting",
                                                                   "generation_drop", "mean_gap", "max_gap")}
                                             for m, r in c["methods"].items()}} for c in cells],
                      "skipped": skipped}, sort_keys=True))
    return 0


def _document(cells: list, upper: Mapping[str, float], skipped: list, args: argparse.Namespace) -> dict:
    return {"study": "regime", "suite": "digits", "methods": args.methods.split(","), "lrs": args.lrs,
            "steps": args.steps, "extra_args": list(args.extra), "upper_bound": dict(upper),
            "upper_bound_source": args.upper_bound or "README.md 'LoRA alone' row", "cells": cells,
            "not_run": skipped}


if __name__ == "__main__":
    sys.exit(main())
