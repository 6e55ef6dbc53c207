"""The Ray Train loop of a continual-learning sequence: one fit walks every round.

Per round: a fresh AdamW with cosine warm-up schedule, ``steps_per_task`` steps over the task's
Ray Data shard (answer-only cross-entropy plus the method's loss terms, e.g. KD on the paired KD
stream batch with cached teacher targets), then evaluation of every task and of image generation,
the adapter written to the store, the ledger updated and a Ray checkpoint reported.

Resume: the position comes from the latest Ray checkpoint (mid-round, every ``checkpoint_every``
steps, and at round ends) reconciled with the ledger, whose finished rounds are authoritative: a
round recorded as done is never trained again, and a round not recorded is never skipped.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any, Iterator

import numpy as np
import torch

from cl_platform.data.pipeline import pad_collate
from cl_platform.data.task_format import read_task
from cl_platform.methods import KDBatch, MethodConfig, StepInputs, get_method
from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store
from cl_platform.train import checkpoint as ckpt
from cl_platform.train.batches import answer_loss
from cl_platform.train.config import SequenceConfig
from cl_platform.train.evaluation import EvalSet, evaluate
from cl_platform.train.kd import shifted_mask
from cl_platform.train.ledger import Ledger
from cl_platform.train.teacher_cache import TeacherCache


def _as_rows(column: np.ndarray) -> np.ndarray:
    """A batch column as a 1-D array of rows (Ray gives equal-length token lists as one 2-D array)."""
    if column.ndim == 1:
        return column
    rows = np.empty(len(column), dtype=object)
    rows[:] = list(column)
    return rows


def _cycle(shard, batch_size: int, pad_id: int, seed: int, cache_rows: int = 0) -> Iterator[dict]:
    """Endless padded batches from a dataset shard, one pass after another.

    The first pass streams from Ray Data (local shuffle buffer). A shard of at most
    ``cache_rows`` rows is kept in memory during that pass, and every later pass reshuffles it
    in memory (seeded) instead of executing the dataset again.
    """
    epoch, cached, rows_seen = 0, [], 0
    for batch in shard.iter_batches(
        batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=4 * batch_size,
        local_shuffle_seed=seed, drop_last=False,
    ):
        rows_seen += len(batch["tokens"])
        if cached is not None:
            cached.append(batch)
            if rows_seen > cache_rows:
                cached = None
        yield pad_collate(batch, pad_id)
    if rows_seen == 0:
        raise ValueError("empty dataset shard: the task has fewer rows than workers")
    if cached is not None:
        columns = {k: np.concatenate([_as_rows(b[k]) for b in cached]) for k in cached[0]}
        rng = np.random.default_rng([seed, 0xCAC4E])
        while True:
            order = rng.permutation(rows_seen)
            for lo in range(0, rows_seen, batch_size):
                idx = order[lo : lo + batch_size]
                yield pad_collate({k: v[idx] for k, v in columns.items()}, pad_id)
    while True:
        epoch += 1
        for batch in shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=4 * batch_size,
            local_shuffle_seed=seed + epoch, drop_last=False,
        ):
            yield pad_collate(batch, pad_id)


def _progress_logger(method: str):
    """Progress lines on the worker's stdout (shown by Ray on the driver and in the job logs).

    Written to the stream directly: Ray Train patches ``print`` to also feed its logger, which
    shows every line twice on the driver.
    """
    import sys

    def log(msg: str) -> None:
        sys.stdout.write(f"[{method}] {msg}\n")
        sys.stdout.flush()

    return log


def _lr_lambda(steps: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _load_eval_set(cfg: SequenceConfig, store: Store, spec: ModalitySpec) -> EvalSet:
    rows = {}
    for t in cfg.tasks:
        table = read_task(store, t, vocab_size=spec.vocab_size).eval
        rows[t] = list(zip(table.column("prompt_tokens").to_pylist(), table.column("answer_tokens").to_pylist()))
    judge, digits = None, None
    if cfg.judge:
        from cl_platform.eval.generation import probe_digits
        from cl_platform.eval.judge import DigitsJudge

        judge = DigitsJudge.from_bytes(store.read_bytes(cfg.judge))
        digits = probe_digits(cfg.probe_per_digit)
    eos = 2 if spec.spec_id.startswith("digits") else None
    return EvalSet(tasks=list(cfg.tasks), rows=rows, eos_id=eos, pad_id=spec.pad_id, judge=judge,
                   probe_digits=digits, seed=cfg.seed, batch_size=cfg.eval_batch_size)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from cl_platform.models.chameleon import load_model

    cfg = SequenceConfig.from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    store = Store(cfg.store)
    spec = ModalitySpec.from_dict(cfg.spec)
    torch.manual_seed(cfg.seed)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    log = _progress_logger(cfg.method) if rank == 0 else (lambda msg: None)

    base = load_model(cfg.model_uri)
    method = get_method(cfg.method, MethodConfig(**cfg.method_config))
    model = method.build(base, spec)
    ledger = Ledger.open(store, cfg.run)

    # ---- position: Ray checkpoint, reconciled with the ledger
    state: dict[str, Any] = {"round": 0, "step": 0, "R": [], "G": [], "base_acc": None, "method_state": {}}
    opt_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            ckpt.load_adapter_weights(model, d)
            loaded = ckpt.load_training_state(d)
        if loaded:
            opt_state = loaded.pop("optimizer", None)
            state.update(loaded)
            method.load_state_dict(state.get("method_state", {}))
        log(f"resumed from Ray checkpoint at round {state['round']} step {state['step']}")
    ledger = ledger.refresh()
    done = ledger.done_rounds(cfg.method)
    if done and max(done) + 1 > state["round"]:
        last = max(done)
        with tempfile.TemporaryDirectory() as d:
            ckpt.fetch_round_adapter(store, ckpt.round_path(cfg, last), d)
            ckpt.load_adapter_weights(model, d)
        state.update(progress_from_ledger(ledger, cfg.method, last))
        state["round"], state["step"], opt_state = last + 1, 0, None
        log(f"ledger: rounds 0..{last} done, continuing at round {last + 1}")
    elif state["round"] == 0 and state["step"] == 0 and cfg.from_checkpoint:
        with tempfile.TemporaryDirectory() as d:
            ckpt.fetch_round_adapter(store, cfg.from_checkpoint, d)
            ckpt.load_adapter_weights(model, d)
        log(f"starting from {store.uri(cfg.from_checkpoint)}")

    model = ray.train.torch.prepare_model(model)
    inner = ckpt.unwrap(model)
    device = next(inner.parameters()).device
    eval_set = _load_eval_set(cfg, store, spec)

    if state["base_acc"] is None:
        t0 = time.time()
        with torch.no_grad():
            accs, gen = evaluate(inner, eval_set, rank, world)
        state["base_acc"], state["G"] = accs, [gen]
        log(f"start: accuracy {' '.join(f'{a:.2f}' for a in accs)}"
            + (f" | generation {gen:.3f}" if gen is not None else "") + f" ({time.time() - t0:.1f}s)")

    teacher = None
    if method.needs_teacher and cfg.teacher_cache and cfg.kd_stream:
        teacher = TeacherCache.from_bytes(store.read_bytes(cfg.teacher_cache))
        kd_iter = _cycle(ray.train.get_dataset_shard("kd"), cfg.kd_batch_size, spec.pad_id, cfg.seed + 7, cfg.cache_rows)

    trainable = [p for p in inner.parameters() if p.requires_grad]
    for r in range(state["round"], len(cfg.tasks)):
        task = cfg.tasks[r]
        method.before_task(inner, task)
        attempt = ledger.start_round(cfg.method, r).attempt if rank == 0 else 0
        opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, _lr_lambda(cfg.steps_per_task, max(1, int(cfg.warmup_frac * cfg.steps_per_task)))
        )
        start_step = state["step"] if state["round"] == r else 0
        if opt_state is not None and start_step > 0:
            opt.load_state_dict(opt_state["opt"])
            sched.load_state_dict(opt_state["sched"])
        opt_state = None
        it = _cycle(ray.train.get_dataset_shard(f"task_{r}"), cfg.batch_size, spec.pad_id, cfg.seed + 1000 * r + start_step,
                    cfg.cache_rows)
        model.train()
        t0, loss_ema, terms_ema = time.time(), None, {}
        log(f"round {r + 1}/{len(cfg.tasks)} '{task}' (attempt {attempt}): steps {start_step}..{cfg.steps_per_task}")
        for step in range(start_step, cfg.steps_per_task):
            batch = next(it)
            ids, am, labels = batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["labels"].to(device)
            logits = model(input_ids=ids, attention_mask=am).logits
            loss = answer_loss(logits, labels)
            kd_batch = None
            if teacher is not None:
                kb = next(kd_iter)
                kids, kam = kb["input_ids"].to(device), kb["attention_mask"].to(device)
                img = spec.is_image(kids) & kam.bool()
                kd_batch = KDBatch(
                    input_ids=kids, attention_mask=kam, loss_mask=shifted_mask(img, kam),
                    targets=teacher.targets(kb["row_id"].tolist(), kids.shape[1]).to(device),
                )
            terms = method.loss_terms(model, StepInputs(task_batch=batch, kd_batch=kd_batch, step=step))
            total = loss + sum(terms.values()) if terms else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            sched.step()
            lv = float(loss.detach())
            loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
            for k, v in terms.items():
                terms_ema[k] = float(v.detach()) if k not in terms_ema else 0.9 * terms_ema[k] + 0.1 * float(v.detach())
            done_steps = step + 1 - start_step
            if rank == 0 and (done_steps % cfg.log_every == 0 or step + 1 == cfg.steps_per_task):
                rate = done_steps / max(1e-9, time.time() - t0)
                extra = "".join(f" {k} {v:.4f}" for k, v in terms_ema.items())
                log(f"  round {r + 1}/{len(cfg.tasks)} step {step + 1}/{cfg.steps_per_task} loss {loss_ema:.4f}{extra} "
                    f"{rate:.2f} it/s, {_fmt((cfg.steps_per_task - step - 1) / rate)} left in round")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps_per_task:
                state.update(round=r, step=step + 1, method_state=method.state_dict())
                _report(model, {**state, "optimizer": {"opt": opt.state_dict(), "sched": sched.state_dict()}},
                        {"round": r, "step": step + 1, "loss": loss_ema}, rank)
        train_s = time.time() - t0
        method.after_task(inner, task)
        t1 = time.time()
        with torch.no_grad():
            accs, gen = evaluate(inner, eval_set, rank, world)
        eval_s = time.time() - t1
        state["R"].append(accs)
        state["G"].append(gen)
        metrics = {"round": r, "task": task, "accuracy": accs, "generation_score": gen, "loss": loss_ema,
                   "train_seconds": train_s, "eval_seconds": eval_s, **{f"{k}_loss": v for k, v in terms_ema.items()}}
        log(f"round {r + 1} '{task}' done in {train_s:.1f}s (+{eval_s:.1f}s eval): accuracy "
            + " ".join(f"{t}={a:.2f}" for t, a in zip(cfg.tasks, accs))
            + (f" | generation {gen:.3f}" if gen is not None else ""))
        if rank == 0:
            uri = ckpt.save_round_adapter(store, ckpt.round_path(cfg, r), inner)
            ledger.finish_round(cfg.method, r, checkpoint=uri, metrics={
                **metrics, "base_accuracy": state["base_acc"], "base_generation_score": state["G"][0]})
        state.update(round=r + 1, step=0, method_state=method.state_dict())
        g0 = state["G"][0]
        _report(model, dict(state), {
            "round": r, "task": task,
            # mean accuracy over the tasks trained so far: at the last round, the final average accuracy
            "avg_accuracy": sum(accs[: r + 1]) / (r + 1),
            "generation_score": gen if gen is not None else float("nan"),
            "generation_drop": (g0 - gen) if (gen is not None and g0 is not None) else float("nan"),
        }, rank)


def progress_from_ledger(ledger: Ledger, method: str, last: int) -> dict[str, Any]:
    """Accuracy rows, generation scores and base accuracies of rounds 0..last from the ledger."""
    recs = [ledger.record(method, r).metrics for r in range(last + 1)]
    return {
        "R": [m["accuracy"] for m in recs],
        "G": [recs[0]["base_generation_score"]] + [m["generation_score"] for m in recs],
        "base_acc": recs[0]["base_accuracy"],
    }


def _report(model: torch.nn.Module, state: dict, metrics: dict, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="cl_ckpt_") as d:
        if rank == 0:
            ckpt.save_training_state(d, model, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
