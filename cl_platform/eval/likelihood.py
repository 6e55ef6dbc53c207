"""The model-agnostic generation probe: teacher-forced likelihood of held-out image tokens.

Any unified model that writes images as tokens can be scored this way, with no image decoder and
no judge. The probe reads a held-out generation stream (rows ``tokens`` = prompt + ``<boi>`` +
image codes + ``<eoi>``, optional ``prompt_len``), runs the model once over each row and looks at
the image tokens it has to predict.

The exact formula. For a row with tokens ``x_0..x_{n-1}`` and prompt length ``p``, the scored
positions are ``j >= max(1, p)`` whose token ``x_j`` is an image token (``ModalitySpec.is_image``:
the begin/end-of-image markers and the image codes). At each one the model's logits are
restricted to the ``V`` image-token ids and renormalised (the same restriction image generation
samples under), giving ``log q(x_j | x_<j)``. Over all scored positions of the probe:

    CE = - mean_j log q(x_j | x_<j)          (nats per image token)
    generation_score = max(0, 1 - CE / ln(V))

The forward is an image-generation call (:func:`cl_platform.mode.generating_image`): a MoDE model
routed by ``sequence`` sends the whole row, its prompt included, to the visual LoRA.

1 is a model certain of every image token, 0 one no better than a uniform guess among the image
ids (or worse: the score is clipped at 0, so it stays a fraction like the judge's). Reported after every round like the judge's score (shown
x100 in tables); the base model's value is round 0 and ``generation_drop`` = base - current.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from cl_platform.eval.probe import GenerationProbe, ProbeSpec
from cl_platform.mode import generating_image
from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store

FACTORY = "cl_platform.eval.likelihood:image_likelihood_probe"


def image_ids(spec: ModalitySpec) -> torch.Tensor:
    """Every id in the spec's image-token ranges, ascending."""
    return torch.cat([torch.arange(lo, hi) for lo, hi in spec.image_token_ranges])


def scored_positions(tokens: Sequence[int], prompt_len: int, spec: ModalitySpec) -> list[int]:
    """Positions ``j >= max(1, prompt_len)`` whose token is an image token (see the module docstring)."""
    ids = torch.as_tensor(list(tokens), dtype=torch.long)
    mask = spec.is_image(ids)
    mask[: max(1, prompt_len)] = False
    return torch.nonzero(mask).flatten().tolist()


class ImageLikelihoodProbe(GenerationProbe):
    """``generation_score = max(0, 1 - CE / ln(V))`` over the image tokens of held-out rows.

    Args:
        rows: ``(tokens, prompt_len)`` rows.
        spec: the model's modality spec.
        batch_size: rows per forward pass.
    """

    def __init__(self, rows: Sequence[tuple[Sequence[int], int]], spec: ModalitySpec, batch_size: int = 8) -> None:
        if not rows:
            raise ValueError("ImageLikelihoodProbe: no probe rows")
        self.rows = [(list(t), int(p)) for t, p in rows]
        self.spec = spec
        self.batch_size = batch_size
        self.image_ids = image_ids(spec)
        self.log_v = math.log(len(self.image_ids))
        # position of each vocabulary id inside the restricted (image-only) distribution
        self._slot = torch.full((spec.vocab_size,), -1, dtype=torch.long)
        self._slot[self.image_ids] = torch.arange(len(self.image_ids))

    @torch.no_grad()
    def partial(self, model: torch.nn.Module, rank: int, world: int) -> tuple[float, float]:
        """``(sum of -log q over scored positions, number of scored positions)`` of this rank's rows."""
        model.eval()
        device = next(model.parameters()).device
        ids_dev = self.image_ids.to(device)
        nll, count = 0.0, 0
        shard = self.rows[rank::world]
        for s in range(0, len(shard), self.batch_size):
            chunk = shard[s : s + self.batch_size]
            width = max(len(t) for t, _ in chunk)
            ids = torch.full((len(chunk), width), self.spec.pad_id, dtype=torch.long)
            am = torch.zeros((len(chunk), width), dtype=torch.long)
            targets = torch.full((len(chunk), width), -1, dtype=torch.long)  # slot of x_j, -1: not scored
            for i, (tokens, plen) in enumerate(chunk):
                ids[i, : len(tokens)] = torch.tensor(tokens)
                am[i, : len(tokens)] = 1
                pos = scored_positions(tokens, plen, self.spec)
                targets[i, pos] = self._slot[torch.tensor(tokens)[pos]]
            with generating_image(model):
                logits = model(input_ids=ids.to(device), attention_mask=am.to(device)).logits
            # logits at j-1 predict x_j
            restricted = logits[:, :-1, :].index_select(-1, ids_dev).float().log_softmax(-1)
            tgt = targets[:, 1:].to(device)
            keep = tgt >= 0
            if keep.any():
                lp = restricted.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                nll += float(-(lp[keep]).sum())
                count += int(keep.sum())
        return nll, float(count)

    def score(self, numerator: float, denominator: float) -> float:
        if not denominator:
            return 0.0
        return max(0.0, 1.0 - (numerator / denominator) / self.log_v)


def image_likelihood_probe(*, store: Store, spec: ModalitySpec, seed: int, stream: str,
                           max_rows: Optional[int] = None, batch_size: int = 8) -> ImageLikelihoodProbe:
    """Factory of :class:`ImageLikelihoodProbe` over the rows of ``streams/<stream>`` (validated on read).

    ``max_rows`` keeps the first rows only (the stream's order is fixed, so the probe is too);
    ``seed`` is unused (the probe is deterministic).
    """
    from cl_platform.data.task_format import read_stream

    table = read_stream(store, stream, vocab_size=spec.vocab_size).data
    tokens = table.column("tokens").to_pylist()
    plens = table.column("prompt_len").to_pylist() if "prompt_len" in table.column_names else [0] * len(tokens)
    rows = list(zip(tokens, plens))
    if max_rows is not None:
        rows = rows[:max_rows]
    if not any(scored_positions(t, p, spec) for t, p in rows):
        raise ValueError(f"probe stream {stream!r}: no row has an image token after its prompt")
    return ImageLikelihoodProbe(rows, spec, batch_size=batch_size)


def image_likelihood_spec(stream: str, max_rows: Optional[int] = None) -> ProbeSpec:
    """The :class:`ProbeSpec` of the default probe over ``streams/<stream>``."""
    params = {"stream": stream} if max_rows is None else {"stream": stream, "max_rows": max_rows}
    return ProbeSpec(factory=FACTORY, params=params,
                     description=f"image-token likelihood of stream '{stream}' (max(0, 1 - CE / ln V), teacher-forced)")


__all__ = ["FACTORY", "ImageLikelihoodProbe", "image_ids", "image_likelihood_probe", "image_likelihood_spec",
           "scored_positions"]
