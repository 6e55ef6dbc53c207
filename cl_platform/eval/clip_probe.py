"""CLIP image alignment of generated images: the image-generation metric on real Anole models.

For each concept prompt of a held-out generation stream, the model under test samples an image;
the image and the prompt's real target images go through the VQ-GAN decoder to pixels and through
CLIP's image tower (OpenAI CLIP ViT-B/32 in the paper) to unit vectors. The score of one generated
image ``g`` of a prompt with targets ``T`` is its mean cosine similarity to them:

    s(g) = mean_{t in T} cos(CLIP(g), CLIP(t))
    generation_score = max(0, mean of s(g) over every generated image of the probe)

higher is better; the base model's value is round 0 and ``generation_drop`` = base - current, as
for the other probes. The mean lies in ``[-1, 1]``; run results hold generation scores as
fractions in ``[0, 1]``, hence the clip at 0 (a guard only: CLIP image-image cosines are positive
in practice). :meth:`ClipAlignmentProbe.details` adds the standard
error of that mean (``std(s, ddof=1) / sqrt(n)``) over the images this probe object scored.

**Prompts and targets.** Stream rows are ``tokens`` = prompt + ``<boi>`` + image codes + ``<eoi>``
with ``prompt_len``. The prompt is ``tokens[:prompt_len]`` (a trailing ``<boi>`` dropped), the
target is the image codes after it (exactly ``image_tokens`` of them). Rows with identical prompts
form one prompt with several target images; prompts keep the order of their first row, and
``size`` keeps the first ``size`` of them.

**Sampling.** As the Chameleon / Anole reference samples images: ``do_sample=True``, temperature
0.7, top-p 0.9 (no top-k), under
:class:`~cl_platform.models.chameleon.ImageTokenConstraint`: ``<boi>`` is forced, then exactly
``image_tokens`` image codes, then ``<eoi>``. The reference's classifier-free guidance (text 3.0,
image 1.2, three forward passes per token) is not applied: ``generate`` samples the conditional
distribution only, the one continual learning changes. Each ``generate`` is an image-generation call
(:func:`cl_platform.mode.generating_image`): a MoDE model routed by ``sequence`` sends the prompt
to the visual LoRA too. Prompts of equal length are batched
(``batch_size`` per ``generate`` call, no padding); each call seeds torch with
``seed * 1_000_003 + index of its first prompt``, so a seed, the prompts and the sharding (rank,
world, batch size) fix the images on a given machine and library version.

**Codes.** BPE ids become VQ codes through the model's vocabulary mapping when its names are
upstream's ``IMGIMG*`` ones, else as offsets in the spec's image-code range
(:func:`~cl_platform.models.vqgan_decoder.image_tokens_to_codes`); target images are decoded and
embedded once per rank and cached (the decoder and CLIP do not change across rounds).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cl_platform.eval.probe import GenerationProbe, ProbeSpec
from cl_platform.mode import generating_image
from cl_platform.models.chameleon import ImageTokenConstraint
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.vqgan_decoder import VQGANDecoder, image_tokens_to_codes, load_vqgan_decoder
from cl_platform.store import Store

FACTORY = "cl_platform.eval.clip_probe:clip_alignment_probe"

#: Multiplier separating the seeds of successive ``generate`` calls.
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class ClipSampling:
    """How the probe samples images.

    Attributes:
        temperature: softmax temperature of the image tokens (the reference's 0.7).
        top_p: nucleus sampling mass (the reference's 0.9; 1.0 turns it off).
        samples_per_prompt: images sampled per prompt (each scored against all its targets).
        batch_size: prompts per ``generate`` call (prompts of equal length only).
    """

    temperature: float = 0.7
    top_p: float = 0.9
    samples_per_prompt: int = 1
    batch_size: int = 4

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"ClipSampling.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"ClipSampling.top_p must be in (0, 1], got {self.top_p}")
        for name in ("samples_per_prompt", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ClipSampling.{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromptImages:
    """One concept prompt and the image-token ids of its real target images.

    Attributes:
        prompt: prompt token ids (no trailing ``<boi>``).
        targets: per target image, its ``image_tokens`` image-code ids (no ``<boi>``/``<eoi>``).
    """

    prompt: tuple[int, ...]
    targets: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ClipAlignmentDetails:
    """Scores of the images one probe object scored in its latest :meth:`ClipAlignmentProbe.partial`.

    Attributes:
        mean: mean alignment (the rank's share of ``generation_score``; all of it with one worker).
        stderr: standard error of ``mean`` (``nan`` with fewer than two images).
        count: number of generated images scored.
        scores: each generated image's alignment, prompt-major.
    """

    mean: float
    stderr: float
    count: int
    scores: tuple[float, ...] = field(default=())


def mean_and_stderr(scores: Sequence[float]) -> tuple[float, float]:
    """``(mean, std(ddof=1) / sqrt(n))`` of ``scores``; ``(nan, nan)`` for none, stderr ``nan`` for one."""
    values = np.asarray(list(scores), dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    stderr = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
    return float(values.mean()), stderr


def alignment_scores(generated: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean cosine similarity of each generated embedding to its prompt's target embeddings.

    Args:
        generated: ``(N, D)`` embeddings of the generated images.
        targets: ``N`` tensors ``(k_i, D)``: the target embeddings of image ``i``'s prompt.

    Returns:
        ``(N,)`` float tensor in ``[-1, 1]``.
    """
    if len(targets) != generated.shape[0]:
        raise ValueError(f"alignment_scores: {generated.shape[0]} generated images but {len(targets)} target sets")
    g = F.normalize(generated.float(), dim=-1)
    return torch.stack([(F.normalize(t.float().to(g.device), dim=-1) @ g[i]).mean() for i, t in enumerate(targets)])


def group_prompts(rows: Sequence[tuple[Sequence[int], int]], spec: ModalitySpec, image_tokens: int,
                  *, what: str = "probe stream") -> list[PromptImages]:
    """Rows ``(tokens, prompt_len)`` grouped by identical prompt (see the module docstring).

    Raises:
        ValueError: a row whose target does not hold exactly ``image_tokens`` image codes, or an
            empty prompt (the message names the row).
    """
    lo, hi = spec.image_code_range
    order: list[tuple[int, ...]] = []
    targets: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for i, (tokens, plen) in enumerate(rows):
        tokens, plen = list(tokens), int(plen)
        prompt = tokens[:plen]
        if prompt and prompt[-1] == spec.boi_id:
            prompt = prompt[:-1]
        if not prompt:
            raise ValueError(f"{what}: row {i} has an empty prompt (prompt_len {plen})")
        codes = tuple(t for t in tokens[plen:] if lo <= t < hi)
        if len(codes) != image_tokens:
            raise ValueError(f"{what}: row {i} has {len(codes)} image codes after its prompt, expected {image_tokens}")
        key = tuple(prompt)
        if key not in targets:
            order.append(key)
            targets[key] = []
        targets[key].append(codes)
    return [PromptImages(prompt=p, targets=tuple(targets[p])) for p in order]


def code_mapping(model: torch.nn.Module, spec: ModalitySpec) -> Any:
    """What maps the model's image-token ids to VQ codes: its vocabulary mapping's ``bpe2img`` when
    the vocabulary names its codes ``IMGIMG*``, else ``spec`` (codes as offsets in its range)."""
    for module in model.modules():
        mapping = getattr(module, "vocabulary_mapping", None)
        bpe2img = getattr(mapping, "bpe2img", None) if mapping is not None else None
        if isinstance(bpe2img, Mapping) and bpe2img:
            return bpe2img
    return spec


@torch.no_grad()
def sample_image_tokens(model: torch.nn.Module, prompts: Sequence[Sequence[int]], spec: ModalitySpec,
                        image_tokens: int, sampling: ClipSampling, seed: int) -> torch.Tensor:
    """``(len(prompts) * samples_per_prompt, image_tokens)`` sampled image-code ids, prompt-major.

    Prompts are batched by length (no padding) in their given order; the global torch RNG is
    restored afterwards.
    """
    model.eval()
    device = next(model.parameters()).device
    out: list[Optional[torch.Tensor]] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    batches = [idx[s : s + sampling.batch_size] for idx in by_length.values()
               for s in range(0, len(idx), sampling.batch_size)]
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        for batch in sorted(batches):
            torch.manual_seed(int(seed) * SEED_STRIDE + batch[0])
            ids = torch.tensor([list(prompts[i]) for i in batch], dtype=torch.long, device=device)
            length = ids.shape[1]
            with generating_image(model):
                gen = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids),
                    logits_processor=[ImageTokenConstraint(spec, image_tokens, prompt_length=length, start_image=True)],
                    max_new_tokens=image_tokens + 2, eos_token_id=spec.eoi_id, pad_token_id=spec.pad_id,
                    do_sample=True, temperature=float(sampling.temperature), top_p=float(sampling.top_p), top_k=0,
                    num_return_sequences=int(sampling.samples_per_prompt), use_cache=True,
                )
            codes = gen[:, length + 1 : length + 1 + image_tokens].cpu().reshape(len(batch), sampling.samples_per_prompt, -1)
            for j, i in enumerate(batch):
                out[i] = codes[j]
    if not prompts:
        return torch.zeros((0, image_tokens), dtype=torch.long)
    return torch.cat([t for t in out if t is not None])


class ClipImageEmbedder:
    """Unit-norm CLIP image embeddings of uint8 images.

    Args:
        model: a ``transformers`` ``CLIPModel`` (only its vision tower and projection are used).
        processor: its ``CLIPImageProcessor`` (resize, centre crop, normalisation).
        batch_size: images per forward pass.
    """

    def __init__(self, model: Any, processor: Any, batch_size: int = 16) -> None:
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, device: torch.device) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 -> ``(B, D)`` float32 unit vectors (on the CPU)."""
        self.model.to(device)
        dtype = next(self.model.parameters()).dtype
        parts = []
        for s in range(0, len(images), self.batch_size):
            pixels = self.processor(images=list(images[s : s + self.batch_size]), return_tensors="pt")["pixel_values"]
            pooled = self.model.vision_model(pixel_values=pixels.to(device=device, dtype=dtype)).pooler_output
            parts.append(F.normalize(self.model.visual_projection(pooled).float(), dim=-1).cpu())
        return torch.cat(parts) if parts else torch.zeros((0, self.model.config.projection_dim))


class ClipAlignmentProbe(GenerationProbe):
    """``generation_score`` = mean CLIP image alignment of generated images to their prompts' targets (clipped at 0).

    Args:
        prompts: the probe's prompts and target images (:func:`group_prompts`).
        spec: the model's modality spec.
        decoder: the VQ-GAN decoder (codes -> pixels).
        embedder: the CLIP image embedder.
        image_tokens: codes per image (1,024 for Anole; the decoder's ``num_codes``).
        sampling: how images are sampled.
        seed: sampling seed.
    """

    def __init__(self, prompts: Sequence[PromptImages], spec: ModalitySpec, decoder: VQGANDecoder,
                 embedder: ClipImageEmbedder, *, image_tokens: int = 1024, sampling: ClipSampling = ClipSampling(),
                 seed: int = 0) -> None:
        if not prompts:
            raise ValueError("ClipAlignmentProbe: no prompts")
        if decoder.config.num_codes != image_tokens:
            raise ValueError(f"ClipAlignmentProbe: image_tokens {image_tokens} but the VQ-GAN decoder takes "
                             f"{decoder.config.num_codes} codes per image")
        self.prompts = list(prompts)
        self.spec, self.decoder, self.embedder = spec, decoder, embedder
        self.image_tokens, self.sampling, self.seed = int(image_tokens), sampling, int(seed)
        self._targets: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._last: ClipAlignmentDetails = ClipAlignmentDetails(math.nan, math.nan, 0)

    def _embed(self, token_ids: torch.Tensor, mapping: Any, device: torch.device, chunk: int = 32) -> torch.Tensor:
        """CLIP embeddings ``(N, D)`` of ``(N, image_tokens)`` image-code ids, decoded ``chunk`` images at a time."""
        codes = image_tokens_to_codes(token_ids, mapping)
        self.decoder.to(device)
        parts = [self.embedder(self.decoder.decode_uint8(codes[s : s + chunk].to(device),
                                                         batch_size=self.sampling.batch_size), device)
                 for s in range(0, codes.shape[0], chunk)]
        return torch.cat(parts)

    def _target_embeddings(self, shard: Sequence[PromptImages], key: tuple[int, int], mapping: Any,
                           device: torch.device) -> list[torch.Tensor]:
        """Per prompt of ``shard``, its targets' embeddings (cached per ``(rank, world)``)."""
        if key not in self._targets:
            ids = torch.tensor([t for p in shard for t in p.targets], dtype=torch.long)
            emb = self._embed(ids, mapping, device)
            self._targets[key] = list(torch.split(emb, [len(p.targets) for p in shard]))
        return self._targets[key]

    def partial(self, model: torch.nn.Module, rank: int, world: int) -> tuple[float, float]:
        """``(sum of this rank's image scores, number of images)``; see :meth:`details`."""
        shard = self.prompts[rank::world]
        if not shard:
            self._last = ClipAlignmentDetails(math.nan, math.nan, 0)
            return 0.0, 0.0
        device = next(model.parameters()).device
        mapping = code_mapping(model, self.spec)
        targets = self._target_embeddings(shard, (rank, world), mapping, device)
        tokens = sample_image_tokens(model, [p.prompt for p in shard], self.spec, self.image_tokens, self.sampling,
                                     self.seed * SEED_STRIDE + rank)
        generated = self._embed(tokens, mapping, device)
        per_image = [t for t in targets for _ in range(self.sampling.samples_per_prompt)]
        scores = alignment_scores(generated, per_image).tolist()
        mean, stderr = mean_and_stderr(scores)
        self._last = ClipAlignmentDetails(mean, stderr, len(scores), tuple(scores))
        return float(sum(scores)), float(len(scores))

    def score(self, numerator: float, denominator: float) -> float:
        """Mean alignment clipped at 0, so in ``[0, 1]`` (0 for no images)."""
        return max(0.0, numerator / denominator) if denominator else 0.0

    def details(self) -> ClipAlignmentDetails:
        """Mean, standard error and per-image scores of the latest :meth:`partial` (this rank's share)."""
        return self._last


# ----------------------------------------------------------------------------------- factory


def local_path(store: Store, location: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local file or directory for ``location``: a URI (``file://`` used in place, others
    downloaded), an existing local path, or else a path inside ``store`` (downloaded unless local)."""
    text = os.fspath(location)
    if "://" not in text:
        if Path(text).exists():
            return Path(text)
        text = store.uri(text)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    parent, _, name = text.rstrip("/").rpartition("/")
    if "://" not in parent or not name:
        raise ValueError(f"{location!r}: expected <store URL>/<path>")
    remote = Store(parent)
    target = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="cl_probe_"))
    if remote.is_dir(name):
        remote.get_dir(name, target / name)
    else:
        target.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(remote.read_bytes(name))
    return target / name


def load_clip(location: str | os.PathLike) -> tuple[Any, Any]:
    """``(CLIPModel, CLIPImageProcessor)`` of a local ``save_pretrained`` directory (nothing downloaded)."""
    from transformers import CLIPImageProcessor, CLIPModel

    path = Path(location)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"CLIP model {os.fspath(location)!r}: no config.json (a save_pretrained directory "
                                "of a CLIPModel, e.g. OpenAI CLIP ViT-B/32)")
    model = CLIPModel.from_pretrained(str(path), local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(str(path), local_files_only=True)
    return model.eval(), processor


def read_probe_rows(store: Store, stream: str, spec: ModalitySpec) -> list[tuple[list[int], int]]:
    """``(tokens, prompt_len)`` rows of ``streams/<stream>``, read and validated exactly as the
    image-likelihood probe reads its stream."""
    from cl_platform.eval.likelihood import image_likelihood_probe

    return image_likelihood_probe(store=store, spec=spec, seed=0, stream=stream).rows


def clip_alignment_probe(*, store: Store, spec: ModalitySpec, seed: int, stream: str, clip_model: str, vqgan: str,
                         size: Optional[int] = None, image_tokens: int = 1024, sampling_seed: Optional[int] = None,
                         temperature: float = 0.7, top_p: float = 0.9, samples_per_prompt: int = 1,
                         batch_size: int = 4, cache_dir: Optional[str] = None) -> ClipAlignmentProbe:
    """Factory of :class:`ClipAlignmentProbe` (what a :class:`ProbeSpec` names).

    Args:
        store / spec / seed: the run's store, modality spec and seed (``seed`` samples the images
            unless ``sampling_seed`` is given).
        stream: the generation stream of concept prompts and target images (``streams/<stream>``).
        clip_model: a CLIP ``save_pretrained`` directory: a local path, a URI, or a path in the store.
        vqgan: the VQ-GAN: an Anole checkpoint directory (``tokenizer/vqgan.ckpt`` + ``vqgan.yaml``),
            a ``.ckpt`` or a ``.safetensors`` file; local, a URI, or a path in the store.
        size: keep the first ``size`` prompts (``None``: all).
        image_tokens: codes per image (1,024 for Anole).
        temperature / top_p / samples_per_prompt / batch_size: :class:`ClipSampling`.
        cache_dir: where remote models are downloaded (a fresh temporary directory when ``None``).
    """
    sampling = ClipSampling(temperature=temperature, top_p=top_p, samples_per_prompt=samples_per_prompt,
                            batch_size=batch_size)
    prompts = group_prompts(read_probe_rows(store, stream, spec), spec, int(image_tokens), what=f"probe stream {stream!r}")
    if size is not None:
        prompts = prompts[: int(size)]
    decoder = load_vqgan_decoder(local_path(store, vqgan, cache_dir))
    embedder = ClipImageEmbedder(*load_clip(local_path(store, clip_model, cache_dir)))
    return ClipAlignmentProbe(prompts, spec, decoder, embedder, image_tokens=int(image_tokens), sampling=sampling,
                              seed=seed if sampling_seed is None else int(sampling_seed))


def clip_alignment_spec(stream: str, clip_model: str, vqgan: str, *, size: Optional[int] = None,
                        image_tokens: int = 1024, seed: Optional[int] = None, **sampling: Any) -> ProbeSpec:
    """The :class:`ProbeSpec` of the CLIP alignment probe (arguments as :func:`clip_alignment_probe`;
    ``seed`` fixes the sampling seed, else the run's seed is used; ``sampling``: ``temperature``,
    ``top_p``, ``samples_per_prompt``, ``batch_size``, ``cache_dir``)."""
    allowed = {"temperature", "top_p", "samples_per_prompt", "batch_size", "cache_dir"}
    unknown = set(sampling) - allowed
    if unknown:
        raise ValueError(f"clip_alignment_spec: unknown option(s) {sorted(unknown)}; known: {sorted(allowed)}")
    params: dict[str, Any] = {"stream": stream, "clip_model": str(clip_model), "vqgan": str(vqgan),
                              "image_tokens": int(image_tokens), **sampling}
    if size is not None:
        params["size"] = int(size)
    if seed is not None:
        params["sampling_seed"] = int(seed)
    what = "all" if size is None else f"{int(size)}"
    return ProbeSpec(factory=FACTORY, params=params,
                     description=f"CLIP image alignment of images generated for {what} prompts of stream '{stream}' "
                                 "(mean cosine to the prompt's target images)")


__all__ = [
    "ClipAlignmentDetails",
    "ClipAlignmentProbe",
    "ClipImageEmbedder",
    "ClipSampling",
    "FACTORY",
    "PromptImages",
    "alignment_scores",
    "clip_alignment_probe",
    "clip_alignment_spec",
    "code_mapping",
    "group_prompts",
    "load_clip",
    "local_path",
    "mean_and_stderr",
    "read_probe_rows",
    "sample_image_tokens",
]
