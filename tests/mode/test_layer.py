"""The fused MoDE layer against the reference algorithm, and MoDE's gradient isolation."""

import pytest
import torch

from cl_platform.mode.layer import mode_delta
from cl_platform.mode.reference import reference_mode_delta

E, R_T, R_V, D_IN, D_OUT = 4, 3, 5, 12, 10


def _params(decoupled: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    p = {"text_A": mk(E * R_T, D_IN), "text_B": mk(D_OUT, E * R_T), "router": mk(E, D_IN)}
    p["image_A"] = mk(R_V, D_IN) if decoupled else None
    p["image_B"] = mk(D_OUT, R_V) if decoupled else None
    return p


def _inputs(frac_image: float, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(3, 16, D_IN, generator=g, dtype=torch.float64, requires_grad=True)
    n = x.shape[0] * x.shape[1]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[: int(round(frac_image * n))]] = True
    return x, mask.view(3, 16)


def _run(fn, x, mask, p, decoupled):
    return fn(
        x, mask if decoupled else None, p["text_A"], p["text_B"], p["router"], p["image_A"], p["image_B"],
        num_experts=E, scale_text=16 / R_T, scale_image=16 / R_V,
    )


def _grads(fn, x, mask, p, decoupled, weight):
    tensors = [x] + [t for t in p.values() if t is not None]
    for t in tensors:
        t.grad = None
    out = _run(fn, x, mask, p, decoupled)
    (out * weight).sum().backward()
    return out.detach(), [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("frac_image", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("decoupled", [True, False])
def test_fused_equals_reference_output_and_every_gradient(frac_image, decoupled):
    seed = int(torch.randint(0, 10_000, ()).item())
    p = _params(decoupled, seed)
    x, mask = _inputs(frac_image, seed)
    weight = torch.randn(3, 16, D_OUT, dtype=torch.float64)
    out_f, grads_f = _grads(mode_delta, x, mask, p, decoupled, weight)
    out_r, grads_r = _grads(reference_mode_delta, x, mask, p, decoupled, weight)
    torch.testing.assert_close(out_f, out_r, rtol=1e-12, atol=1e-12)
    assert len(grads_f) == len(grads_r)
    for gf, gr in zip(grads_f, grads_r):
        torch.testing.assert_close(gf, gr, rtol=1e-12, atol=1e-12)


def _param_grads(x, mask, p, decoupled, select):
    for t in p.values():
        if t is not None:
            t.grad = None
    out = _run(mode_delta, x, mask, p, decoupled)
    loss = (out * torch.randn_like(out))[select].sum()
    loss.backward()
    return {k: (t.grad if t.grad is not None else torch.zeros_like(t)) for k, t in p.items() if t is not None}


def test_image_loss_leaves_exactly_zero_gradient_on_text_experts_and_router():
    p = _params(True, 1)
    x, mask = _inputs(0.5, 1)
    g = _param_grads(x, mask, p, True, mask)
    for k in ("text_A", "text_B", "router"):
        assert torch.count_nonzero(g[k]) == 0, k
    assert torch.count_nonzero(g["image_A"]) > 0 and torch.count_nonzero(g["image_B"]) > 0


def test_text_loss_leaves_exactly_zero_gradient_on_visual_lora():
    p = _params(True, 2)
    x, mask = _inputs(0.5, 2)
    g = _param_grads(x, mask, p, True, ~mask)
    for k in ("image_A", "image_B"):
        assert torch.count_nonzero(g[k]) == 0, k
    for k in ("text_A", "text_B", "router"):
        assert torch.count_nonzero(g[k]) > 0, k


def test_coupled_form_shares_parameters_across_modalities():
    # moe_lora: image-token and text-token losses both reach the same experts and router.
    p = _params(False, 3)
    x, mask = _inputs(0.5, 3)
    g_img = _param_grads(x, mask, p, False, mask)
    g_txt = _param_grads(x, mask, p, False, ~mask)
    for k in ("text_A", "text_B", "router"):
        assert torch.count_nonzero(g_img[k]) > 0 and torch.count_nonzero(g_txt[k]) > 0, k


def test_fresh_adapter_with_zero_B_adds_nothing():
    p = _params(True, 4)
    with torch.no_grad():
        p["text_B"].zero_()
        p["image_B"].zero_()
    x, mask = _inputs(0.5, 4)
    assert torch.count_nonzero(_run(mode_delta, x, mask, p, True)) == 0
