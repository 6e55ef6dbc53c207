"""Upstream Chameleon masks ``IMGIMG*`` ids out of the logits; ``allow_image_generation`` lifts it."""

import pytest
import torch
from transformers import ChameleonForConditionalGeneration
from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

from cl_platform.models.chameleon import (
    ImageTokenConstraint,
    allow_image_generation,
    chameleon_image_token_name,
    image_generation_allowed,
    load_model,
    masked_image_token_ids,
)
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.tiny import TinyModelConfig, chameleon_config

# 0 pad, 1 <s>, 2 </s>, 3 <sep>, 4..19 image codes 0..15 (upstream names), 20 eoi, 21 boi, 22.. words
SPEC = ModalitySpec(spec_id="imgimg-test", vocab_size=32, image_code_range=(4, 20), boi_id=21, eoi_id=20, pad_id=0, sep_id=3)
IMAGE_IDS = list(range(4, 20))
PREFERRED = 10  # the image id the LM head prefers


def upstream_vocabulary_map() -> dict[str, int]:
    vmap = {"<pad>": 0, "<s>": 1, "</s>": 2, "<sep>": 3, "<eoss>": 20, "<racm3:break>": 21}
    vmap.update({chameleon_image_token_name(code): 4 + code for code in range(16)})
    vmap.update({f"word{i}": i for i in range(22, 32)})
    return vmap


def upstream_model() -> ChameleonForConditionalGeneration:
    """A tiny Chameleon as transformers builds it (mask in place) whose LM head strongly prefers one image id.

    Attention and MLP outputs are zeroed and every embedding is the same vector, so the final hidden
    state is constant and the logits are exactly the LM head rows summed: 0 everywhere, 640 for
    ``PREFERRED``.
    """
    config = chameleon_config(SPEC, TinyModelConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=128), vocabulary_map=upstream_vocabulary_map())
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[PREFERRED] = 10.0
    return model


def test_names_decode_like_upstream():
    assert chameleon_image_token_name(0) == "IMGIMGAZ"
    assert chameleon_image_token_name(127) == "IMGIMGBCHZ"
    upstream = ChameleonImageVocabularyMapping(upstream_vocabulary_map())
    assert upstream.image_tokens == IMAGE_IDS
    assert upstream.bpe2img == {4 + code: code for code in range(16)}


def greedy(model, n=5):
    prompt = torch.tensor([[1, 22, 23, 3]])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


def test_upstream_mask_blocks_image_tokens_and_lift_restores_them():
    model = upstream_model()
    assert masked_image_token_ids(model) == IMAGE_IDS
    assert not image_generation_allowed(model)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 22]])).logits[0, -1]
    assert logits[PREFERRED] == torch.finfo(logits.dtype).min  # preferred by the head, masked by upstream
    generated = greedy(model)
    assert not set(generated) & set(IMAGE_IDS), generated

    assert allow_image_generation(model) is model
    allow_image_generation(model)  # idempotent
    assert masked_image_token_ids(model) == []
    assert image_generation_allowed(model)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 22]])).logits[0, -1]
    assert logits[PREFERRED] == pytest.approx(640.0, rel=1e-3)
    assert greedy(model) == [PREFERRED] * 5


def test_lift_keeps_image_reading_mapping():
    model = allow_image_generation(upstream_model())
    mapping = model.model.vocabulary_mapping
    assert mapping.image_code_ids == IMAGE_IDS
    assert mapping.bpe2img == {4 + code: code for code in range(16)}
    assert mapping.convert_img2bpe(torch.tensor([[0, 15, 3]])).tolist() == [[4, 19, 7]]


def test_lift_makes_image_labels_learnable():
    model = upstream_model()
    ids = torch.tensor([[1, 22, 3, 21, PREFERRED - 1]])
    with torch.no_grad():
        masked_loss = model(ids, labels=ids).loss.item()
        allow_image_generation(model)
        lifted_loss = model(ids, labels=ids).loss.item()
    assert masked_loss > 1e30
    assert lifted_loss < 1e4


def test_load_model_reapplies_the_lift(tmp_path):
    model = allow_image_generation(upstream_model())
    model.save_pretrained(tmp_path / "m")
    plain = ChameleonForConditionalGeneration.from_pretrained(tmp_path / "m")
    assert masked_image_token_ids(plain) == IMAGE_IDS  # a plain load masks again
    loaded = load_model(tmp_path / "m")
    assert image_generation_allowed(loaded) and not loaded.training
    assert greedy(loaded) == [PREFERRED] * 5
    assert masked_image_token_ids(load_model(f"file://{tmp_path / 'm'}", allow_images=False)) == IMAGE_IDS
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "missing")


def test_constraint_keeps_images_well_formed():
    """Even a head that prefers one image code everywhere yields <boi> + N codes + <eoi> + </s>."""
    model = allow_image_generation(upstream_model())
    prompt = torch.tensor([[1, 22, 23, 3]])
    constraint = ImageTokenConstraint(SPEC, num_codes=6, prompt_length=4, start_image=True, end_after_image=True, eos_token_id=2)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=10, do_sample=False, logits_processor=[constraint], eos_token_id=2, pad_token_id=0)
    assert out[0, 4:].tolist() == [21] + [PREFERRED] * 6 + [20, 2]


def test_constraint_forbids_codes_outside_images():
    constraint = ImageTokenConstraint(SPEC, num_codes=3)
    scores = torch.zeros(3, 32)
    ids = torch.tensor([
        [1, 22, 3, 22, 23, 24],  # outside an image: no codes, no eoi
        [0, 1, 21, 5, 6, 7],     # 3 codes since <boi>: only eoi
        [1, 21, 5, 20, 21, 9],   # second image open with 1 code: only codes
    ])
    out = constraint(ids, scores)
    allowed = [set(torch.nonzero(row > float("-inf")).flatten().tolist()) for row in out]
    assert allowed[0] == set(range(32)) - set(IMAGE_IDS) - {20}
    assert allowed[1] == {20}
    assert allowed[2] == set(IMAGE_IDS)
