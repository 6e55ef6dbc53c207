"""Tiny transformers causal LMs (Llama and Chameleon architectures) for the MoDE tests."""

import pytest
import torch
from transformers import ChameleonConfig, ChameleonForConditionalGeneration, LlamaConfig, LlamaForCausalLM

VOCAB = 80
IMAGE_RANGES = [[40, 72]]  # image codes 40..69, end/begin-of-image 70 and 71


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_chameleon(seed: int = 0) -> ChameleonForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = ChameleonConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        vq_config=dict(embed_dim=8, num_embeddings=16, base_channels=32, channel_multiplier=[1],
                       num_res_blocks=1, resolution=8, latent_channels=8, attn_resolutions=[]),
        vocabulary_map={"<image>": VOCAB - 1},
    )
    return ChameleonForConditionalGeneration(cfg).eval()


ARCHS = {"llama": tiny_llama, "chameleon": tiny_chameleon}


@pytest.fixture(params=sorted(ARCHS))
def arch(request):
    return request.param


def randomize_adapters(model, seed: int = 0) -> None:
    """Give every adapter weight (B included) random values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mode_" in name or "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def mixed_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB - 1, (batch, length), generator=g)
