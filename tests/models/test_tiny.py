"""The tiny Chameleon factory: builds offline, MLP names MoDE targets, spec ids in the config."""

import pytest
import torch
from transformers import ChameleonForConditionalGeneration

from cl_platform.models.chameleon import image_generation_allowed, modality_spec_of
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.tiny import (
    MLP_MODULE_NAMES,
    TinyModelConfig,
    build_tiny_model,
    count_parameters,
    mlp_module_names,
)

SPEC = ModalitySpec(spec_id="tiny-test", vocab_size=48, image_code_range=(6, 23), boi_id=4, eoi_id=5, pad_id=0, sep_id=3)
SMALL = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)


def test_builds_with_spec_ids_in_config():
    model = build_tiny_model(SPEC, SMALL, seed=0)
    assert isinstance(model, ChameleonForConditionalGeneration)
    cfg = model.config
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (48, 0, 1, 2)
    assert (cfg.boi_token_id, cfg.eoi_token_id, cfg.sep_token_id) == (4, 5, 3)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (32, 2, 64)
    assert modality_spec_of(model) == SPEC
    assert cfg.vocabulary_map["<boi>"] == 4 and cfg.vocabulary_map["<img_16>"] == 22
    assert image_generation_allowed(model)
    assert model.get_input_embeddings().weight.shape == (48, 32)


def test_mlp_module_names_are_what_mode_targets():
    model = build_tiny_model(SPEC, SMALL, seed=0)
    names = mlp_module_names(model)
    assert len(names) == 3 * SMALL.num_hidden_layers
    assert {n.rsplit(".", 1)[-1] for n in names} == set(MLP_MODULE_NAMES)
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in names)
    assert model.get_submodule("model.layers.0.mlp.gate_proj").out_features == 64
    assert model.get_submodule("model.layers.0.mlp.down_proj").in_features == 64


def test_forward_shape_and_seeded_init():
    a = build_tiny_model(SPEC, SMALL, seed=1)
    b = build_tiny_model(SPEC, SMALL, seed=1)
    ids = torch.randint(0, 48, (3, 11))
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert la.shape == (3, 11, 48)
    assert torch.equal(la, lb)
    assert count_parameters(a) < count_parameters(a, exclude_vq=False)
    assert not any(p.requires_grad for p in a.model.vqmodel.parameters())


def test_save_and_reload_keeps_layout(tmp_path):
    from cl_platform.models.chameleon import load_model

    model = build_tiny_model(SPEC, SMALL, seed=0)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_model(tmp_path)
    assert modality_spec_of(loaded) == SPEC and loaded.config.boi_token_id == 4
    ids = torch.randint(0, 48, (1, 7))
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "divisible"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TinyModelConfig(**kwargs)


def test_vocabulary_map_outside_vocab_is_rejected():
    with pytest.raises(ValueError, match="vocabulary_map"):
        build_tiny_model(SPEC, SMALL, vocabulary_map={"<x>": 99})
