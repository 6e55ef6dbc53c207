"""The gradient-conflict diagnostic: where the task loss and the image-generation loss move the adapter.

After a round, on a fixed small batch of the round's task train rows and of the generation (KD)
stream rows (:func:`pick_rows`: chosen by seed, the same rows every round), two gradients are taken
on every trainable adapter parameter, with the model in eval mode (no dropout):

- the task loss ``g_t``: the answer-only cross-entropy of training
  (:func:`cl_platform.train.batches.answer_loss`);
- the image-generation loss ``g_g``: the cross-entropy (full vocabulary) of the stream rows' image
  tokens given the prompt, at the positions the likelihood probe scores
  (:func:`cl_platform.eval.likelihood.scored_positions`), the forward being an image-generation
  call (:func:`cl_platform.mode.generating_image`), so routed as the method routes generation.

Parameters are grouped by what they are (:func:`parameter_group`): MoDE's ``text_experts``,
``router`` and ``visual_lora``; a modality-coupled MoE-LoRA's ``experts`` and ``router``; a plain
LoRA's ``lora``. For every group and for all parameters together (``overall``),
:func:`conflict_stats` gives:

- ``task_norm`` = ||g_t|| and ``generation_norm`` = ||g_g||;
- ``cosine`` = <g_t, g_g> / (||g_t|| ||g_g||), ``None`` unless both norms are non-zero;
- ``task_share`` = sum of g_t[i]^2 over the entries i with g_g[i] != 0, over ||g_t||^2: the share
  of the task gradient's squared norm that lands on entries the generation loss also updates
  (``generation_share`` the other way round); ``None`` for a zero gradient.

What is exactly zero: under ``sequence`` generation routing, MoDE's text experts and routers never
take part in a generation forward, so their ``generation_norm`` is exactly 0; the task loss still
reaches the visual LoRA through the image tokens of task prompts. A coupled MoE-LoRA's experts
take both losses.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Any, Callable, ContextManager, Optional, Sequence

import numpy as np
import torch

from cl_platform.eval.likelihood import scored_positions
from cl_platform.mode import generating_image
from cl_platform.models.modality import ModalitySpec
from cl_platform.train.batches import IGNORE_INDEX, Row, answer_loss, collate_rows, rows_from_table

#: Rows of each batch of the diagnostic.
DIAGNOSTIC_ROWS = 8

#: Parameter-name markers and their group (first match wins; MoDE's text parts in a model without
#: a visual LoRA are a coupled MoE-LoRA's ``experts``).
_MARKERS = (("mode_text_", "text_experts"), ("mode_router", "router"), ("mode_image_", "visual_lora"),
            ("lora_", "lora"))


def parameter_group(name: str, *, coupled: bool = False) -> str:
    """The group of an adapter parameter by its name: ``text_experts`` (``experts`` when
    ``coupled``), ``router``, ``visual_lora``, ``lora``, or ``other``."""
    for marker, group in _MARKERS:
        if marker in name:
            return "experts" if coupled and group == "text_experts" else group
    return "other"


def parameter_groups(model: torch.nn.Module) -> dict[str, str]:
    """Name -> group of every trainable parameter of ``model`` (see :func:`parameter_group`)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    coupled = not any("mode_image_" in n for n in names)
    return {n: parameter_group(n, coupled=coupled) for n in names}


