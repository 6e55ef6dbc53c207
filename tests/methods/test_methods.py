"""The method plug-ins: build, loss terms, and a stateful method plugging in."""

import peft
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cl_platform.methods import (
    ContinualMethod, KDBatch, MethodConfig, StepInputs, available_methods, get_method, register_method,
)
from cl_platform.models.modality import ModalitySpec
from cl_platform.methods.kd import kd_loss, teacher_targets_from_logits

SPEC = ModalitySpec(spec_id="test", vocab_size=64, image_code_range=(30, 60), boi_id=60, eoi_id=61, pad_id=0, sep_id=3)


def tiny(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )).eval()


def test_builtin_methods_are_registered():
    assert {"mode", "mode_nokd", "seq_lora", "moe_lora", "olora"} <= set(available_methods())
    with pytest.raises(ValueError, match="unknown method 'nope'.*mode"):
        get_method("nope")


@pytest.mark.parametrize("name", ["mode", "mode_nokd", "seq_lora", "moe_lora", "olora"])
def test_each_method_builds_a_frozen_backbone_adapter_equal_to_base(name):
    base = tiny()
    ids = torch.randint(0, 62, (2, 9))
    ref = base(input_ids=ids).logits
    model = get_method(name, MethodConfig(lora_dropout=0.0)).build(base, SPEC)
    assert isinstance(model, peft.PeftModel)
    assert torch.equal(model(input_ids=ids).logits, ref)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n) or ("mode_" in n) for n in trainable)
    names = " ".join(trainable)
    assert ("mode_image_A" in names) == (name in ("mode", "mode_nokd"))
    assert ("mode_router" in names) == (name in ("mode", "mode_nokd", "moe_lora"))


def _kd_batch(model, ids):
    with torch.no_grad(), model.disable_adapter():
        targets = teacher_targets_from_logits(model(input_ids=ids).logits, k=8)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, -1] = False
    return KDBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask, targets=targets)


def test_mode_adds_weighted_kd_and_the_ablation_does_not():
    ids = torch.randint(30, 62, (2, 10))
    cfg = MethodConfig(kd_weight=0.7, kd_temperature=2.0, lora_dropout=0.0)
    mode = get_method("mode", cfg)
    model = mode.build(tiny(), SPEC)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "mode_" in n:
                p.normal_(0, 0.2)
    kd = _kd_batch(model, ids)
    terms = mode.loss_terms(model, StepInputs(task_batch={}, kd_batch=kd))
    expected = 0.7 * kd_loss(model(input_ids=ids).logits, kd.targets, kd.loss_mask, temperature=2.0)
    assert set(terms) == {"kd"} and float(terms["kd"]) > 0
    torch.testing.assert_close(terms["kd"], expected)
    assert mode.needs_teacher and not get_method("mode_nokd").needs_teacher
    assert get_method("mode_nokd", cfg).loss_terms(model, StepInputs(task_batch={}, kd_batch=kd)) == {}


@register_method
class _ReplayCounting(ContinualMethod):
    """A stateful method (a toy replay buffer) defined outside the package."""

    name = "test_replay_counting"

    def __init__(self, config=None):
        super().__init__(config)
        self.buffer: list[str] = []

    def build(self, model, spec):
        return get_method("seq_lora", self.config).build(model, spec)

    def after_task(self, model, task, data=None):
        self.buffer.append(task)

    def state_dict(self):
        return {"buffer": list(self.buffer)}

    def load_state_dict(self, state):
        self.buffer = list(state["buffer"])


def test_a_stateful_method_plugs_in_without_touching_the_others():
    m = get_method("test_replay_counting")
    model = m.build(tiny(), SPEC)
    m.after_task(model, "parity")
    m.after_task(model, "pair")
    fresh = get_method("test_replay_counting")
    fresh.load_state_dict(m.state_dict())
    assert fresh.buffer == ["parity", "pair"]
    assert {"mode", "seq_lora"} <= set(available_methods())
