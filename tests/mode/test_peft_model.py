"""MoDE through PEFT's public API on Llama and Chameleon architectures."""

import json
import os
import subprocess
import sys
import textwrap

import peft
import pytest
import torch

import cl_platform.mode as cm
from cl_platform.models.modality import image_token_mask

from .conftest import ARCHS, IMAGE_RANGES, mixed_ids, randomize_adapters

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mode(model, **kw):
    kw.setdefault("image_token_ranges", IMAGE_RANGES)
    kw.setdefault("task_type", "CAUSAL_LM")
    kw.setdefault("lora_dropout", 0.0)
    return peft.get_peft_model(model, cm.ModeConfig(**kw))


def test_fresh_mode_model_equals_base(arch):
    base = ARCHS[arch]()
    ids = mixed_ids(2, 12, 0)
    ref = base(input_ids=ids).logits
    model = _mode(base)
    assert torch.equal(model(input_ids=ids).logits, ref)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("mode_" in n for n in trainable)


def test_disable_adapter_equals_base_after_training(arch):
    base = ARCHS[arch]()
    ids = mixed_ids(2, 12, 1)
    ref = base(input_ids=ids).logits.detach()
    model = _mode(base)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert not torch.allclose(model(input_ids=ids).logits, ref)
    with model.disable_adapter():
        assert torch.equal(model(input_ids=ids).logits, ref)
    assert not torch.allclose(model(input_ids=ids).logits, ref)


def test_merge_is_refused_with_a_clear_error():
    model = _mode(ARCHS["llama"]())
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        model.merge_and_unload()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="image_token_ranges is empty"):
        cm.ModeConfig()
    with pytest.raises(ValueError, match="r_text"):
        cm.ModeConfig(image_token_ranges=IMAGE_RANGES, r_text=0)
    with pytest.raises(ValueError, match="overlap"):
        cm.ModeConfig(image_token_ranges=[[1, 5], [4, 9]])


def test_inputs_embeds_without_ids_fails_loudly_unless_routed_explicitly():
    model = _mode(ARCHS["llama"]())
    randomize_adapters(model)
    ids = mixed_ids(1, 6, 2)
    embeds = model.get_input_embeddings()(ids)
    with pytest.raises(cm.RoutingError, match="input_ids"):
        model(inputs_embeds=embeds)
    with cm.routing_scope(model, image_token_mask(ids, IMAGE_RANGES)):
        out = model(inputs_embeds=embeds).logits
    torch.testing.assert_close(out, model(input_ids=ids).logits)


SUBPROCESS_LOAD = textwrap.dedent(
    """
    import sys, torch, peft, transformers
    if sys.argv[3] == "register":
        import cl_platform.mode
    base = getattr(transformers, sys.argv[6]).from_pretrained(sys.argv[1]).eval()
    model = peft.PeftModel.from_pretrained(base, sys.argv[2]).eval()
    ids = torch.load(sys.argv[4])
    torch.save(model(input_ids=ids).logits, sys.argv[5])
    """
)


def _load_in_fresh_process(base_dir, adapter_dir, ids_path, out_path, register: bool, cls: str):
    return subprocess.run(
        [sys.executable, "-c", SUBPROCESS_LOAD, str(base_dir), str(adapter_dir),
         "register" if register else "plain", str(ids_path), str(out_path), cls],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )


@pytest.mark.parametrize("arch_name", ["llama", "chameleon"])
def test_save_load_round_trip_in_a_fresh_process(tmp_path, arch_name):
    base = ARCHS[arch_name]()
    base.save_pretrained(tmp_path / "base")
    model = _mode(base, r_text=4, r_image=6, num_experts=3)
    randomize_adapters(model, seed=5)
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == cm.MODE_PEFT_TYPE and saved["num_experts"] == 3
    ids = mixed_ids(2, 10, 3)
    torch.save(ids, tmp_path / "ids.pt")
    expected = model(input_ids=ids).logits

    proc = _load_in_fresh_process(tmp_path / "base", tmp_path / "adapter", tmp_path / "ids.pt", tmp_path / "out.pt", True, type(base).__name__)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)

    proc = _load_in_fresh_process(tmp_path / "base", tmp_path / "adapter", tmp_path / "ids.pt", tmp_path / "bad.pt", False, type(base).__name__)
    assert proc.returncode != 0
    assert "import cl_platform.mode" in proc.stderr
    assert not (tmp_path / "bad.pt").exists()


def test_routing_inside_generate_matches_training_forward(arch):
    base = ARCHS[arch]().double()
    model = _mode(base)
    randomize_adapters(model, seed=7)
    model.eval()
    state = model.base_model.routing
    calls = []
    original = state.set_from_ids
    state.set_from_ids = lambda ids, *rest: (calls.append(None if ids is None else ids.shape), original(ids, *rest))[1]
    prompt = mixed_ids(2, 5, 4)
    out = model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=True,
        top_k=0, temperature=1.0, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
    )
    state.set_from_ids = original
    # one routing computation per forward: the prompt, then one step per new token (KV cache)
    assert calls[0] == (2, 5) and all(c == (2, 1) for c in calls[1:]) and len(calls) == 8
    seq = out.sequences
    is_img = image_token_mask(seq[:, 5:], IMAGE_RANGES)
    assert is_img.any() and (~is_img).any(), "generation should mix both modalities"
    step_logits = torch.stack(out.logits, dim=1)  # [B, 8, V] from the cached generation
    full = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, 4:-1]
    torch.testing.assert_close(step_logits.double(), full, rtol=1e-6, atol=1e-6)  # chameleon returns fp32 logits
    # and with routing forced wrong, the logits would differ: routing is what makes them equal
    with cm.routing_scope(model, torch.zeros_like(seq, dtype=torch.bool)):
        wrong = model(input_ids=seq).logits[:, 4:-1]
    assert not torch.allclose(wrong, full, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_keeps_each_forwards_routing(reentrant):
    def grads(checkpointing: bool):
        model = _mode(ARCHS["llama"](seed=3))
        randomize_adapters(model, seed=9)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            if reentrant:
                model.enable_input_require_grads()
        ids_a = mixed_ids(2, 12, 10)
        ids_b = torch.full((2, 7), 5)  # a second forward, all text, before the first backward
        loss_a = model(input_ids=ids_a, labels=ids_a).loss
        loss_b = model(input_ids=ids_b, labels=ids_b).loss
        (loss_a + 0.5 * loss_b).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
