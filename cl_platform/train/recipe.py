"""One method through every round of its sequence, as a recipe over :class:`TrainState`.

Phases (:meth:`SequenceRecipe.run` calls them in turn):

- :meth:`~SequenceRecipe.setup`: the model and method (:func:`build_model`: the precision and
  gradient-checkpointing settings applied), the resume decision
  (:func:`cl_platform.train.state.decide_resume`) applied, ``prepare_model``, the base (or
  ``--from-run`` start) evaluation and the teacher cache;
- :meth:`~SequenceRecipe.train_round`: a fresh AdamW with cosine warm-up schedule,
  ``steps_per_task`` steps over the task's Ray Data shard (answer-only cross-entropy plus the
  method's loss terms, e.g. KD on the paired KD stream batch with cached teacher targets; the
  forwards under :func:`autocast` in bf16, the losses in float32),
  progress lines and mid-round Ray checkpoints every ``checkpoint_every`` steps;
- :meth:`~SequenceRecipe.evaluate_round`: every task (exact match, and candidate ranking where the
  task has a closed answer set) and image generation;
- :meth:`~SequenceRecipe.save_checkpoint`: the adapter written to the store and the round
  recorded in the ledger, then :meth:`~SequenceRecipe.report`, the Ray checkpoint with the state.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Optional

import torch

from cl_platform.methods import ContinualMethod, KDBatch, MethodConfig, StepInputs, get_method
from cl_platform.methods.kd import shifted_mask
from cl_platform.methods.teacher import TeacherSource
from cl_platform.models.modality import ModalitySpec
from cl_platform.train import checkpoint as ckpt
from cl_platform.train import replay
from cl_platform.train.batches import answer_loss
from cl_platform.train.config import SequenceConfig
from cl_platform.train.evaluation import EvalScores, EvalSet, evaluate, evaluate_earlier
from cl_platform.train.ledger import Ledger
from cl_platform.train.state import Resume, Start, TrainState, decide_resume

if TYPE_CHECKING:
    from cl_platform.train.worker import _Fit


def progress_logger(method: str) -> Callable[[str], None]:
    """Progress lines on the worker's stdout (shown by Ray on the driver and in the job logs).

    Written to the stream directly: Ray Train patches ``print`` to also feed its logger, which
    shows every line twice on the driver.
    """

    def log(msg: str) -> None:
        sys.stdout.write(f"[{method}] {msg}\n")
        sys.stdout.flush()

    return log


def ranking_text(ranking: list[Optional[float]]) -> str:
    """`` | ranking 0.50 - 0.90`` (``-``: a task without a closed answer set); empty when no task has one."""
    if all(r is None for r in ranking):
        return ""
    return " | ranking " + " ".join("-" if r is None else f"{r:.2f}" for r in ranking)


def scores_line(label: str, scores: EvalScores, seconds: float) -> str:
    """``<label>: accuracy 0.50 0.10 | ranking 0.75 0.40 | generation 0.321 (1.2s)`` (no ranking part
    without a closed answer set, no generation part without a probe)."""
    gen = scores.generation
    return (f"{label}: accuracy {' '.join(f'{a:.2f}' for a in scores.accuracy)}" + ranking_text(scores.ranking)
            + (f" | generation {gen:.3f}" if gen is not None else "") + f" ({seconds:.1f}s)")


def lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def base_dtype(precision: str) -> torch.dtype:
    """The dtype the frozen base weights are stored in: bfloat16 for ``bf16``, else float32."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The context the forwards run in: bfloat16 autocast on ``device``'s type for ``bf16`` (CPU
    included), nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adapters_to_float32(model: torch.nn.Module) -> int:
    """Store every trainable parameter (the adapters) in float32, whatever the base's dtype.

    A method builds its adapters in the dtype of the layer they wrap, so on a bfloat16 base they
    start in bfloat16; the optimizer then keeps float32 moments of float32 parameters (the
    parameters are their own master copy). Returns how many parameters were converted.
    """
    converted = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            converted += 1
    return converted


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in the backward (transformers' non-reentrant checkpointing).

    ``model`` is the PEFT-wrapped model; MoDE's routing hook makes each recomputation see the
    image-token mask of the forward it belongs to (:mod:`cl_platform.mode.routing`).
    """
    if not getattr(model, "supports_gradient_checkpointing", True):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the older name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_model(method: ContinualMethod, base: torch.nn.Module, spec: ModalitySpec, *,
                gradient_checkpointing: bool = False) -> torch.nn.Module:
    """``method``'s adapter on ``base`` (already in its storage dtype, :func:`base_dtype`), the
    adapters in float32 and, if asked, gradient checkpointing on."""
    model = method.build(base, spec)
    adapters_to_float32(model)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def step_loss(model: torch.nn.Module, method: ContinualMethod, ids: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor, inputs: StepInputs, *, precision: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The forwards of one step under :func:`autocast` and their losses: the answer-only
    cross-entropy (float32) and the method's weighted loss terms (KD is float32 too).

    The task's logits are reduced to their loss before the method's forwards run, so the two
    batches' logits are never held at once.
    """
    with autocast(precision, ids.device):
        logits = model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits
    loss = answer_loss(logits, labels)
    del logits
    with autocast(precision, ids.device):
        terms = method.loss_terms(model, inputs)
    return loss, terms


def train_step(model: torch.nn.Module, method: ContinualMethod, ids: torch.Tensor, attention_mask: torch.Tensor,
               labels: torch.Tensor, inputs: StepInputs, optimizer: torch.optim.Optimizer, *, precision: str,
               grad_clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step: :func:`step_loss`, backward of their sum, gradient-norm clip (``grad_clip``
    > 0) over the optimizer's parameters, optimizer step. Returns the detached losses."""
    loss, terms = step_loss(model, method, ids, attention_mask, labels, inputs, precision=precision)
    total = loss + sum(terms.values()) if terms else loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    method.after_step(model)
    return loss.detach(), {k: v.detach() for k, v in terms.items()}


def round_seed(seed: int, lineage_round: int, start_step: int = 0) -> int:
    """The torch seed (dropout, any sampling) of a round: a function of the run's seed, the round's
    index in its lineage and the step it starts at only."""
    return (int(seed) * 1_000_003 + 7919 * int(lineage_round) + int(start_step)) % (2**63 - 1)


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass(frozen=True)
class RestoredCheckpoint:
    """The fit's latest Ray checkpoint, copied to a local directory (adapter + ``state.pt``)."""

    directory: str
    state: TrainState


@dataclass
class RoundResult:
    """What :meth:`SequenceRecipe.train_round` hands to :meth:`SequenceRecipe.evaluate_round`."""

    loss: Optional[float]  # moving average of the task loss (``None``: no step ran)
    terms: dict[str, float]  # moving averages of the method's loss terms
    seconds: float


class SequenceRecipe:
    """Trains ``cfg.method`` through every round of ``cfg.tasks`` inside a Ray Train worker.

    :attr:`state` is the method's position and scores; what :meth:`setup` builds (ledger, method,
    model, evaluation set, teacher) lives on the recipe for the round phases.
    """

    ledger: Ledger
    method: ContinualMethod
    model: torch.nn.Module  # as prepared by Ray Train (DDP-wrapped with several workers)
    inner: torch.nn.Module  # the PEFT model inside
    device: torch.device
    eval_set: EvalSet
    teacher: Optional[TeacherSource]
    kd_iter: Optional[Iterator[dict]]
    trainable: list[torch.nn.Parameter]

    def __init__(self, cfg: SequenceConfig, fit: "_Fit") -> None:
        self.cfg, self.fit = cfg, fit
        self.rank, self.world = fit.rank, fit.world
        self.log = progress_logger(cfg.method) if fit.rank == 0 else (lambda msg: None)
        self.state = TrainState(cfg.method)
        self._resume_optimizer: Optional[dict[str, Any]] = None  # a mid-round checkpoint's, for its round

    def run(self, checkpoint: Optional[RestoredCheckpoint]) -> None:
        if not self.setup(checkpoint):
            return
        for r in range(self.state.round, len(self.cfg.tasks)):
            result = self.train_round(r)
            metrics = self.evaluate_round(r, result)
            self.save_checkpoint(r, metrics)

    # ------------------------------------------------------------------ setup

    def setup(self, checkpoint: Optional[RestoredCheckpoint]) -> bool:
        """Model, method and position; False when the ledger has every round done."""
        import ray.train.torch

        from cl_platform.models.chameleon import load_model

        cfg, fit = self.cfg, self.fit
        torch.manual_seed(cfg.seed)
        self.ledger = Ledger.open(fit.store, cfg.run)
        resume = decide_resume(cfg.method, checkpoint.state if checkpoint else None,
                               self.ledger.done_rounds(cfg.method), len(cfg.tasks), bool(cfg.from_checkpoint))
        if resume.start is Start.SKIP:
            self.log(f"ledger: all {len(cfg.tasks)} rounds done")
            return False

        dtype = base_dtype(cfg.precision)
        base = load_model(cfg.model_uri, dtype=dtype)
        self.method = get_method(cfg.method, MethodConfig(**cfg.method_config))
        model = build_model(self.method, base, fit.spec, gradient_checkpointing=bool(cfg.gradient_checkpointing))
        self._apply(resume, model, checkpoint)

        self.model = ray.train.torch.prepare_model(model)
        self.inner = ckpt.unwrap(self.model)
        self.device = next(self.inner.parameters()).device
        self.eval_set = fit.evaluation_set()
        if self.state.base_accuracy is None:
            if cfg.from_checkpoint:  # the starting point is another run's adapter: score that
                t0 = time.time()
                with torch.no_grad(), self.autocast():
                    scores = evaluate(self.inner, self.eval_set, self.rank, self.world)
                self.log(scores_line("start", scores, time.time() - t0))
            else:
                with self.autocast():
                    scores = fit.base_scores(lambda: load_model(cfg.model_uri, dtype=dtype).to(self.device),
                                             self.log)
            self.state.base_accuracy, self.state.generation = list(scores.accuracy), [scores.generation]
            self.state.base_ranking = list(scores.ranking)

        self.teacher, self.kd_iter = None, None  # kd_iter: made per round (train_round)
        if self.method.needs_teacher and cfg.kd_stream:  # cached (a store path) or online (None)
            self.teacher = fit.teacher(cfg.teacher_cache, k=min(self.method.config.kd_top_k, self.fit.spec.vocab_size))
        self.trainable = [p for p in self.inner.parameters() if p.requires_grad]
        return True

    def autocast(self) -> ContextManager:
        """The context of this sequence's forwards (:func:`autocast` of its precision on its device)."""
        return autocast(self.cfg.precision, self.device)

    def _apply(self, resume: Resume, model: torch.nn.Module, checkpoint: Optional[RestoredCheckpoint]) -> None:
        """Adapter weights, :attr:`state` and the optimizer state to resume with, as ``resume`` says."""
        cfg = self.cfg
        if resume.unused_checkpoint:
            self.log(resume.unused_checkpoint)
        if resume.start is Start.CHECKPOINT:
            assert checkpoint is not None and resume.state is checkpoint.state
            ckpt.load_adapter_weights(model, checkpoint.directory)
            s = resume.state
            self.state = replace(s, accuracy=list(s.accuracy), generation=list(s.generation), ranking=list(s.ranking),
                                 optimizer=None)
            self._resume_optimizer = s.optimizer
            self.method.load_state_dict(self.state.method_state)
            self.log(f"resumed from Ray checkpoint at round {s.round} step {s.step}")
        elif resume.start is Start.LEDGER:
            last = resume.ledger_round
            self._load_store_adapter(model, ckpt.round_path(cfg, last))
            self.state = TrainState.from_ledger(self.ledger, cfg.method, last)
            self.log(f"ledger: rounds 0..{last} done, continuing at round {last + 1}")
        elif resume.start is Start.FROM_RUN:
            self._load_store_adapter(model, cfg.from_checkpoint)
            self.log(f"starting from {self.fit.store.uri(cfg.from_checkpoint)}")

    def _load_store_adapter(self, model: torch.nn.Module, path: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            ckpt.fetch_round_adapter(self.fit.store, path, d)
            ckpt.load_adapter_weights(model, d)

    # ------------------------------------------------------------------ a round

    def _optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        cfg = self.cfg
        opt = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(cfg.steps_per_task, max(1, int(cfg.warmup_frac * cfg.steps_per_task)))
        )
        return opt, sched

    def _kd_batch(self) -> Optional[KDBatch]:
        """The next KD stream batch with its cached teacher targets (``None`` without a teacher)."""
        if self.teacher is None:
            return None
        kb = next(self.kd_iter)
        kids, kam = kb["input_ids"].to(self.device), kb["attention_mask"].to(self.device)
        img = self.fit.spec.is_image(kids) & kam.bool()
        return KDBatch(
            input_ids=kids, attention_mask=kam, loss_mask=shifted_mask(img, kam),
            targets=self.teacher.batch_targets(kb["row_id"].tolist(), kids, kam, self.inner),
        )

    def train_round(self, r: int) -> RoundResult:
        """Round ``r`` from the state's step (0 unless resumed mid-round), then ``after_task``."""
        cfg, state, model, device = self.cfg, self.state, self.model, self.device
        task, n = cfg.tasks[r], len(cfg.tasks)
        self.method.before_task(self.inner, task)
        attempt = self.ledger.start_round(cfg.method, r).attempt if self.rank == 0 else 0
        opt, sched = self._optimizer()
        start_step = state.step if state.round == r else 0
        if self._resume_optimizer is not None and start_step > 0:
            opt.load_state_dict(self._resume_optimizer["opt"])
            sched.load_state_dict(self._resume_optimizer["sched"])
        self._resume_optimizer = None
        # Every round is seeded by its place in the lineage (and the step it starts at), never by what
        # ran before it in this process: a lineage's rounds, each its own run continuing the last,
        # train exactly as the same rounds of one sequence run.
        g = cfg.lineage_round(r)
        torch.manual_seed(round_seed(cfg.seed, g, start_step))
        seed = cfg.seed + 1000 * g + start_step
        count = replay.replay_count(cfg.replay_fraction, cfg.batch_size)
        sources = replay.earlier_tasks_of(cfg.earlier_tasks, cfg.tasks, r) if count else []
        if count and not sources:
            self.log(f"replay: round {r + 1} '{task}' has no earlier task, so it trains without replay")
        if sources:  # batch_size - count rows of the task, count rows of the earlier tasks' pools
            pools = [self.fit.replay_pool(t) for t in sources]
            self.log(f"round {r + 1} " + replay.describe(pools, count, cfg.batch_size))
            it = replay.mixed_batches(self.fit.shards.rows(f"task_{r}", cfg.batch_size - count, seed),
                                      replay.replay_batches(pools, count, seed, worker=self.rank), self.fit.spec.pad_id)
        else:
            it = self.fit.shards.batches(f"task_{r}", cfg.batch_size, seed)
        if self.teacher is not None:
            self.kd_iter = self.fit.shards.batches("kd", cfg.kd_batch_size, cfg.seed + 7 + 1000 * g + start_step)
        model.train()
        t0, loss_ema, terms_ema = time.time(), None, {}
        self.log(f"round {r + 1}/{n} '{task}' (attempt {attempt}): steps {start_step}..{cfg.steps_per_task}")
        for step in range(start_step, cfg.steps_per_task):
            batch = next(it)
            ids, am, labels = batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["labels"].to(device)
            inputs = StepInputs(task_batch=batch, kd_batch=self._kd_batch(), step=step)
            loss, terms = train_step(model, self.method, ids, am, labels, inputs, opt, precision=cfg.precision,
                                     grad_clip=cfg.grad_clip)
            sched.step()
            lv = float(loss.detach())
            loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
            for k, v in terms.items():
                terms_ema[k] = float(v.detach()) if k not in terms_ema else 0.9 * terms_ema[k] + 0.1 * float(v.detach())
            done_steps = step + 1 - start_step
            if self.rank == 0 and (done_steps % cfg.log_every == 0 or step + 1 == cfg.steps_per_task):
                rate = done_steps / max(1e-9, time.time() - t0)
                extra = "".join(f" {k} {v:.4f}" for k, v in terms_ema.items())
                self.log(f"  round {r + 1}/{n} step {step + 1}/{cfg.steps_per_task} loss {loss_ema:.4f}{extra} "
                         f"{rate:.2f} it/s, {_fmt((cfg.steps_per_task - step - 1) / rate)} left in round")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps_per_task:
                state.round, state.step, state.method_state = r, step + 1, self.method.state_dict()
                self.report({"method": cfg.method, "round": r, "step": step + 1, "loss": loss_ema},
                            optimizer={"opt": opt.state_dict(), "sched": sched.state_dict()})
        result = RoundResult(loss=loss_ema, terms=terms_ema, seconds=time.time() - t0)
        self.method.after_task(self.inner, task)
        return result

    def evaluate_round(self, r: int, result: RoundResult) -> dict[str, Any]:
        """Every task and generation after round ``r``; the round's metrics (as the ledger records them)."""
        cfg, task = self.cfg, self.cfg.tasks[r]
        t1 = time.time()
        with torch.no_grad(), self.autocast():
            scores = evaluate(self.inner, self.eval_set, self.rank, self.world)
            earlier = evaluate_earlier(self.inner, self.eval_set, self.rank, self.world)
        eval_s = time.time() - t1
        accs, gen = scores.accuracy, scores.generation
        self.state.accuracy.append(accs)
        self.state.generation.append(gen)
        self.state.ranking.append(scores.ranking)
        metrics = {"round": r, "task": task, "accuracy": accs, "generation_score": gen, "loss": result.loss,
                   "ranking_accuracy": scores.ranking, "base_ranking_accuracy": self.state.base_ranking,
                   "train_seconds": result.seconds, "eval_seconds": eval_s,
                   "base_eval_seconds": self.fit.take_base_eval_seconds(),
                   **{f"{k}_loss": v for k, v in result.terms.items()}}
        if cfg.gradient_diagnostic and self.rank == 0:  # the other ranks do not wait for it: no collective
            from cl_platform.train.gradients import round_gradient_conflict

            metrics["gradient_conflict"] = round_gradient_conflict(
                self.inner, self.fit.store, self.fit.spec, task, cfg.kd_stream, cfg.seed, autocast=self.autocast)
        if earlier:  # the lineage's tasks learned before this run, scored with this round's adapter
            metrics["earlier_accuracy"] = earlier
        self.log(f"round {r + 1} '{task}' done in {result.seconds:.1f}s (+{eval_s:.1f}s eval): accuracy "
                 + " ".join(f"{t}={a:.2f}" for t, a in zip(cfg.tasks, accs)) + ranking_text(scores.ranking)
                 + (f" | generation {gen:.3f}" if gen is not None else "")
                 + ("".join(f" | earlier {t}={a:.2f}" for t, a in earlier.items())))
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, r: int, metrics: dict[str, Any]) -> None:
        """Round ``r``'s adapter to the store and the round done in the ledger (rank 0), then the
        round-end Ray checkpoint and report."""
        cfg, state = self.cfg, self.state
        if self.rank == 0:
            uri = ckpt.save_round_adapter(self.fit.store, ckpt.round_path(cfg, r), self.inner)
            self.ledger.finish_round(cfg.method, r, checkpoint=uri, metrics={
                **metrics, "base_accuracy": state.base_accuracy, "base_generation_score": state.generation[0]})
        state.round, state.step, state.method_state = r + 1, 0, self.method.state_dict()
        accs, gen, g0 = metrics["accuracy"], metrics["generation_score"], state.generation[0]
        self.report({
            "method": cfg.method, "round": r, "task": cfg.tasks[r],
            # mean accuracy over the tasks trained so far: at the last round, the final average accuracy
            "avg_accuracy": sum(accs[: r + 1]) / (r + 1),
            "generation_score": gen if gen is not None else float("nan"),
            "generation_drop": (g0 - gen) if (gen is not None and g0 is not None) else float("nan"),
        })

    def report(self, metrics: dict[str, Any], optimizer: Optional[dict[str, Any]] = None) -> None:
        """``ray.train.report`` of ``metrics``; rank 0 attaches a checkpoint (adapter + state, with
        ``optimizer`` mid-round)."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="cl_ckpt_") as d:
            if self.rank == 0:
                ckpt.save_training_state(d, self.model, replace(self.state, optimizer=optimizer).to_dict())
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics)
