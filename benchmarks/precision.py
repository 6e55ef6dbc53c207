"""A training step in fp32 and in bf16 on the CPU: time, and how far the losses and gradients agree.

For the tiny Chameleon (0.5 M parameters) and a 7 M-parameter one: MoDE with KD, the same
adapter weights in both precisions; the losses and adapter gradients of one step from the same
weights (relative difference, cosine similarity), then the median time of ``--iters`` whole steps
(``train_step``: forwards, float32 losses, backward, clip, AdamW) after two warm-up steps.

Prints a table, then one JSON line last.

    python benchmarks/precision.py [--iters 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Optional

import torch

from cl_platform.methods import KDBatch, MethodConfig, StepInputs, get_method
from cl_platform.methods.kd import TeacherTargets
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.tiny import TinyModelConfig, build_tiny_model
from cl_platform.train.memory import CHECK_SIZES
from cl_platform.train.recipe import base_dtype, build_model, step_loss, train_step

#: name -> (model numbers, task batch, sequence length, KD batch)
SIZES = {
    "tiny": ({**{k: v for k, v in TinyModelConfig().to_dict().items()
                 if k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")},
              "vocab_size": 96}, 16, 64, 8),
    "7M": CHECK_SIZES["7M"],
}


def _setup(size: str, precision: str, adapters: Optional[dict[str, torch.Tensor]] = None):
    """Method, model (adapter weights from ``adapters`` when given) and one step's inputs."""
    numbers, batch, seq, kd_batch = SIZES[size]
    m = dict(numbers)
    V = m.pop("vocab_size")
    spec = ModalitySpec(spec_id="b", vocab_size=V, image_code_range=(V // 2, V - 2), boi_id=V - 2, eoi_id=V - 1,
                        pad_id=0, sep_id=3)
    method = get_method("mode", MethodConfig(lora_dropout=0.0))
    base = build_tiny_model(spec, TinyModelConfig(**m, max_position_embeddings=max(256, seq)), seed=0)
    model = build_model(method, base.to(base_dtype(precision)), spec).train()
    if adapters is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(adapters[n])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V // 2, (batch, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    kids = torch.randint(V // 2, V, (kd_batch, seq), generator=g)
    with torch.no_grad():
        top = torch.log_softmax(build_tiny_model(spec, TinyModelConfig(**m, max_position_embeddings=max(256, seq)),
                                                 seed=0)(input_ids=kids).logits.float(), -1).topk(16, dim=-1)
    kd = KDBatch(kids, torch.ones_like(kids), torch.ones_like(kids, dtype=torch.bool),
                 TeacherTargets(top.indices, top.values))
    return method, model, (ids, torch.ones_like(ids), labels, StepInputs(task_batch={}, kd_batch=kd))


def _agreement(size: str) -> dict:
    """Losses and adapter gradients of one step from the same weights, fp32 against bf16."""
    out = {}
    adapters = None
    for precision in ("fp32", "bf16"):
        method, model, (ids, am, labels, inputs) = _setup(size, precision, adapters)
        with torch.no_grad():  # adapters as after training (B is zero at initialisation)
            if adapters is None:
                g = torch.Generator().manual_seed(1)
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn(p.shape, generator=g) * 0.02)
                adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        loss, terms = step_loss(model, method, ids, am, labels, inputs, precision=precision)
        (loss + sum(terms.values())).backward()
        grad = torch.cat([p.grad.flatten() for _, p in sorted(model.named_parameters()) if p.requires_grad])
        out[precision] = (loss.item(), terms["kd"].item(), grad)
    (l32, k32, g32), (l16, k16, g16) = out["fp32"], out["bf16"]
    return {"loss_fp32": l32, "loss_bf16": l16, "loss_rel_diff": abs(l16 - l32) / abs(l32),
            "kd_rel_diff": abs(k16 - k32) / abs(k32),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))}


def _step_seconds(size: str, precision: str, iters: int) -> float:
    method, model, (ids, am, labels, inputs) = _setup(size, precision)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(iters + 2):
        t0 = time.perf_counter()
        train_step(model, method, ids, am, labels, inputs, opt, precision=precision, grad_clip=1.0)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=5, help="timed steps per precision and size")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'size':>5} {'fp32 s/step':>11} {'bf16 s/step':>11} {'bf16/fp32':>9} {'loss rel':>9} {'kd rel':>9} "
          f"{'grad cos':>9}")
    for size in SIZES:
        r = {"size": size, **_agreement(size)}
        r["fp32_step_s"] = _step_seconds(size, "fp32", args.iters)
        r["bf16_step_s"] = _step_seconds(size, "bf16", args.iters)
        r["bf16_over_fp32"] = r["bf16_step_s"] / r["fp32_step_s"]
        rows.append(r)
        print(f"{size:>5} {r['fp32_step_s']:>11.3f} {r['bf16_step_s']:>11.3f} {r['bf16_over_fp32']:>9.2f} "
              f"{r['loss_rel_diff']:>9.2e} {r['kd_rel_diff']:>9.2e} {r['grad_cosine']:>9.5f}", flush=True)
    result = {"benchmark": "precision", "machine": f"{platform.machine()} {platform.system()}",
              "threads": args.threads, "iters": args.iters, "sizes": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
