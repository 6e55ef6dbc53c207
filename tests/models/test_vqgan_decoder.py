"""The VQ-GAN decoder: shapes, range, determinism, the released checkpoint's key names, loading errors, token -> code maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cl_platform.models.chameleon import ImageGenerationVocabularyMapping, chameleon_image_token_name
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.vqgan_decoder import (
    VQGANDecoder,
    VQGANDecoderConfig,
    image_tokens_to_codes,
    load_vqgan_decoder,
    to_pil,
    to_uint8,
)

TINY = VQGANDecoderConfig(embed_dim=8, n_embed=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(16,), resolution=16)

TINY_YAML = """\
model:
  base_learning_rate: 4.5e-06
  target: some.trainer.VQModel
  params:
    embed_dim: 8
    n_embed: 64
    ddconfig:
      double_z: false
      z_channels: 8
      resolution: 16
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2]
      num_res_blocks: 1
      attn_resolutions: [16]
      dropout: 0.0
    lossconfig:
      target: some.loss
"""


def tiny_decoder(seed: int = 0) -> VQGANDecoder:
    torch.manual_seed(seed)
    return VQGANDecoder(TINY).eval()


def released_keys_state(model: VQGANDecoder) -> dict[str, torch.Tensor]:
    """A whole VQ-GAN checkpoint as released: the decoder's keys plus encoder/quant_conv keys the loader must drop."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["encoder.conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    state["quant_conv.weight"] = torch.zeros(8, 8, 1, 1)
    state["loss.discriminator.main.0.weight"] = torch.zeros(1)
    return state


def test_default_config_is_anoles_tokenizer():
    cfg = VQGANDecoderConfig()
    assert (cfg.resolution, cfg.latent_size, cfg.num_codes, cfg.n_embed, cfg.embed_dim) == (512, 32, 1024, 8192, 256)
    assert cfg.ch_mult == (1, 1, 2, 2, 4) and cfg.out_ch == 3


def test_config_from_yaml_and_from_transformers_vq_config(tmp_path):
    path = tmp_path / "vqgan.yaml"
    path.write_text(TINY_YAML)
    assert VQGANDecoderConfig.from_vqgan_yaml(path) == TINY
    from transformers.models.chameleon.configuration_chameleon import ChameleonVQVAEConfig

    assert VQGANDecoderConfig.from_vq_config(ChameleonVQVAEConfig()) == VQGANDecoderConfig()
    with pytest.raises(ValueError, match="model.params"):
        (tmp_path / "bad.yaml").write_text("model: {params: {}}\n")
        VQGANDecoderConfig.from_vqgan_yaml(tmp_path / "bad.yaml")


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="num_groups"):
        VQGANDecoderConfig(ch=16, ch_mult=(1, 2))
    with pytest.raises(ValueError, match="resolution"):
        VQGANDecoderConfig(resolution=500)


def test_state_dict_has_the_released_key_names():
    keys = set(VQGANDecoder(VQGANDecoderConfig()).state_dict())
    for key in ("quantize.embedding.weight", "post_quant_conv.weight", "decoder.conv_in.weight",
                "decoder.mid.block_1.conv1.weight", "decoder.mid.attn_1.q.weight", "decoder.mid.block_2.norm2.bias",
                "decoder.up.0.block.2.conv2.weight", "decoder.up.3.block.0.nin_shortcut.weight",
                "decoder.up.4.upsample.conv.weight", "decoder.norm_out.weight", "decoder.conv_out.bias"):
        assert key in keys, key
    assert "decoder.up.0.upsample.conv.weight" not in keys  # the finest level does not upsample
    assert not any(k.startswith(("encoder.", "quant_conv.")) for k in keys)
    assert VQGANDecoder(VQGANDecoderConfig()).decoder.up[3].block[0].nin_shortcut.in_channels == 512


def test_decode_shapes_range_and_uint8():
    model = tiny_decoder()
    codes = torch.randint(0, 64, (3, 64))
    images = model.decode(codes)
    assert images.shape == (3, 3, 16, 16)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    as_grid = model.decode(codes.reshape(3, 8, 8))
    assert torch.equal(images, as_grid)
    pixels = model.decode_uint8(codes, batch_size=2)
    assert pixels.shape == (3, 16, 16, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, to_uint8(images))
    assert to_pil(images)[0].size == (16, 16)
    assert np.array_equal(to_uint8(torch.tensor([[[[-2.0, -1.0], [1.0, 3.0]]]])).squeeze(), [[0, 0], [255, 255]])


def test_decode_is_deterministic_and_codes_matter():
    a, b = tiny_decoder(3), tiny_decoder(3)
    codes = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.decode(codes), b.decode(codes))
    assert not torch.equal(a.decode(codes[:1]), a.decode(codes[1:]))


