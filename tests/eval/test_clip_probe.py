"""The CLIP image-alignment probe: known answers, grouping, seeded sampling, and the probe end to end on a tiny Chameleon."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from cl_platform.data.task_format import write_stream
from cl_platform.eval.clip_probe import (
    FACTORY,
    ClipAlignmentProbe,
    ClipImageEmbedder,
    ClipSampling,
    PromptImages,
    alignment_scores,
    clip_alignment_spec,
    code_mapping,
    group_prompts,
    mean_and_stderr,
    sample_image_tokens,
)
from cl_platform.eval.probe import build_probe
from cl_platform.models.chameleon import chameleon_image_token_name
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.tiny import TinyModelConfig, build_tiny_model
from cl_platform.models.vqgan_decoder import VQGANDecoder, VQGANDecoderConfig
from cl_platform.store import Store

# vocabulary of 80: pad 0, sep 1, eos 2, text 3..9, image codes 10..73 (64 VQ codes), eoi 74, boi 75; 4x4 latents
SPEC = ModalitySpec(spec_id="cliptest", vocab_size=80, image_code_range=(10, 74), boi_id=75, eoi_id=74, pad_id=0,
                    sep_id=1, eos_id=2)
CODES = 16
DECODER = VQGANDecoderConfig(embed_dim=8, n_embed=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                             resolution=8)
SMALL = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
FAST = ClipSampling(samples_per_prompt=2, batch_size=4)


def target(seed: int) -> list[int]:
    return torch.randint(10, 74, (CODES,), generator=torch.Generator().manual_seed(seed)).tolist()


# prompt [3, 4] has two target images, prompt [5, 6, 7] one; prompt_len includes <boi> in one row only
ROWS = [([3, 4, 75] + target(1) + [74], 3), ([3, 4, 75] + target(2) + [74], 2), ([5, 6, 7, 75] + target(3) + [74], 3)]


def tiny_clip() -> tuple[CLIPModel, CLIPImageProcessor]:
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPModel(cfg).eval(), processor


def tiny_decoder() -> VQGANDecoder:
    torch.manual_seed(1)
    return VQGANDecoder(DECODER).eval()


def tiny_probe(seed: int = 0, sampling: ClipSampling = FAST) -> ClipAlignmentProbe:
    return ClipAlignmentProbe(group_prompts(ROWS, SPEC, CODES), SPEC, tiny_decoder(), ClipImageEmbedder(*tiny_clip()),
                              image_tokens=CODES, sampling=sampling, seed=seed)


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(SPEC, SMALL, seed=0).eval()


def test_alignment_scores_known_answers():
    e = torch.eye(3)
    scores = alignment_scores(torch.stack([e[0], e[0] + e[1]]), [e[:1], torch.stack([e[0], e[2]])])
    assert scores.tolist() == pytest.approx([1.0, 0.5 * math.sqrt(0.5)])
    assert float(alignment_scores(-e[:1], [e[:1]])[0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="2 generated images but 1 target sets"):
        alignment_scores(e[:2], [e[:1]])


def test_mean_and_stderr():
    mean, se = mean_and_stderr([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert math.isnan(mean_and_stderr([0.5])[1]) and math.isnan(mean_and_stderr([])[0])


def test_identical_images_score_one_and_different_images_less():
    embedder, decoder = ClipImageEmbedder(*tiny_clip()), tiny_decoder()
    pixels = decoder.decode_uint8(torch.tensor([target(1), target(1), target(9)]) - 10)
    emb = embedder(pixels, torch.device("cpu"))
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    same, other = alignment_scores(emb[:2], [emb[1:2], emb[2:3]]).tolist()
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other < 1.0 - 1e-4


def test_group_prompts_by_identical_prompt():
    prompts = group_prompts(ROWS, SPEC, CODES)
    assert [p.prompt for p in prompts] == [(3, 4), (5, 6, 7)]
    assert [len(p.targets) for p in prompts] == [2, 1]
    assert list(prompts[0].targets[1]) == target(2)
    with pytest.raises(ValueError, match="row 0 has 15 image codes after its prompt, expected 16"):
        group_prompts([([3, 75] + target(1)[:15] + [74], 2)], SPEC, CODES)
    with pytest.raises(ValueError, match="row 0 has an empty prompt"):
        group_prompts([([75] + target(1) + [74], 1)], SPEC, CODES)


def test_sampling_is_seeded_and_well_formed(model):
    prompts = [(3, 4), (5, 6), (3, 5)]
    a = sample_image_tokens(model, prompts, SPEC, CODES, FAST, seed=7)
    b = sample_image_tokens(model, prompts, SPEC, CODES, FAST, seed=7)
    c = sample_image_tokens(model, prompts, SPEC, CODES, FAST, seed=8)
    assert a.shape == (6, CODES)
    assert bool(((a >= 10) & (a < 74)).all())
    assert torch.equal(a, b) and not torch.equal(a, c)


class Copycat(torch.nn.Module):
    """A "model" whose generation draws exactly the first target image of each prompt."""

    def __init__(self, prompts: list[PromptImages]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.answers = {p.prompt: list(p.targets[0]) for p in prompts}

    def generate(self, input_ids, num_return_sequences=1, **kwargs):
        rows = [row + [SPEC.boi_id] + self.answers[tuple(row)] + [SPEC.eoi_id] for row in input_ids.tolist()]
        return torch.tensor(rows).repeat_interleave(num_return_sequences, dim=0)


def test_a_model_drawing_the_target_scores_one():
    single = [PromptImages(prompt=p.prompt, targets=p.targets[:1]) for p in group_prompts(ROWS, SPEC, CODES)]
    probe = ClipAlignmentProbe(single, SPEC, tiny_decoder(), ClipImageEmbedder(*tiny_clip()), image_tokens=CODES,
                               sampling=FAST)
    num, den = probe.partial(Copycat(single), 0, 1)
    assert den == 4 and probe.score(num, den) == pytest.approx(1.0, abs=1e-5)
    assert probe.details().stderr == pytest.approx(0.0, abs=1e-5)
    assert probe.score(-1.0, 2.0) == 0.0 and probe.score(0.0, 0.0) == 0.0  # results hold fractions in [0, 1]


def test_probe_scores_and_standard_error(model):
    probe = tiny_probe(seed=3)
    num, den = probe.partial(model, 0, 1)
    score = probe.score(num, den)
    details = probe.details()
    assert den == 4  # 2 prompts x 2 samples
    assert -1.0 <= score <= 1.0
    assert details.count == den and details.mean == pytest.approx(score)
    assert details.stderr >= 0 and math.isfinite(details.stderr)
    again = tiny_probe(seed=3)
    assert again.score(*again.partial(model, 0, 1)) == score
    assert probe.score(*probe.partial(model, 0, 1)) == score  # cached targets, same images


def test_shards_sum_to_the_whole(model):
    probe = tiny_probe()
    parts = [probe.partial(model, r, 2) for r in range(2)]
    assert sum(p[1] for p in parts) == probe.partial(model, 0, 1)[1]
    assert probe.partial(model, 5, 8) == (0.0, 0.0)


def test_decoder_and_image_tokens_must_agree():
    with pytest.raises(ValueError, match="image_tokens 1024 but the VQ-GAN decoder takes 16"):
        ClipAlignmentProbe(group_prompts(ROWS, SPEC, CODES), SPEC, tiny_decoder(), ClipImageEmbedder(*tiny_clip()),
                           image_tokens=1024)


def test_code_mapping_follows_imgimg_names():
    vocab = {"<pad>": 0, **{chameleon_image_token_name(c): 10 + c for c in range(64)}}
    named = build_tiny_model(SPEC, SMALL, vocabulary_map=vocab, seed=0)
    assert code_mapping(named, SPEC)[10 + 5] == 5
    assert code_mapping(build_tiny_model(SPEC, SMALL, seed=0), SPEC) is SPEC


def test_spec_builds_the_probe_from_the_store(tmp_path, model):
    store = Store(f"file://{tmp_path}/store")
    write_stream(store, "concepts", {"tokens": [t for t, _ in ROWS], "prompt_len": [p for _, p in ROWS]},
                 spec_id=SPEC.spec_id, vocab_size=SPEC.vocab_size)
    clip, processor = tiny_clip()
    clip.save_pretrained(tmp_path / "store" / "models" / "clip")
    processor.save_pretrained(tmp_path / "store" / "models" / "clip")
    (tmp_path / "ckpt" / "tokenizer").mkdir(parents=True)
    torch.save({"state_dict": tiny_decoder().state_dict()}, tmp_path / "ckpt" / "tokenizer" / "vqgan.ckpt")
    (tmp_path / "ckpt" / "tokenizer" / "vqgan.yaml").write_text(
        "model:\n  params:\n    embed_dim: 8\n    n_embed: 64\n    ddconfig:\n      z_channels: 8\n      ch: 32\n"
        "      ch_mult: [1, 2]\n      num_res_blocks: 1\n      attn_resolutions: []\n      resolution: 8\n")

    spec = clip_alignment_spec("concepts", "models/clip", str(tmp_path / "ckpt"), size=1, image_tokens=CODES, seed=4,
                               samples_per_prompt=2)
    assert spec.factory == FACTORY and spec.params["sampling_seed"] == 4 and "1 prompts" in spec.description
    probe = build_probe(spec.to_dict(), store, SPEC, seed=0)
    assert isinstance(probe, ClipAlignmentProbe) and probe.seed == 4 and len(probe.prompts) == 1
    num, den = probe.partial(model, 0, 1)
    assert den == 2 and -1.0 <= probe.score(num, den) <= 1.0
    with pytest.raises(ValueError, match="unknown option"):
        clip_alignment_spec("concepts", "c", "v", top_k=3)


def test_the_tasks_suite_selects_it_from_the_environment(monkeypatch, tmp_path):
    from cl_platform.suites.base import RunRequest
    from cl_platform.suites.store_tasks import StoreTasks, clip_probe_from_env_or_args

    store, request = Store(f"file://{tmp_path}/store"), RunRequest(tasks=["a"], probe_stream="concepts", probe_size=3)
    monkeypatch.delenv("CL_CLIP_PROBE_MODEL", raising=False)
    monkeypatch.delenv("CL_CLIP_PROBE_VQGAN", raising=False)
    assert "likelihood" in StoreTasks().resolve_probe(store, request, SPEC, print).factory
    monkeypatch.setenv("CL_CLIP_PROBE_MODEL", "models/clip")
    with pytest.raises(ValueError, match="CL_CLIP_PROBE_VQGAN is not set"):
        StoreTasks().resolve_probe(store, request, SPEC, print)
    monkeypatch.setenv("CL_CLIP_PROBE_VQGAN", "s3://bucket/anole")
    monkeypatch.setenv("CL_CLIP_PROBE_SAMPLES", "2")
    probe = StoreTasks().resolve_probe(store, request, SPEC, print)
    assert probe.factory == FACTORY
    assert probe.params == {"stream": "concepts", "clip_model": "models/clip", "vqgan": "s3://bucket/anole",
                            "image_tokens": 1024, "samples_per_prompt": 2, "size": 3}
    assert clip_probe_from_env_or_args("s", clip_model="c", vqgan="v", env={}).params["clip_model"] == "c"
    assert clip_probe_from_env_or_args("s", env={}) is None
    with pytest.raises(ValueError, match="CL_CLIP_PROBE_BATCH='x'"):
        clip_probe_from_env_or_args("s", env={"CL_CLIP_PROBE_MODEL": "c", "CL_CLIP_PROBE_VQGAN": "v",
                                              "CL_CLIP_PROBE_BATCH": "x"})


def test_local_path_of_store_paths_and_uris(store, tmp_path):
    from cl_platform.eval.clip_probe import local_path

    store.write_bytes("models/clip/config.json", b"{}")
    store.write_bytes("models/vqgan.safetensors", b"weights")
    cache = tmp_path / "cache"
    folder = local_path(store, "models/clip", cache)
    assert (folder / "config.json").read_bytes() == b"{}"
    assert local_path(store, store.uri("models/vqgan.safetensors"), cache).read_bytes() == b"weights"
    assert local_path(store, str(folder), cache) == folder  # an existing local path is used as it is
