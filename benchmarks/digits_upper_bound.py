"""Per-task upper bounds on digits: each task fine-tuned alone from the base model with plain LoRA.

For every task of the suite, a fresh PEFT LoRA (r=8, alpha=16, dropout 0.05, on the MLP
``gate_proj``/``up_proj``/``down_proj``) is trained on the task's train rows only, from the
pre-trained base model, with the answer-only loss; then the task's eval split is scored by greedy
exact match of the answer tokens. No other task is seen, so nothing can be forgotten: these are the
accuracies a continual-learning method can at best reach on each task.

Prints a table, then one JSON line last::

    {"benchmark": "digits_upper_bound", "accuracy": {task: acc}, "seconds": {task: s}, ...}

Usage: ``python benchmarks/digits_upper_bound.py [--store ./.cl_store] [--tasks parity,name]``.
The base model is pre-trained into the store first when it is not there
(``jobs/pretrain_base.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np  # noqa: E402
import torch  # noqa: E402


@dataclass
class LoraRun:
    """Settings of one task's LoRA fine-tuning.

    Attributes:
        r: LoRA rank.
        alpha: LoRA alpha (scale alpha / r).
        dropout: LoRA dropout.
        targets: module names LoRA is applied to.
        epochs: passes over the task's train rows.
        batch_size: rows per step.
        lr: peak learning rate (AdamW, 10% linear warm-up, cosine decay to 0).
        weight_decay: AdamW weight decay on the LoRA weights.
        seed: LoRA initialisation and batch-order seed.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    epochs: int = 16
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0


def finetune_task(base_dir: str, rows: list, run: LoraRun, *, log=print):
    """A LoRA-wrapped base model trained on ``rows`` (``(tokens, answer_start)``); returns ``(model, steps)``."""
    from peft import LoraConfig, get_peft_model

    from cl_platform.models.chameleon import load_model
    from cl_platform.suites.digits import vocab as V
    from cl_platform.train.batches import batch_loss, shuffled_batches

    torch.manual_seed(run.seed)
    base = load_model(base_dir)
    model = get_peft_model(
        base,
        LoraConfig(r=run.r, lora_alpha=run.alpha, lora_dropout=run.dropout, target_modules=list(run.targets), bias="none"),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=run.lr, weight_decay=run.weight_decay)
    steps_per_epoch = len(rows) // run.batch_size
    total = steps_per_epoch * run.epochs
    warmup = max(1, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng([run.seed, 0x10A])
    model.train()
    step = 0
    for epoch in range(run.epochs):
        losses = []
        for batch in shuffled_batches(rows, run.batch_size, V.PAD_ID, rng=rng):
            loss = batch_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
        log(f"    epoch {epoch + 1}/{run.epochs}  loss {np.mean(losses):.4f}")
    model.eval()
    return model, step


def main(argv: list[str] | None = None) -> int:
    from cl_platform.eval.accuracy import answer_accuracy, eval_rows_from_table
    from cl_platform.models.chameleon import fetch_model_dir
    from cl_platform.suites.digits import vocab as V
    from cl_platform.suites.digits.pretrain import PretrainConfig, ensure_base_model
    from cl_platform.suites.digits.tasks import TASK_ORDER, build_suite
    from cl_platform.train.batches import rows_from_table

    defaults = LoraRun()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="./.cl_store", help="store with models/digits-base (pre-trained there if absent)")
    p.add_argument("--seed", type=int, default=0, help="suite and LoRA seed")
    p.add_argument("--tasks", default=",".join(TASK_ORDER), help="comma-separated tasks (default: all five)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_ORDER]
    if unknown:
        p.error(f"--tasks: unknown task(s) {unknown}; known: {list(TASK_ORDER)}")
    run = LoraRun(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)

    base = ensure_base_model(args.store, PretrainConfig(seed=args.seed, threads=args.threads))
    base_dir = str(fetch_model_dir(base.uri))
    suite = build_suite(args.seed)

    results: dict[str, dict] = {}
    for name in tasks:
        task = suite.tasks[name]
        rows = rows_from_table(task.train)
        eval_rows = eval_rows_from_table(task.eval)
        print(f"[{name}] {task.description}: {len(rows)} train rows, {len(eval_rows)} eval rows", flush=True)
        t0 = time.perf_counter()
        model, steps = finetune_task(base_dir, rows, run, log=lambda s: print(s, flush=True))
        train_s = time.perf_counter() - t0
        acc = answer_accuracy(model, eval_rows, eos_token_id=V.EOS_ID, pad_token_id=V.PAD_ID)
        results[name] = {"accuracy": acc.accuracy, "train_seconds": train_s, "steps": steps, "eval_n": acc.total}
        print(f"[{name}] accuracy {acc.accuracy:.3f} ({acc.correct}/{acc.total}) in {train_s:.1f} s", flush=True)

    print()
    print(f"{'task':<10} {'accuracy':>9} {'n':>4} {'steps':>6} {'train s':>8}")
    for name, r in results.items():
        print(f"{name:<10} {r['accuracy']:>9.3f} {r['eval_n']:>4} {r['steps']:>6} {r['train_seconds']:>8.1f}")
    summary = {
        "benchmark": "digits_upper_bound",
        "base_model": base.uri,
        "lora": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(run).items()},
        "threads": args.threads,
        "accuracy": {n: r["accuracy"] for n, r in results.items()},
        "seconds": {n: round(r["train_seconds"], 2) for n, r in results.items()},
        "min_accuracy": min((r["accuracy"] for r in results.values()), default=None),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
