"""Pre-train the tiny Chameleon-architecture base model (the UMGM) on digits, and store it.

The base model learns both directions of the digits benchmark from the pre-training pool only,
and plain text (sources and mixing in :mod:`cl_platform.suites.digits.pretrain_data`):

- understanding: ``<s> <boi> img <eoi> what digit is this ? <sep>`` -> ``seven </s>`` (and
  paraphrases of the question, and "what is the first / second digit ?" over two images)
- generation:    ``<s> draw a seven <sep>`` -> ``<boi>`` + 64 grey-level codes + ``<eoi> </s>``
- text:          ``<s> write w1 .. wn <sep>`` -> ``w1 .. wn </s>`` (copying random word sequences)

with the answer-only loss of :mod:`cl_platform.train.batches` (every row weighs the same, so the
one-word answers are not drowned by the 67-token images), AdamW, linear warm-up then cosine decay.

Result in the store (``<store>/models/<name>/``, default name ``digits-base``)::

    model/              save_pretrained (config.json, model.safetensors, generation_config.json)
                        + the tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json)
    model_card.json     written last: its presence marks the model as complete

The card holds the model and training configuration, the parameter count, steps, wall times,
threads, and the held-out metrics: understanding accuracy on the holdout pool (greedy, exact
match), generation score (judge accuracy on ``10 x 10`` sampled images, see
:mod:`cl_platform.suites.digits.generation`) and the judge's own accuracy on held-out real digits.
:func:`ensure_base_model` reuses a complete model instead of training again.
"""

from __future__ import annotations

import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cl_platform.suites.digits.generation import ImageSampling
from cl_platform.suites.digits.pretrain_data import MixtureBatches, MixtureWeights, build_sources
from cl_platform.models.tiny import TinyModelConfig

#: Default name of the base model in the store (``<store>/models/digits-base``).
BASE_MODEL_NAME = "digits-base"
#: The complete-marker of a stored model, written last.
CARD_FILE = "model_card.json"
MODEL_DIR = "model"
CARD_FORMAT = "cl_platform.model_card/1"


def default_model_config() -> TinyModelConfig:
    """The base model's size (tuned to pass the targets in under 4 minutes on 2 CPU threads)."""
    return TinyModelConfig(
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=256,
    )


