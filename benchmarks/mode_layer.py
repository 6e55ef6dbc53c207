"""Forward+backward time of one targeted MLP projection in four forms, on the same inputs.

Forms: the frozen base layer alone; the base with PEFT's own LoRA (rank r); the base with the
fused MoDE layer (E text experts of rank r, a visual LoRA of rank r); the base with a faithful
re-implementation of the reference algorithm (per-expert loop, boolean-mask gather,
``out[mask] += ...`` scatter). Each adapted form is also timed without the base layer (adapter
path only), since the base matmul is the same for all and dominates on large layers: the JSON keys
``lora_ms``, ``mode_ms`` and ``reference_ms`` are the adapter paths (fwd+bwd, adapters included,
base excluded) and ``speedup_vs_reference`` / ``overhead_vs_lora`` are their ratios; the
``*_layer_ms`` keys and ``layer_*`` ratios are the whole layers, base included.

Prints a table, then one JSON line last. :func:`measure` returns the same fields to a caller
(``benchmarks/device_check.py``); on CUDA it adds each form's peak memory (``*_peak_mib``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable, Optional

import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from cl_platform.mode import ModeConfig, ModeLinear, RoutingState
from cl_platform.mode.reference import reference_mode_delta

SIZES = {"cpu": (1024, 2816, 4096), "anole": (4096, 11008, 4096), "tiny": (64, 176, 128)}


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


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's architecture and torch thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before (MiB);
    ``None`` off CUDA."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def measure(d_in: int, d_out: int, tokens: int, *, image_fraction: float = 0.5, experts: int = 4, rank: int = 8,
            dropout: float = 0.05, iters: int = 10, warmup: int = 3, device: str = "cpu",
            dtype: Optional[str] = None) -> dict:
    """Time forward+backward of the four forms of one ``d_in x d_out`` projection on ``tokens`` tokens.

    Returns the JSON fields (see the module doc); on CUDA also ``*_peak_mib``: the peak memory
    allocated during the forms' timed calls (whole layers, inputs excluded).
    """
    dev = torch.device(device)
    dt = getattr(torch, dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)

    base = nn.Linear(d_in, d_out, bias=False).to(dev, dt).requires_grad_(False)
    lora_cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout)
    lora = LoraLinear(base, "default", config=lora_cfg, r=rank, lora_alpha=2 * rank).to(dev, dt)
    cfg = ModeConfig(
        r_text=rank, r_image=rank, lora_alpha=2 * rank, num_experts=experts,
        lora_dropout=dropout, image_token_ranges=[[0, 1]],
    )
    mode = ModeLinear(base, "default", cfg).to(dev, dt)
    with torch.no_grad():  # trained-looking adapters (B = 0 would make the numbers no different)
        for layer in (lora, mode):
            for n, t in layer.named_parameters():
                if "lora_B" in n or "_B" in n:
                    t.normal_(0, 0.01)
    ref = ReferenceLayer(mode)
    for m in (lora, mode, ref):
        m.train()

    x = torch.randn(tokens, d_in, device=dev, dtype=dt, requires_grad=True)
    n_img = int(round(image_fraction * tokens))
    mask = torch.zeros(tokens, dtype=torch.bool, device=dev)
    mask[torch.randperm(tokens, device=dev)[:n_img]] = True
    mode.routing = RoutingState([[0, 1]])
    mode.routing.image_mask = mask
    grad = torch.randn(tokens, d_out, device=dev, dtype=dt)

    t = lambda fn: time_fwd_bwd(fn, x, grad, iters, warmup, sync)  # noqa: E731
    forms = {"base": base, "lora": lora, "mode": mode, "reference": ref}
    full = {name: t(fn) for name, fn in forms.items()}
    adapter = {
        "lora": t(lambda v: lora_delta(lora, v)),
        "mode": t(lambda v: mode.adapter_output(v, "default")),
        "reference": t(ref.delta),
    }
    result = {
        "size": None, "d_in": d_in, "d_out": d_out, "tokens": tokens, "image_fraction": image_fraction,
        "experts": experts, "rank": rank, "dtype": str(dt).replace("torch.", ""),
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
        "device": device_name(dev),
    }
    if dev.type == "cuda":
        for name, fn in forms.items():
            peak = peak_memory_mib(lambda: time_fwd_bwd(fn, x, grad, 1, 0, sync), dev)
            result[f"{name}_peak_mib"] = round(peak, 1)
    return result


def print_table(result: dict) -> None:
    """The human-readable table of a :func:`measure` result."""
    ms = {name: result[f"{name}_layer_ms"] for name in ("lora", "mode", "reference")}
    ms["base"] = result["base_ms"]
    adapter = {name: result[f"{name}_ms"] for name in ("lora", "mode", "reference")}
    print(f"MoDE layer benchmark: {result['d_in']}x{result['d_out']}, {result['tokens']} tokens, "
          f"{result['image_fraction']:.0%} image, E={result['experts']}, r={result['rank']}, "
          f"torch.{result['dtype']}, {result['device']}")
    print(f"{'form':<12}{'layer fwd+bwd ms':>18}{'adapter only ms':>18}{'adapter vs mode':>18}")
    for name in ("base", "lora", "mode", "reference"):
        a = f"{adapter[name]:>18.2f}{adapter[name] / adapter['mode']:>17.2f}x" if name in adapter else f"{'-':>18}{'-':>18}"
        print(f"{name:<12}{ms[name]:>18.2f}{a}")


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu",
                   help="cpu: 1024x2816; anole: 4096x11008 (7B); tiny: 64x176 (a smoke test)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per step (default 4096; 128 for tiny)")
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
    result = measure(d_in, d_out, args.tokens or tokens, image_fraction=args.image_fraction, experts=args.experts,
                     rank=args.rank, dropout=args.dropout, iters=args.iters, warmup=args.warmup, device=args.device,
                     dtype=args.dtype)
    result["size"] = args.size
    print_table(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
