"""O-LoRA: task slots in one LoRA, the orthogonality term, frozen earlier slots, slots found from weights."""

from __future__ import annotations

import json
import os

import pytest
import torch

from cl_platform.methods import MethodConfig, StepInputs, get_method
from cl_platform.methods.olora import lora_weights, orthogonality_loss, slot_span
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.tiny import build_tiny_model
from cl_platform.train.checkpoint import (
    load_adapter_weights, load_training_state, save_adapter_dir, save_training_state,
)
from cl_platform.train.recipe import base_dtype, build_model, train_step

SPEC = ModalitySpec(spec_id="t", vocab_size=96, image_code_range=(40, 90), boi_id=90, eoi_id=91, pad_id=0, sep_id=3)
R, S = 2, 3


def _method(**kw):
    return get_method("olora", MethodConfig(r_text=R, olora_slots=S, lora_dropout=0.0, olora_lambda=0.25, **kw))


def _model(method, precision="fp32", checkpointing=False):
    base = build_tiny_model(SPEC, seed=0).to(base_dtype(precision))
    return build_model(method, base, SPEC, gradient_checkpointing=checkpointing)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 92, (4, 16), generator=g)
    labels = ids.clone()
    labels[:, :8] = -100
    return ids, torch.ones_like(ids), labels


def _train(model, method, task, steps, *, weight_decay=0.1, precision="fp32"):
    """``steps`` AdamW steps of ``task`` through the training loop's step, with the method's hooks."""
    method.before_task(model, task)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=weight_decay)
    model.train()
    terms = []
    for step in range(steps):
        ids, am, labels = _batch(step)
        _, t = train_step(model, method, ids, am, labels, StepInputs(task_batch={}, step=step), opt,
                          precision=precision, grad_clip=1.0)
        terms.append(t)
    method.after_task(model, task)
    return terms


def _slot(w, s, kind):
    span = slot_span(s, R)
    return (w[span] if kind == "A" else w[:, span]).detach().clone()


def test_orthogonality_loss_is_the_sum_of_squared_entries_of_each_earlier_product():
    a1 = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])
    a2 = torch.tensor([[0.5, 0.0, 2.0], [1.0, 1.0, 1.0]])
    at = torch.tensor([[1.0, 0.0, 1.0], [2.0, -1.0, 0.0]])
    # A1 At^T = [[1, 0], [-1, -1]] -> 3;  A2 At^T = [[2.5, 1], [2, 1]] -> 12.25
    assert float(orthogonality_loss(a1, at)) == 3.0
    assert float(orthogonality_loss(torch.cat([a1, a2]), at)) == 3.0 + 12.25
    assert float(orthogonality_loss(torch.zeros(0, 3), at)) == 0.0


def test_first_task_has_no_orthogonality_term_and_the_second_the_weighted_hand_sum():
    m = _method()
    model = _model(m)
    m.before_task(model, "one")
    assert m.current == 0 and float(m.loss_terms(model, StepInputs(task_batch={}))["orth"]) == 0.0
    with torch.no_grad():  # task one "learned": its B non-zero
        for _, _, b in lora_weights(model):
            b[:, slot_span(0, R)] = 0.1
    m.after_task(model, "one")
    m.before_task(model, "two")
    assert m.current == 1
    expected = 0.0
    for _, a, _ in lora_weights(model):
        rows = a.detach().tolist()
        for j in range(R):
            for k in range(R):
                expected += sum(x * y for x, y in zip(rows[j], rows[R + k])) ** 2
    got = m.loss_terms(model, StepInputs(task_batch={}))["orth"]
    assert expected > 0
    assert float(got) == pytest.approx(0.25 * expected, rel=1e-5)
    got.backward()  # only the current slot's A receives the term's gradient
    for _, a, _ in lora_weights(model):
        assert torch.count_nonzero(a.grad[slot_span(0, R)]) == 0 and torch.count_nonzero(a.grad[slot_span(1, R)]) > 0


def test_task_two_leaves_task_one_bit_identical_under_weight_decay_and_learns_its_own_slot():
    m = _method()
    model = _model(m)
    init = {n: (a.detach().clone(), b.detach().clone()) for n, a, b in lora_weights(model)}
    _train(model, m, "one", 2)
    after_one = {n: (a.detach().clone(), b.detach().clone()) for n, a, b in lora_weights(model)}
    terms = _train(model, m, "two", 2)
    assert all(float(t["orth"]) > 0 for t in terms)
    assert len(after_one) == len(init) > 0
    for n, a, b in lora_weights(model):
        a1, b1 = after_one[n]
        a0, _ = init[n]
        assert torch.equal(_slot(a, 0, "A"), _slot(a1, 0, "A")) and torch.equal(_slot(b, 0, "B"), _slot(b1, 0, "B")), n
        assert not torch.equal(_slot(a1, 0, "A"), _slot(a0, 0, "A")) and torch.count_nonzero(_slot(b1, 0, "B")) > 0
        assert not torch.equal(_slot(a, 1, "A"), _slot(a1, 1, "A")) and torch.count_nonzero(_slot(b, 1, "B")) > 0, n
        # the unused slot: A as initialised, B zero
        assert torch.equal(_slot(a, 2, "A"), _slot(a0, 2, "A")) and torch.count_nonzero(_slot(b, 2, "B")) == 0, n
        # the last step's gradients: the other slots' zeroed before the clip and the optimizer saw them
        assert all(torch.count_nonzero(_slot(a.grad, s, "A")) == 0 for s in (0, 2))
        assert all(torch.count_nonzero(_slot(b.grad, s, "B")) == 0 for s in (0, 2))
        assert torch.count_nonzero(_slot(b.grad, 1, "B")) > 0
    assert m.state_dict() == {"slots": {"one": 0, "two": 1}, "training": None}