def test_decode_rejects_bad_codes():
    model = tiny_decoder()
    with pytest.raises(ValueError, match=r"\(B, 64\)"):
        model.decode(torch.zeros(1, 63, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 64), 64))


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors", "dir"])
def test_loads_released_key_names(tmp_path, fmt):
    source = tiny_decoder(5)
    state = released_keys_state(source)
    if fmt == "safetensors":
        path = tmp_path / "vqgan.safetensors"
        save_file(state, str(path))
        loaded = load_vqgan_decoder(path, TINY)
    elif fmt == "ckpt":
        path = tmp_path / "vqgan.ckpt"
        torch.save({"state_dict": state, "global_step": 7}, path)
        loaded = load_vqgan_decoder(path, TINY)
    else:  # a checkpoint directory: tokenizer/vqgan.ckpt + tokenizer/vqgan.yaml, config read from the yaml
        (tmp_path / "tokenizer").mkdir()
        torch.save({"state_dict": state}, tmp_path / "tokenizer" / "vqgan.ckpt")
        (tmp_path / "tokenizer" / "vqgan.yaml").write_text(TINY_YAML)
        loaded = load_vqgan_decoder(tmp_path)
        assert loaded.config == TINY
    codes = torch.randint(0, 64, (2, 64))
    assert torch.equal(loaded.decode(codes), source.decode(codes))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_loads_keys_under_a_wrapping_prefix(tmp_path):
    source = tiny_decoder(6)
    path = tmp_path / "wrapped.safetensors"
    save_file({f"model.vqmodel.{k}": v for k, v in released_keys_state(source).items()}, str(path))
    codes = torch.randint(0, 64, (1, 64))
    assert torch.equal(load_vqgan_decoder(path, TINY).decode(codes), source.decode(codes))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = released_keys_state(tiny_decoder())
    del state["decoder.conv_out.weight"]
    state["decoder.up.9.block.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"missing \[decoder.conv_out.weight\].*unexpected \[decoder.up.9"):
        load_vqgan_decoder(path, TINY)


def test_wrong_shapes_are_a_clear_error(tmp_path):
    path = tmp_path / "big.safetensors"
    save_file(released_keys_state(tiny_decoder()), str(path))
    with pytest.raises(ValueError, match="do not match the decoder architecture"):
        load_vqgan_decoder(path, VQGANDecoderConfig(embed_dim=8, n_embed=128, z_channels=8, ch=32, ch_mult=(1, 2),
                                                    num_res_blocks=1, attn_resolutions=(16,), resolution=16))


class Payload:
    """Any object that only full unpickling can rebuild."""


def test_a_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": released_keys_state(tiny_decoder()), "hparams": Payload()}, path)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_vqgan_decoder(path, TINY)


def test_unreadable_and_absent_files(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        load_vqgan_decoder(tmp_path / "junk.ckpt", TINY)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_vqgan_decoder(tmp_path / "nowhere", TINY)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer/vqgan.ckpt"):
        load_vqgan_decoder(tmp_path / "empty_dir", TINY)


SPEC = ModalitySpec(spec_id="t", vocab_size=80, image_code_range=(10, 74), boi_id=74, eoi_id=75, pad_id=0, sep_id=1)


def test_image_tokens_to_codes_from_a_spec():
    ids = torch.tensor([[10, 11, 73], [40, 10, 12]])
    assert image_tokens_to_codes(ids, SPEC).tolist() == [[0, 1, 63], [30, 0, 2]]
    with pytest.raises(ValueError, match="id 74 is not an image code"):
        image_tokens_to_codes([10, 74], SPEC)


def test_image_tokens_to_codes_from_imgimg_names():
    # IMGIMG names given to ids in an order that is not the codes' order (as in a real vocabulary)
    codes = [3, 0, 2, 1]
    vocab = {"<pad>": 0, **{chameleon_image_token_name(c): 5 + i for i, c in enumerate(codes)}}
    mapping = ImageGenerationVocabularyMapping(vocab)
    assert image_tokens_to_codes(torch.tensor([5, 6, 7, 8]), mapping).tolist() == codes
    assert image_tokens_to_codes([8, 5], {8: 1, 5: 3}).tolist() == [1, 3]
    with pytest.raises(ValueError, match="id 0 is not an image code"):
        image_tokens_to_codes([0], mapping)
    with pytest.raises(ValueError, match="id 99 is not an image code"):
        image_tokens_to_codes([99], mapping)


def test_a_directory_prefers_the_safetensors_conversion(tmp_path):
    source = tiny_decoder(8)
    (tmp_path / "tokenizer").mkdir()
    torch.save({"state_dict": released_keys_state(source), "hparams": Payload()}, tmp_path / "tokenizer" / "vqgan.ckpt")
    save_file(released_keys_state(source), str(tmp_path / "tokenizer" / "vqgan.safetensors"))
    (tmp_path / "tokenizer" / "vqgan.yaml").write_text(TINY_YAML)
    codes = torch.randint(0, 64, (1, 64))
    assert torch.equal(load_vqgan_decoder(tmp_path).decode(codes), source.decode(codes))