def conflict_stats(task: Sequence[torch.Tensor], generation: Sequence[torch.Tensor]) -> dict[str, Optional[float]]:
    """Norms, cosine and shared-entry shares of two gradients given as matching lists of tensors
    (see the module docstring; computed in float64)."""
    if len(task) != len(generation):
        raise ValueError(f"conflict_stats: {len(task)} task tensors but {len(generation)} generation tensors")
    tt = gg = tg = t_on_g = g_on_t = 0.0
    for a, b in zip(task, generation):
        if a.shape != b.shape:
            raise ValueError(f"conflict_stats: gradient shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        a, b = a.detach().double(), b.detach().double()
        a2, b2 = a * a, b * b
        tt += float(a2.sum())
        gg += float(b2.sum())
        tg += float((a * b).sum())
        t_on_g += float(a2[b != 0].sum())
        g_on_t += float(b2[a != 0].sum())
    return {
        "task_norm": math.sqrt(tt),
        "generation_norm": math.sqrt(gg),
        "cosine": tg / math.sqrt(tt * gg) if tt > 0 and gg > 0 else None,
        "task_share": t_on_g / tt if tt > 0 else None,
        "generation_share": g_on_t / gg if gg > 0 else None,
    }


def group_conflicts(task: dict[str, torch.Tensor], generation: dict[str, torch.Tensor],
                    groups: dict[str, str]) -> dict[str, Any]:
    """``{"groups": {group: stats}, "overall": stats}`` of two gradients keyed by parameter name."""
    by_group: dict[str, list[str]] = {}
    for name, group in groups.items():
        by_group.setdefault(group, []).append(name)
    return {
        "groups": {g: conflict_stats([task[n] for n in names], [generation[n] for n in names])
                   for g, names in sorted(by_group.items())},
        "overall": conflict_stats([task[n] for n in groups], [generation[n] for n in groups]),
    }


def pick_rows(total: int, seed: int, k: int = DIAGNOSTIC_ROWS) -> list[int]:
    """``min(k, total)`` distinct row indices in ``[0, total)``, ascending, drawn from ``seed`` only."""
    if total <= 0:
        raise ValueError(f"pick_rows(total={total}): no rows to pick from")
    rng = np.random.default_rng([int(seed), 0x6AD])
    return sorted(rng.choice(total, size=min(int(k), total), replace=False).tolist())


def generation_labels(rows: Sequence[tuple[Sequence[int], int]], spec: ModalitySpec) -> Any:
    """Stream rows ``(tokens, prompt_len)`` as a padded :class:`~cl_platform.train.batches.Batch` whose
    labels are the image tokens at :func:`~cl_platform.eval.likelihood.scored_positions` only."""
    batch = collate_rows([(list(t), 1) for t, _ in rows], spec.pad_id)
    batch.labels.fill_(IGNORE_INDEX)
    for i, (tokens, plen) in enumerate(rows):
        pos = torch.tensor(scored_positions(tokens, int(plen), spec), dtype=torch.long)
        batch.labels[i, pos] = batch.input_ids[i, pos]
    return batch


def loss_gradients(loss: torch.Tensor, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """d loss / d parameter for each of ``params`` (zeros where the loss does not depend on it);
    leaves every ``.grad`` untouched."""
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)}


def gradient_conflict(model: torch.nn.Module, task_rows: Sequence[Row], stream_rows: Sequence[tuple[Sequence[int], int]],
                      spec: ModalitySpec, *, autocast: Optional[Callable[[], ContextManager]] = None) -> dict[str, Any]:
    """The diagnostic (module docstring) of ``model`` on these rows; the model is put in eval mode
    for it and its training mode restored. ``autocast``: makes the context each forward runs in."""
    groups = parameter_groups(model)
    params = {n: p for n, p in model.named_parameters() if n in groups}
    device = next(iter(params.values())).device
    task, gen = collate_rows(task_rows, spec.pad_id).to(device), generation_labels(stream_rows, spec).to(device)
    context = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    try:
        with context():
            logits = model(input_ids=task.input_ids, attention_mask=task.attention_mask, use_cache=False).logits
        g_task = loss_gradients(answer_loss(logits, task.labels), params)
        del logits
        with context(), generating_image(model):
            logits = model(input_ids=gen.input_ids, attention_mask=gen.attention_mask, use_cache=False).logits
        g_gen = loss_gradients(answer_loss(logits, gen.labels), params)
    finally:
        model.train(was_training)
    return {**group_conflicts(g_task, g_gen, groups), "rows": {"task": len(task_rows), "generation": len(stream_rows)}}


@functools.lru_cache(maxsize=4)
def _stream_rows(store_url: str, stream: str, vocab_size: int, seed: int) -> tuple[tuple[tuple[int, ...], int], ...]:
    from cl_platform.data.task_format import read_stream
    from cl_platform.store import Store

    table = read_stream(Store(store_url), stream, vocab_size=vocab_size).data
    tokens = table.column("tokens").to_pylist()
    plens = table.column("prompt_len").to_pylist() if "prompt_len" in table.column_names else [0] * len(tokens)
    return tuple((tuple(tokens[i]), int(plens[i] or 0)) for i in pick_rows(len(tokens), seed))


def round_gradient_conflict(model: torch.nn.Module, store: Any, spec: ModalitySpec, task: str, stream: Optional[str],
                            seed: int, *, autocast: Optional[Callable[[], ContextManager]] = None
                            ) -> Optional[dict[str, Any]]:
    """:func:`gradient_conflict` after a round on ``task``: :data:`DIAGNOSTIC_ROWS` rows of its train
    split and of ``streams/<stream>`` picked by ``seed`` (the stream's rows read once per process),
    plus the ``seconds`` it took; ``None`` without a stream."""
    from cl_platform.data.task_format import read_task

    if not stream:
        return None
    t0 = time.time()
    table = read_task(store, task, vocab_size=spec.vocab_size).train
    rows = rows_from_table(table)
    task_rows = [rows[i] for i in pick_rows(len(rows), seed)]
    stream_rows = _stream_rows(store.uri(""), stream, spec.vocab_size, int(seed))
    out = gradient_conflict(model, task_rows, stream_rows, spec, autocast=autocast)
    return {**out, "seconds": time.time() - t0}


__all__ = ["DIAGNOSTIC_ROWS", "conflict_stats", "generation_labels", "gradient_conflict", "group_conflicts",
           "loss_gradients", "parameter_group", "parameter_groups", "pick_rows", "round_gradient_conflict"]
