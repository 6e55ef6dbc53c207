"""Forward+backward time of one targeted MLP projection in four forms, on the same inputs.

Forms: the frozen base layer alone; the base with PEFT's own LoRA (rank r); the base with the
fused MoDE layer (E text experts of rank r, a visual LoRA of rank r); the base with a faithful
re-implementation of the reference algorithm (per-expert loop, boolean-mask gather,
``out[mask] += ...`` scatter). Each adapted form is also timed without the base layer (adapter
path only), since the base matmul is the same for all and dominates on large layers: the JSON keys
``lora_ms``, ``mode_ms`` and ``reference_ms`` are the adapter paths (fwd+bwd, adapters included,
base excluded) and ``speedup_vs_reference`` / ``overhead_vs_lora`` are their ratios; the
``*_layer_ms`` keys and ``layer_*`` ratios are the whole layers, base included.

Prints a table, then one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from cl_platform.mode import ModeConfig, ModeLinear, RoutingState
from cl_platform.mode.reference import reference_mode_delta

SIZES = {"cpu": (1024, 2816, 4096), "anole": (4096, 11008, 4096)}


class ReferenceLayer(nn.Module):
    """Base layer + the reference algorithm, sharing the MoDE layer's weights."""

    def __init__(self, mode: ModeLinear) -> None:
        super().__init__()
        self.mode = mode

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        m, a = self.mode, "default"
        return reference_mode_delta(
            x, m.routing.mask_for(x), m.mode_text_A[a], m.mode_text_B[a], m.mode_router[a],
            m.mode_image_A[a], m.mode_image_B[a], num_experts=m.mode_num_experts[a],
            scale_text=m.mode_scale_text[a], scale_image=m.mode_scale_image[a],
            dropout=m.mode_dropout[a], training=self.training,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mode.base_layer(x) + self.delta(x)


def lora_delta(layer: LoraLinear, x: torch.Tensor) -> torch.Tensor:
    a = "default"
    return layer.lora_B[a](layer.lora_A[a](layer.lora_dropout[a](x))) * layer.scaling[a]


def time_fwd_bwd(fn, x: torch.Tensor, grad: torch.Tensor, iters: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        x.grad = None
        fn(x).backward(grad)
    sync()
    times = []
    for _ in range(iters):
        x.grad = None
        t0 = time.perf_counter()
        fn(x).backward(grad)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu", help="cpu: 1024x2816; anole: 4096x11008 (7B)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per step (default 4096)")
    p.add_argument("--image-fraction", type=float, default=0.5)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    args = p.parse_args(argv)

    d_in, d_out, tokens = SIZES[args.size]
    tokens = args.tokens or tokens
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)

    base = nn.Linear(d_in, d_out, bias=False).to(device, dtype).requires_grad_(False)
    lora_cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=args.dropout)
    lora = LoraLinear(base, "default", config=lora_cfg, r=args.rank, lora_alpha=2 * args.rank).to(device, dtype)
    cfg = ModeConfig(
        r_text=args.rank, r_image=args.rank, lora_alpha=2 * args.rank, num_experts=args.experts,
        lora_dropout=args.dropout, image_token_ranges=[[0, 1]],
    )
    mode = ModeLinear(base, "default", cfg).to(device, dtype)
    with torch.no_grad():  # trained-looking adapters (B = 0 would make the numbers no different)
        for layer in (lora, mode):
            for n, t in layer.named_parameters():
                if "lora_B" in n or "_B" in n:
                    t.normal_(0, 0.01)
    ref = ReferenceLayer(mode)
    for m in (lora, mode, ref):
        m.train()

    x = torch.randn(tokens, d_in, device=device, dtype=dtype, requires_grad=True)
    n_img = int(round(args.image_fraction * tokens))
    mask = torch.zeros(tokens, dtype=torch.bool, device=device)
    mask[torch.randperm(tokens, device=device)[:n_img]] = True
    mode.routing = RoutingState([[0, 1]])
    mode.routing.image_mask = mask
    grad = torch.randn(tokens, d_out, device=device, dtype=dtype)

    t = lambda fn: time_fwd_bwd(fn, x, grad, args.iters, args.warmup, sync)  # noqa: E731
    full = {"base": t(base), "lora": t(lora), "mode": t(mode), "reference": t(ref)}
    adapter = {
        "lora": t(lambda v: lora_delta(lora, v)),
        "mode": t(lambda v: mode.adapter_output(v, "default")),
        "reference": t(ref.delta),
    }
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    print(f"MoDE layer benchmark: {d_in}x{d_out}, {tokens} tokens, {args.image_fraction:.0%} image, "
          f"E={args.experts}, r={args.rank}, {dtype}, {dev_name}")
    print(f"{'form':<12}{'layer fwd+bwd ms':>18}{'adapter only ms':>18}{'adapter vs mode':>18}")
    for name in ("base", "lora", "mode", "reference"):
        a = f"{adapter[name]:>18.2f}{adapter[name] / adapter['mode']:>17.2f}x" if name in adapter else f"{'-':>18}{'-':>18}"
        print(f"{name:<12}{full[name]:>18.2f}{a}")
    result = {
        "size": args.size, "d_in": d_in, "d_out": d_out, "tokens": tokens, "image_fraction": args.image_fraction,
        "experts": args.experts, "rank": args.rank, "dtype": str(dtype).replace("torch.", ""),
        # base layer alone; *_ms: the adapter path each form adds on top of the same frozen base
        "base_ms": round(full["base"], 3),
        "lora_ms": round(adapter["lora"], 3),
        "mode_ms": round(adapter["mode"], 3),
        "reference_ms": round(adapter["reference"], 3),
        "speedup_vs_reference": round(adapter["reference"] / adapter["mode"], 3),
        "overhead_vs_lora": round(adapter["mode"] / adapter["lora"], 3),
        # whole layer (base + adapter), as a training step sees it
        "lora_layer_ms": round(full["lora"], 3),
        "mode_layer_ms": round(full["mode"], 3),
        "reference_layer_ms": round(full["reference"], 3),
        "layer_speedup_vs_reference": round(full["reference"] / full["mode"], 3),
        "layer_overhead_vs_lora": round(full["mode"] / full["lora"], 3),
        "device": dev_name,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
