"""The reference implementation's MoDE algorithm, re-implemented faithfully.

It loops over the experts, gathers the text and image tokens with boolean masks and scatters
the results back with ``out[mask] += ...`` (each mask index is a host synchronisation on a GPU).
It is kept only as the ground truth for equivalence tests and as the baseline of
``benchmarks/mode_layer.py``; training always uses :func:`cl_platform.mode.layer.mode_delta`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def reference_mode_delta(
    x: torch.Tensor,
    image_mask: Optional[torch.Tensor],
    text_A: torch.Tensor,
    text_B: torch.Tensor,
    router: torch.Tensor,
    image_A: Optional[torch.Tensor],
    image_B: Optional[torch.Tensor],
    *,
    num_experts: int,
    scale_text: float,
    scale_image: float,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Same contract as :func:`~cl_platform.mode.layer.mode_delta`, computed the reference way."""
    lead = x.shape[:-1]
    xf = x.reshape(-1, x.shape[-1])
    out = torch.zeros(xf.shape[0], text_B.shape[0], dtype=xf.dtype, device=xf.device)
    r = text_A.shape[0] // num_experts
    if image_A is None:
        text_mask = torch.ones(xf.shape[0], dtype=torch.bool, device=xf.device)
    else:
        img = image_mask.reshape(-1).to(torch.bool)
        text_mask = ~img
    x_text = xf[text_mask]
    gate = torch.softmax(x_text @ router.t(), dim=-1)
    for e in range(num_experts):
        A_e = text_A[e * r : (e + 1) * r]
        B_e = text_B[:, e * r : (e + 1) * r]
        x_e = F.dropout(x_text, p=dropout, training=training)
        out[text_mask] += gate[:, e : e + 1] * ((x_e @ A_e.t()) @ B_e.t()) * scale_text
    if image_A is not None:
        x_img = F.dropout(xf[img], p=dropout, training=training)
        out[img] += ((x_img @ image_A.t()) @ image_B.t()) * scale_image
    return out.view(*lead, -1)