def test_the_output_is_the_base_plus_every_slots_scaled_product():
    m = _method(lora_alpha=6.0)
    model = _model(m).eval()
    name, a, b = next(iter(lora_weights(model)))
    layer = model.get_submodule(name)
    assert a.shape[0] == R * S and b.shape[1] == R * S and layer.scaling["default"] == 6.0 / R
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        b.copy_(torch.randn(b.shape, generator=g))
    x = torch.randn(5, a.shape[1], generator=g)
    expected = x @ layer.base_layer.weight.T
    for s in range(S):
        span = slot_span(s, R)
        expected = expected + (x @ a[span].T @ b[:, span].T) * (6.0 / R)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_a_fresh_method_finds_the_next_slot_from_saved_weights_and_its_own_after_a_mid_task_stop(tmp_path):
    m = _method()
    model = _model(m)
    for s, task in enumerate(("one", "two")):  # each task "learned": its B non-zero
        m.before_task(model, task)
        with torch.no_grad():
            for _, _, b in lora_weights(model):
                b[:, slot_span(s, R)] = 0.1 * (s + 1)
        m.after_task(model, task)
    save_adapter_dir(model, str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == R * S and saved["lora_alpha"] == 16.0 * S

    fresh = _method()
    reloaded = _model(fresh)
    load_adapter_weights(reloaded, str(tmp_path / "adapter"))
    for (_, a, b), (_, a2, b2) in zip(lora_weights(model), lora_weights(reloaded)):
        assert torch.equal(a, a2) and torch.equal(b, b2)
    fresh.before_task(reloaded, "three")
    assert fresh.current == 2

    # stopped in the middle of "two": the checkpoint's state says which slot it was learning
    state = {**m.state_dict(), "training": "two"}
    save_training_state(str(tmp_path / "ckpt"), reloaded, {"method_state": state})
    resumed = _method()
    resumed.load_state_dict(load_training_state(str(tmp_path / "ckpt"), source="ckpt")["method_state"])
    resumed.before_task(reloaded, "two")
    assert resumed.current == 1
    assert os.path.isfile(tmp_path / "ckpt" / "state.pt")


def test_all_slots_used_is_a_clear_error():
    m = _method()
    model = _model(m)
    with torch.no_grad():
        for _, _, b in lora_weights(model):
            b.fill_(0.01)
    with pytest.raises(ValueError, match=r"all 3 task slots .* used.*'four'.*olora_slots \(--olora-slots\)"):
        m.before_task(model, "four")


def test_bf16_with_gradient_checkpointing_trains_only_the_current_slot():
    m = _method()
    model = _model(m, precision="bf16", checkpointing=True)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    _train(model, m, "one", 1, precision="bf16")
    before = {n: (a.detach().clone(), b.detach().clone()) for n, a, b in lora_weights(model)}
    terms = _train(model, m, "two", 1, precision="bf16")
    assert terms[0]["orth"].dtype == torch.float32 and float(terms[0]["orth"]) > 0
    for n, a, b in lora_weights(model):
        assert torch.equal(_slot(a, 0, "A"), _slot(before[n][0], 0, "A"))
        assert torch.equal(_slot(b, 0, "B"), _slot(before[n][1], 0, "B"))
        assert torch.count_nonzero(_slot(b, 1, "B")) > 0
        # the hooks act on the recomputed backward too
        assert torch.count_nonzero(_slot(b.grad, 0, "B")) == 0 and torch.count_nonzero(_slot(b.grad, 1, "B")) > 0



def test_a_sequence_longer_than_the_slots_is_refused_before_training():
    from cl_platform.methods import MethodConfig
    from cl_platform.train.config import SequenceConfig
    from cl_platform.train.sequence import check_method_capacity

    cfg = SequenceConfig(run="r", store="file:///tmp/none", method="olora", tasks=["a", "b"], model_uri="m",
                         spec={}, method_config=MethodConfig(olora_slots=2).to_dict(), earlier_tasks=["x"])
    with pytest.raises(ValueError, match=r"3 tasks \(1 learned before this run \+ 2 in it\) exceed MethodConfig.olora_slots"):
        check_method_capacity(cfg, ["mode", "olora"])
    check_method_capacity(cfg, ["mode"])  # other methods have no such limit
    check_method_capacity(SequenceConfig(**{**cfg.to_dict(), "earlier_tasks": None}), ["olora"])