@dataclass
class PretrainConfig:
    """Pre-training hyperparameters.

    Attributes:
        seed: seed of the data split, the initialisation, the batch order and the eval sampling.
        steps: optimizer steps.
        batch_size: rows per step (understanding and generation rows mixed at random).
        lr: peak learning rate (AdamW).
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine decay).
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay, applied to 2-D weight matrices except the embedding.
        grad_clip: gradient-norm clipping.
        mixture: how the pre-training sources are mixed (:class:`MixtureWeights`).
        loss_reduction: ``"row"`` (each row weighs the same) or ``"token"``; see
            :func:`cl_platform.train.batches.answer_loss`.
        threads: torch intra-op threads.
        model: model size.
        sampling: how images are sampled for the generation score.
        eval_per_digit: images generated per digit for the generation score.
        log_every: steps between progress lines.
    """

    seed: int = 0
    steps: int = 900
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mixture: MixtureWeights = field(default_factory=MixtureWeights)
    loss_reduction: str = "row"
    threads: int = 2
    model: TinyModelConfig = field(default_factory=default_model_config)
    sampling: ImageSampling = field(default_factory=ImageSampling)
    eval_per_digit: int = 10
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "threads", "eval_per_digit", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PretrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"PretrainConfig.lr must be positive, got {self.lr}")
        if self.loss_reduction not in ("row", "token"):
            raise ValueError(f"PretrainConfig.loss_reduction must be 'row' or 'token', got {self.loss_reduction!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["sampling"] = self.sampling.to_dict()
        d["mixture"] = asdict(self.mixture)
        return d


@dataclass
class PretrainMetrics:
    """Held-out quality of a pre-trained base model.

    Attributes:
        understanding_accuracy: greedy exact-match accuracy of "what digit is this ?" on the holdout pool.
        understanding_n: number of holdout questions.
        generation_score: fraction of sampled images the judge labels as the requested digit.
        generation_per_digit: that fraction per digit 0..9.
        generation_n: number of generated images.
        judge_accuracy: the judge's accuracy on held-out real digits (how far to trust the score).
        judge: the judge's full report.
    """

    understanding_accuracy: float
    understanding_n: int
    generation_score: float
    generation_per_digit: list[float]
    generation_n: int
    judge_accuracy: float
    judge: dict


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns.

    Attributes:
        model: the trained model (eval mode).
        metrics: held-out metrics.
        train_seconds: wall time of the optimisation loop (data preparation and model build excluded).
        eval_seconds: wall time of the held-out evaluation.
        final_loss: mean training loss over the last ``log_every`` steps.
    """

    model: torch.nn.Module
    metrics: PretrainMetrics
    train_seconds: float
    eval_seconds: float
    final_loss: float


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate multiplier at ``step`` (0-based): linear warm-up, then cosine to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim == 2 and "embed_tokens" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


def _fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60}:{s % 60:02d}"


def evaluate_base(
    model: torch.nn.Module,
    seed: int = 0,
    *,
    sampling: ImageSampling = ImageSampling(),
    per_digit: int = 10,
    judge=None,
) -> PretrainMetrics:
    """Held-out metrics of a digits model (see :class:`PretrainMetrics`).

    ``judge`` is a fitted judge; when ``None`` the digits judge of ``seed`` is trained (~1 s).
    """
    from cl_platform.eval.accuracy import answer_accuracy, eval_rows_from_table
    from cl_platform.suites.digits.generation import generation_eval
    from cl_platform.suites.digits.judge import train_digits_judge
    from cl_platform.suites.digits import vocab as V
    from cl_platform.suites.digits.tasks import pretrain_eval

    held = pretrain_eval(seed)
    acc = answer_accuracy(model, eval_rows_from_table(held.understanding), eos_token_id=V.EOS_ID, pad_token_id=V.PAD_ID)
    judge_report: dict = {}
    if judge is None:
        judge, report = train_digits_judge(seed)
        judge_report = report.to_dict()
    gen = generation_eval(model, judge, per_digit=per_digit, seed=seed, sampling=sampling)
    return PretrainMetrics(
        understanding_accuracy=acc.accuracy,
        understanding_n=acc.total,
        generation_score=gen.score,
        generation_per_digit=gen.per_digit,
        generation_n=int(gen.digits.size),
        judge_accuracy=float(judge_report.get("accuracy", float("nan"))),
        judge=judge_report,
    )


def pretrain(cfg: PretrainConfig = PretrainConfig(), *, log: Callable[[str], None] = print) -> PretrainResult:
    """Build the tiny model, pre-train it on digits, evaluate it on held-out data.

    Sets ``torch.set_num_threads(cfg.threads)`` (restored afterwards). Deterministic given
    ``cfg`` on a given machine.
    """
    from cl_platform.models.tiny import build_tiny_model, count_parameters
    from cl_platform.suites.digits import vocab as V
    from cl_platform.train.batches import answer_loss

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        short, long = build_sources(cfg.seed, cfg.mixture)
        n_rows = sum(len(src.rows) for src in short) + len(long.rows)
        model = build_tiny_model(
            V.DIGITS_SPEC,
            cfg.model,
            bos_token_id=V.BOS_ID,
            eos_token_id=V.EOS_ID,
            vocabulary_map=dict(V.TOKEN_TO_ID),
            seed=cfg.seed,
        )
        log(
            f"pre-training digits base: {count_parameters(model):,} parameters, {n_rows} rows "
            f"({', '.join(f'{src.name} {len(src.rows)}' for src in [*short, long])}), "
            f"{cfg.steps} steps x {cfg.batch_size}, lr {cfg.lr:g}, {cfg.threads} threads"
        )
        opt = _optimizer(model, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, cfg))
        stream = MixtureBatches(short, long, cfg.batch_size, cfg.mixture, cfg.seed)
        model.train()
        recent: list[float] = []
        t0 = time.perf_counter()
        for step in range(cfg.steps):
            batch = next(stream)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            loss = answer_loss(logits, batch.labels, reduction=cfg.loss_reduction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            recent.append(loss.item())
            recent = recent[-cfg.log_every :]
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - t0
                rate = done / elapsed
                log(
                    f"step {done:>5}/{cfg.steps}  loss {np.mean(recent):.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                    f"{rate:.2f} steps/s  elapsed {_fmt_seconds(elapsed)}  left {_fmt_seconds((cfg.steps - done) / rate)}"
                )
        train_seconds = time.perf_counter() - t0
        model.eval()
        t1 = time.perf_counter()
        metrics = evaluate_base(model, cfg.seed, sampling=cfg.sampling, per_digit=cfg.eval_per_digit)
        eval_seconds = time.perf_counter() - t1
    finally:
        torch.set_num_threads(previous_threads)
    return PretrainResult(model=model, metrics=metrics, train_seconds=train_seconds, eval_seconds=eval_seconds, final_loss=float(np.mean(recent)))


def model_card(cfg: PretrainConfig, result: PretrainResult, *, name: str = BASE_MODEL_NAME) -> dict:
    """The ``model_card.json`` content for a pre-trained base model."""
    import transformers

    from cl_platform.models.tiny import count_parameters
    from cl_platform.suites.digits import vocab as V

    m = result.metrics
    return {
        "format": CARD_FORMAT,
        "name": name,
        "architecture": "ChameleonForConditionalGeneration",
        "suite": "digits",
        "modality_spec": V.DIGITS_SPEC.to_dict(),
        "parameters": count_parameters(result.model),
        "parameters_with_vq": count_parameters(result.model, exclude_vq=False),
        "model_config": cfg.model.to_dict(),
        "training": {k: v for k, v in cfg.to_dict().items() if k not in ("model", "sampling")},
        "steps": cfg.steps,
        "threads": cfg.threads,
        "train_seconds": round(result.train_seconds, 2),
        "eval_seconds": round(result.eval_seconds, 2),
        "final_train_loss": round(result.final_loss, 5),
        "metrics": {
            "heldout_understanding_accuracy": m.understanding_accuracy,
            "heldout_understanding_n": m.understanding_n,
            "generation_score": m.generation_score,
            "generation_per_digit": m.generation_per_digit,
            "generation_n": m.generation_n,
            "generation_sampling": cfg.sampling.to_dict(),
            "generation_seed": cfg.seed,
            "judge_accuracy": m.judge_accuracy,
            "judge": m.judge,
        },
        "files": {"model": f"{MODEL_DIR}/", "tokenizer": f"{MODEL_DIR}/tokenizer.json"},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save_base_model(store, model: torch.nn.Module, card: dict, *, name: str = BASE_MODEL_NAME) -> str:
    """Write ``model/`` (weights, config, tokenizer) then ``model_card.json`` to ``<store>/models/<name>/``.

    Returns the URI of the model directory. The card is written last, so a reader that sees it
    sees a complete model.
    """
    from cl_platform.store import as_store
    from cl_platform.suites.digits import vocab as V

    store = as_store(store)
    base = f"models/{name}"
    with tempfile.TemporaryDirectory(prefix="cl_base_") as tmp:
        local = Path(tmp) / MODEL_DIR
        model.save_pretrained(local, safe_serialization=True)
        V.save_tokenizer(local)
        store.delete(f"{base}/{CARD_FILE}", missing_ok=True)
        store.put_dir(local, f"{base}/{MODEL_DIR}")
    store.write_json(f"{base}/{CARD_FILE}", card)
    return store.uri(f"{base}/{MODEL_DIR}")


@dataclass
class BaseModel:
    """A stored base model.

    Attributes:
        uri: URI of the model directory (pass it to :func:`cl_platform.models.chameleon.load_model`).
        card: its ``model_card.json``.
        reused: True when it was already in the store (nothing trained).
    """

    uri: str
    card: dict
    reused: bool


def read_base_model(store, *, name: str = BASE_MODEL_NAME) -> BaseModel | None:
    """The complete base model ``name`` in ``store``, or ``None`` when absent or incomplete (no card)."""
    from cl_platform.store import as_store

    store = as_store(store)
    card_path = f"models/{name}/{CARD_FILE}"
    if not store.exists(card_path):
        return None
    return BaseModel(uri=store.uri(f"models/{name}/{MODEL_DIR}"), card=store.read_json(card_path), reused=True)


def ensure_base_model(
    store=None,
    cfg: PretrainConfig = PretrainConfig(),
    *,
    name: str = BASE_MODEL_NAME,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> BaseModel:
    """Return the base model ``name`` of ``store``, pre-training and storing it first when needed.

    A model counts as present when its ``model_card.json`` exists (the card is written last).
    ``force`` trains and overwrites it anyway. ``store`` is a :class:`~cl_platform.store.Store`,
    a URL, or ``None`` for the default store.
    """
    from cl_platform.store import as_store

    store = as_store(store)
    if not force:
        existing = read_base_model(store, name=name)
        if existing is not None:
            log(f"reusing {existing.uri} (model_card.json present; --force to retrain)")
            return existing
    result = pretrain(cfg, log=log)
    card = model_card(cfg, result, name=name)
    uri = save_base_model(store, result.model, card, name=name)
    log(f"saved {uri}")
    return BaseModel(uri=uri, card=card, reused=False)


def card_summary(card: dict) -> str:
    """A readable multi-line summary of a model card."""
    m = card["metrics"]
    mc = card["model_config"]
    tr = card["training"]
    lines = [
        f"model        {card['name']}: {card['parameters']:,} parameters (hidden {mc['hidden_size']}, "
        f"{mc['num_hidden_layers']} layers, {mc['num_attention_heads']} heads, MLP {mc['intermediate_size']})",
        f"training     {card['steps']} steps x {tr['batch_size']}, lr {tr['lr']:g}, {card['threads']} threads, "
        f"{card['train_seconds']:.1f} s (+{card['eval_seconds']:.1f} s eval), final loss {card['final_train_loss']:.4f}",
        f"understanding  held-out accuracy {m['heldout_understanding_accuracy']:.3f} (n={m['heldout_understanding_n']})",
        f"generation     score {m['generation_score']:.3f} (n={m['generation_n']}, "
        f"T={m['generation_sampling']['temperature']}, top-k {m['generation_sampling']['top_k']}); per digit "
        + " ".join(f"{x:.1f}" for x in m["generation_per_digit"]),
        f"judge          accuracy on held-out real digits {m['judge_accuracy']:.3f}",
    ]
    return "\n".join(lines)


__all__ = [
    "BASE_MODEL_NAME",
    "CARD_FILE",
    "BaseModel",
    "PretrainConfig",
    "PretrainMetrics",
    "PretrainResult",
    "card_summary",
    "default_model_config",
    "ensure_base_model",
    "evaluate_base",
    "model_card",
    "pretrain",
    "read_base_model",
    "save_base_model",
]
