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
import shutil
import tempfile
import time
from typing import Any, Callable, Optional

import torch

from cl_platform.methods import KDBatch, MethodConfig, StepInputs, get_method
from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store
from cl_platform.train import checkpoint as ckpt
from cl_platform.train.batches import answer_loss
from cl_platform.train.config import SequenceConfig
from cl_platform.train.evaluation import EvalSet, evaluate, load_eval_set
from cl_platform.methods.kd import shifted_mask
from cl_platform.train.ledger import Ledger
from cl_platform.train.shards import ShardBatches
from cl_platform.methods.teacher_cache import TeacherCache


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


def fit_configs(config: dict[str, Any]) -> list[SequenceConfig]:
    """The per-method configs of a fit's ``train_loop_config`` (``{"methods": [SequenceConfig dicts]}``)."""
    cfgs = [SequenceConfig.from_dict(d) for d in config["methods"]]
    if not cfgs:
        raise ValueError("a fit needs at least one method")
    return cfgs


class _Fit:
    """What every method of one fit shares inside a worker: store, shards, eval set, base scores."""

    def __init__(self, cfg: SequenceConfig, rank: int, world: int, rows: dict[str, int]) -> None:
        import ray.train

        self.cfg, self.rank, self.world = cfg, rank, world
        self.store = Store(cfg.store)
        self.spec = ModalitySpec.from_dict(cfg.spec)
        names = [f"task_{r}" for r in range(len(cfg.tasks))] + (["kd"] if "kd" in rows else [])
        self.shards = ShardBatches({n: ray.train.get_dataset_shard(n) for n in names}, rows, world,
                                   cfg.cache_rows, self.spec.pad_id)
        self.eval_set: Optional[EvalSet] = None
        self._base: Optional[tuple[list[float], Optional[float]]] = None
        self.base_eval_seconds = 0.0  # spent evaluating the base model, reported once (see take_base_eval_seconds)
        self._teacher: Optional[TeacherCache] = None

    def evaluation_set(self) -> EvalSet:
        if self.eval_set is None:
            self.eval_set = load_eval_set(self.cfg, self.store, self.spec)
        return self.eval_set

    def base_scores(self, load_base: Callable[[], torch.nn.Module], log) -> tuple[list[float], Optional[float]]:
        """Accuracies and generation score of the base model, evaluated once per fit."""
        if self._base is None:
            t0 = time.time()
            with torch.no_grad():
                self._base = evaluate(load_base(), self.evaluation_set(), self.rank, self.world)
            accs, gen = self._base
            self.base_eval_seconds = time.time() - t0
            log(f"base model: accuracy {' '.join(f'{a:.2f}' for a in accs)}"
                + (f" | generation {gen:.3f}" if gen is not None else "") + f" ({time.time() - t0:.1f}s)")
        return self._base

    def take_base_eval_seconds(self) -> float:
        """The base evaluation's seconds the first time asked, 0 after (each is recorded once)."""
        s, self.base_eval_seconds = self.base_eval_seconds, 0.0
        return s

    def teacher(self, path: str) -> TeacherCache:
        if self._teacher is None:
            self._teacher = TeacherCache.from_bytes(self.store.read_bytes(path))
        return self._teacher


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: every method of ``config["methods"]`` in turn, each through every round."""
    import ray.train

    cfgs = fit_configs(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray sets no thread count for a fractional CPU reservation, and torch would then start one
    # thread per core in every worker: workers sharing cores slow each other down several-fold.
    torch.set_num_threads(cfgs[0].torch_threads if cfgs[0].torch_threads > 0 else max(1, int(cfgs[0].cpus_per_worker)))
    fit = _Fit(cfgs[0], rank, world, dict(config.get("rows") or {}))
    fit.shards.start([f"task_{r}" for r in range(len(cfgs[0].tasks))] + ["kd"])

    resume_state, resume_dir = None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        resume_dir = tempfile.mkdtemp(prefix="cl_resume_")
        with checkpoint.as_directory() as d:
            shutil.copytree(d, resume_dir, dirs_exist_ok=True)
        resume_state = ckpt.load_training_state(resume_dir) or {}
    try:
        for cfg in cfgs:
            # a checkpoint belongs to the method it names (the first one when it names none)
            own = resume_state is not None and resume_state.get("method", cfgs[0].method) == cfg.method
            _train_method(cfg, fit, resume_dir if own else None, resume_state if own else None)
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


def _train_method(cfg: SequenceConfig, fit: _Fit, resume_dir: Optional[str], resume_state: Optional[dict]) -> None:
    import ray.train
    import ray.train.torch

    from cl_platform.models.chameleon import load_model

    rank, world, store, spec = fit.rank, fit.world, fit.store, fit.spec
    torch.manual_seed(cfg.seed)
    log = _progress_logger(cfg.method) if rank == 0 else (lambda msg: None)
    ledger = Ledger.open(store, cfg.run)
    done = ledger.done_rounds(cfg.method)
    if sorted(done) == list(range(len(cfg.tasks))):
        log(f"ledger: all {len(cfg.tasks)} rounds done")
        return

    base = load_model(cfg.model_uri)
    method = get_method(cfg.method, MethodConfig(**cfg.method_config))
    model = method.build(base, spec)

    # ---- position: Ray checkpoint, reconciled with the ledger
    state: dict[str, Any] = {"method": cfg.method, "round": 0, "step": 0, "R": [], "G": [], "base_acc": None,
                             "method_state": {}}
    opt_state = None
    if resume_dir is not None:
        ckpt.load_adapter_weights(model, resume_dir)
        loaded = dict(resume_state or {})
        if loaded:
            opt_state = loaded.pop("optimizer", None)
            state.update(loaded)
            method.load_state_dict(state.get("method_state", {}))
        log(f"resumed from Ray checkpoint at round {state['round']} step {state['step']}")
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
    eval_set = fit.evaluation_set()

    if state["base_acc"] is None:
        if cfg.from_checkpoint:  # the starting point is another run's adapter: score that
            t0 = time.time()
            with torch.no_grad():
                accs, gen = evaluate(inner, eval_set, rank, world)
            log(f"start: accuracy {' '.join(f'{a:.2f}' for a in accs)}"
                + (f" | generation {gen:.3f}" if gen is not None else "") + f" ({time.time() - t0:.1f}s)")
        else:
            accs, gen = fit.base_scores(lambda: load_model(cfg.model_uri).to(device), log)
        state["base_acc"], state["G"] = list(accs), [gen]

    teacher = None
    if method.needs_teacher and cfg.teacher_cache and cfg.kd_stream:
        teacher = fit.teacher(cfg.teacher_cache)
        kd_iter = fit.shards.batches("kd", cfg.kd_batch_size, cfg.seed + 7)

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
        it = fit.shards.batches(f"task_{r}", cfg.batch_size, cfg.seed + 1000 * r + start_step)
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
                        {"method": cfg.method, "round": r, "step": step + 1, "loss": loss_ema}, rank)
        train_s = time.time() - t0
        method.after_task(inner, task)
        t1 = time.time()
        with torch.no_grad():
            accs, gen = evaluate(inner, eval_set, rank, world)
        eval_s = time.time() - t1
        state["R"].append(accs)
        state["G"].append(gen)
        metrics = {"round": r, "task": task, "accuracy": accs, "generation_score": gen, "loss": loss_ema,
                   "train_seconds": train_s, "eval_seconds": eval_s, "base_eval_seconds": fit.take_base_eval_seconds(),
                   **{f"{k}_loss": v for k, v in terms_ema.items()}}
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
            "method": cfg.method, "round": r, "task": task,
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
