"""Generation routing: ``token`` (by id, every call) and ``sequence`` (an image-generation call
routes every token to the visual LoRA), with exact-zero cross-modal gradients under both."""

import json

import peft
import pytest
import torch

import cl_platform.mode as cm
from cl_platform.methods import KDBatch, MethodConfig, StepInputs, get_method
from cl_platform.methods.kd import shifted_mask, teacher_targets_from_logits
from cl_platform.models.modality import ModalitySpec, image_token_mask

from .conftest import ARCHS, IMAGE_RANGES, VOCAB, mixed_ids, randomize_adapters

SPEC = ModalitySpec("toy", VOCAB, (40, 70), boi_id=71, eoi_id=70, pad_id=0, sep_id=3)
TEXT = ("mode_text_A", "mode_text_B", "mode_router")
VISUAL = ("mode_image_A", "mode_image_B")


def _mode(model, routing: str, **kw):
    return peft.get_peft_model(model, cm.ModeConfig(image_token_ranges=IMAGE_RANGES, task_type="CAUSAL_LM",
                                                    lora_dropout=0.0, generation_routing=routing, **kw))


def _generation_ids(batch: int = 2, prompt: int = 5, image: int = 7, seed: int = 0) -> torch.Tensor:
    """Text prompt, <boi>, image codes: a row of an image-generation stream."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, 40, (batch, prompt), generator=g)
    codes = torch.randint(40, 70, (batch, image), generator=g)
    return torch.cat([text, torch.full((batch, 1), SPEC.boi_id), codes], dim=1)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _of(grads: dict[str, torch.Tensor], kinds) -> list[torch.Tensor]:
    return [g for n, g in grads.items() if any(k in n for k in kinds)]


def _model(arch: str, routing: str, seed: int = 3):
    model = _mode(ARCHS[arch](seed=seed), routing)
    randomize_adapters(model, seed=seed)
    return model


@pytest.mark.parametrize("routing", ["token", "sequence"])
def test_generation_loss_reaches_text_experts_only_when_routed_by_token(arch, routing):
    model = _model(arch, routing)
    ids = _generation_ids()
    with cm.generating_image(model):
        model(input_ids=ids, labels=ids).loss.backward()
    grads = _grads(model)
    assert all(torch.count_nonzero(g) > 0 for g in _of(grads, VISUAL))
    text = _of(grads, TEXT)
    assert text and len(text) == 3 * len(_of(grads, ("mode_text_A",)))
    if routing == "sequence":  # exactly zero: the text experts and routers never see the call
        assert all(torch.count_nonzero(g) == 0 for g in text)
    else:  # the text prompt goes through the text experts
        assert all(torch.count_nonzero(g) > 0 for g in text)


@pytest.mark.parametrize("routing", ["token", "sequence"])
def test_understanding_routes_by_token_id_under_both_settings(routing):
    model = _model("llama", routing)
    reference = _model("llama", "token")
    ids = mixed_ids(2, 12, 5)
    torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
    for tokens, silent in ((torch.full((2, 9), 7), VISUAL), (torch.full((2, 9), 45), TEXT)):
        model.zero_grad()
        model(input_ids=tokens, labels=tokens).loss.backward()
        grads = _grads(model)
        assert all(torch.count_nonzero(g) == 0 for g in _of(grads, silent)), silent
        loud = VISUAL if silent == TEXT else TEXT
        assert all(torch.count_nonzero(g) > 0 for g in _of(grads, loud)), loud


def test_cached_generate_under_sequence_routes_every_step_to_the_visual_lora(arch):
    model = _model(arch, "sequence", seed=7).double().eval()
    state = model.base_model.routing
    masks = []
    original = state.set_from_ids

    def spy(*args):
        original(*args)
        masks.append(state.image_mask.clone())

    state.set_from_ids = spy
    prompt = mixed_ids(2, 5, 4)
    with cm.generating_image(model):
        assert state.all_image
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                             do_sample=True, top_k=0, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
    state.set_from_ids = original
    assert not state.all_image
    assert [tuple(m.shape) for m in masks] == [(2, 5)] + [(2, 1)] * 5 and all(bool(m.all()) for m in masks)
    seq = out.sequences
    with cm.routing_scope(model, torch.ones_like(seq, dtype=torch.bool)):
        full = model(input_ids=seq).logits[:, 4:-1]
    torch.testing.assert_close(torch.stack(out.logits, dim=1).double(), full, rtol=1e-6, atol=1e-6)
    by_id = model(input_ids=seq).logits[:, 4:-1]  # outside the scope: routed by id again
    assert not torch.allclose(by_id, full, rtol=1e-3, atol=1e-3)


def test_generating_image_is_a_no_op_without_mode_layers_or_routed_by_token():
    ids = _generation_ids(seed=2)
    for model in (ARCHS["llama"](seed=1), _model("llama", "token"), peft.get_peft_model(
            ARCHS["llama"](seed=1), peft.LoraConfig(r=4, target_modules=["gate_proj"]))):
        outside = model(input_ids=ids).logits
        with cm.generating_image(model):
            assert torch.equal(model(input_ids=ids).logits, outside)


def test_gradient_checkpointing_keeps_a_generation_forwards_all_image_routing():
    def grads(checkpointing: bool):
        model = _model("llama", "sequence", seed=4)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        gen, text = _generation_ids(seed=3), mixed_ids(2, 7, 6)
        with cm.generating_image(model):
            loss_a = model(input_ids=gen, labels=gen).loss
        loss_b = model(input_ids=text, labels=text).loss  # routed by id, before the first backward
        (loss_a + 0.5 * loss_b).backward()
        return _grads(model)

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_kd_term_of_mode_with_sequence_routing_leaves_text_experts_exactly_zero():
    ids = _generation_ids(seed=5)
    am = torch.ones_like(ids)
    for routing in ("token", "sequence"):
        method = get_method("mode", MethodConfig(generation_routing=routing, kd_weight=1.0, lora_dropout=0.0))
        model = method.build(ARCHS["llama"](seed=2), SPEC)
        assert model.base_model.routing.generation_routing == routing
        randomize_adapters(model, seed=1)
        with torch.no_grad(), model.disable_adapter():
            targets = teacher_targets_from_logits(model(input_ids=ids).logits, k=8)
        kd = KDBatch(ids, am, shifted_mask(image_token_mask(ids, IMAGE_RANGES), am), targets)
        terms = method.loss_terms(model, StepInputs(task_batch={}, kd_batch=kd))
        terms["kd"].backward()
        text = _of(_grads(model), TEXT)
        assert text and all((torch.count_nonzero(g) == 0) == (routing == "sequence") for g in text)
    # moe_lora has no visual LoRA: it ignores the setting
    moe = get_method("moe_lora", MethodConfig(generation_routing="sequence")).build(ARCHS["llama"](), SPEC)
    assert moe.base_model.routing.generation_routing == "token"


def test_config_refuses_unknown_or_coupled_sequence_routing():
    with pytest.raises(ValueError, match="generation_routing must be one of token, sequence, got 'image'"):
        cm.ModeConfig(image_token_ranges=IMAGE_RANGES, generation_routing="image")
    with pytest.raises(ValueError, match="generation_routing 'sequence'.*decoupled=False"):
        cm.ModeConfig(decoupled=False, generation_routing="sequence")
    with pytest.raises(ValueError, match="generation_routing"):
        MethodConfig(generation_routing="image")


def test_saved_adapter_keeps_its_generation_routing(tmp_path):
    model = _model("llama", "sequence")
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["generation_routing"] == "sequence"
    loaded = peft.PeftModel.from_pretrained(ARCHS["llama"](seed=3), tmp_path / "adapter")
    assert loaded.base_model.routing.generation_routing == "sequence"
    ids = _generation_ids(seed=8)
    with cm.generating_image(model), cm.generating_image(loaded):
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_the_generation_probes_generate_as_image_generation():
    import numpy as np

    from cl_platform.eval.clip_probe import ClipSampling, sample_image_tokens
    from cl_platform.models.tiny import TinyModelConfig, build_tiny_model
    from cl_platform.suites.digits import vocab as V
    from cl_platform.suites.digits.judge import DigitsJudge
    from cl_platform.suites.digits.probe import DigitsJudgeProbe

    base = build_tiny_model(V.DIGITS_SPEC, TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                           intermediate_size=32),
                            vocabulary_map=dict(V.TOKEN_TO_ID), seed=0)
    model = get_method("mode", MethodConfig(generation_routing="sequence")).build(base, V.DIGITS_SPEC)
    state = model.base_model.routing
    seen = []
    original = state.set_from_ids

    def spy(*args):
        original(*args)
        seen.append(bool(state.image_mask.all()))

    state.set_from_ids = spy
    judge = DigitsJudge.from_arrays(  # a hand-made two-class judge: blank (0) or ink (1)
        {"support_vectors": np.stack([np.zeros(64), np.ones(64)]), "dual_coef": np.array([[1.0, -1.0]]),
         "intercept": np.zeros(1), "n_support": np.array([1, 1]), "classes": np.array([0, 1])},
        {"seed": 0, "n_noise": 0, "n_shuffled": 0, "C": 1.0, "kernel": "rbf", "features": "pixels / 16", "gamma": 1.0})
    DigitsJudgeProbe(judge, [3], seed=0).partial(model, 0, 1)
    assert len(seen) == V.IMAGE_SEQ_LEN and all(seen)  # the prompt, then every cached step
    seen.clear()
    sample_image_tokens(model, [V.generation_prompt(5)], V.DIGITS_SPEC, 4, ClipSampling(), seed=0)
    assert len(seen) == 4 + 2 and all(seen)
    seen.clear()
    model(input_ids=torch.tensor([V.generation_prompt(5)]))  # anything else: by token id
    state.set_from_ids = original
    assert seen == [False]
