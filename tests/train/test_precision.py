"""bf16 training and gradient checkpointing on the tiny Chameleon model, against float32.

Tolerances (measured on the default tiny model, 2-core x86_64 CPU, torch 2.13): the bf16 task
cross-entropy differs from float32 by about 1e-5 relative, the KD term by about 0.3 % relative,
and the cosine similarity of the adapter gradients is about 0.9999. The tests ask for a loss
within 2 % and a gradient cosine above 0.99. Gradient checkpointing recomputes the same float32
operations, so its gradients match within 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch

from cl_platform.methods import KDBatch, MethodConfig, StepInputs, get_method
from cl_platform.methods.kd import shifted_mask, teacher_targets_from_logits
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.tiny import build_tiny_model
from cl_platform.train.recipe import base_dtype, build_model, step_loss, train_step

SPEC = ModalitySpec(spec_id="t", vocab_size=96, image_code_range=(40, 90), boi_id=90, eoi_id=91, pad_id=0, sep_id=3)

#: The documented tolerances (module docstring).
LOSS_RTOL = 0.02
GRAD_COSINE = 0.99


def _batches(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, KDBatch]:
    """A task batch (mixed text and image ids, answers on the second half) and a KD batch whose
    targets come from the frozen base."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 92, (4, 40), generator=g)
    labels = ids.clone()
    labels[:, :20] = -100
    kids = torch.randint(40, 92, (2, 30), generator=g)
    kam = torch.ones_like(kids)
    with torch.no_grad():
        targets = teacher_targets_from_logits(build_tiny_model(SPEC, seed=0)(input_ids=kids).logits, k=16)
    kd = KDBatch(kids, kam, shifted_mask(SPEC.is_image(kids), kam), targets)
    return ids, torch.ones_like(ids), labels, kd


def _model(method: str, precision: str, checkpointing: bool = False):
    """The tiny base in ``precision``'s storage dtype with ``method``'s adapter, adapter weights
    random (as after training) and identical for every precision."""
    m = get_method(method, MethodConfig(lora_dropout=0.0, kd_weight=1.0))
    model = build_model(m, build_tiny_model(SPEC, seed=0).to(base_dtype(precision)), SPEC,
                        gradient_checkpointing=checkpointing)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m, model.train()


def _losses_and_grads(method: str, precision: str, checkpointing: bool = False):
    m, model = _model(method, precision, checkpointing)
    ids, am, labels, kd = _batches()
    loss, terms = step_loss(model, m, ids, am, labels, StepInputs(task_batch={}, kd_batch=kd), precision=precision)
    (loss + sum(terms.values())).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), {k: v.detach() for k, v in terms.items()}, grads


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for _, g in sorted(grads.items())])


@pytest.mark.parametrize("method", ["mode", "seq_lora"])
def test_bf16_stores_the_base_in_bf16_and_adapters_and_optimizer_state_in_fp32(method):
    m, model = _model(method, "bf16")
    frozen = {p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert frozen == {torch.bfloat16} and {p.dtype for p in trainable} == {torch.float32}
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    ids, am, labels, kd = _batches()
    loss, terms = train_step(model, m, ids, am, labels, StepInputs(task_batch={}, kd_batch=kd), opt,
                             precision="bf16", grad_clip=1.0)
    assert loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    assert all(p.grad.dtype == torch.float32 for p in trainable)
    states = [v for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert len(states) == 2 * len(trainable) and {v.dtype for v in states} == {torch.float32}


def test_bf16_matches_fp32_on_the_tiny_model():
    loss32, terms32, grads32 = _losses_and_grads("mode", "fp32")
    loss16, terms16, grads16 = _losses_and_grads("mode", "bf16")
    assert loss16.dtype == torch.float32 and terms16["kd"].dtype == torch.float32
    assert abs(float(loss16 - loss32)) <= LOSS_RTOL * float(loss32)
    assert abs(float(terms16["kd"] - terms32["kd"])) <= LOSS_RTOL * float(terms32["kd"])
    cosine = float(torch.nn.functional.cosine_similarity(_flat(grads16), _flat(grads32), dim=0))
    assert cosine > GRAD_COSINE, cosine


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients():
    calls = []
    _, model = _model("mode", "fp32", checkpointing=True)
    mlp = model.get_base_model().model.layers[0].mlp
    # a pre-hook: the non-reentrant recomputation stops as soon as it has what the backward needs,
    # before the MLP's forward returns
    mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    ids, am, labels, kd = _batches()
    loss = step_loss(model, get_method("mode_nokd"), ids, am, labels, StepInputs(task_batch={}), precision="fp32")[0]
    assert len(calls) == 1
    loss.backward()
    assert len(calls) == 2, "the layer was not recomputed in the backward"

    loss_plain, terms_plain, plain = _losses_and_grads("mode", "fp32")
    loss_ckpt, terms_ckpt, ckpt = _losses_and_grads("mode", "fp32", checkpointing=True)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms_ckpt["kd"], terms_plain["kd"], rtol=1e-5, atol=1e-5)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-5, msg=name)


def _final_scores(store: str, run: str) -> tuple[list[float], list[float], float]:
    """Each task's accuracy after the last round, each round's task loss (moving average, from the
    ledger) and the seconds of training steps."""
    from cl_platform.store import Store
    from cl_platform.train.ledger import Ledger

    results = json.loads(Store(store).read_bytes(f"runs/{run}/results.json"))["methods"]["mode"]
    records = [Ledger.open(Store(store), run).record("mode", r) for r in range(len(results["accuracy_matrix"]))]
    return (results["accuracy_matrix"][-1], [rec.metrics["loss"] for rec in records],
            sum(rec.metrics["train_seconds"] for rec in records))


def _check_replay_continuation(store: str, parent: str, capfd) -> None:
    """A two-task ``--from-run`` continuation of ``parent`` with half of every batch replayed: the
    ledger records the settings, every round finishes, and round 1 replays the parent's tasks
    (round 2 also the continuation's first task), pools capped at ``--replay-per-task``."""
    from cl_platform.cli.sequence import main
    from cl_platform.store import Store
    from cl_platform.train.ledger import Ledger

    capfd.readouterr()
    assert main(["--store", store, "--quick", "--suite", "digits", "--tasks", "name,plus_k", "--method", "mode",
                 "--steps", "6", "--from-run", parent, "--replay-fraction", "0.5", "--replay-per-task", "40",
                 "--run", "replay-next"]) == 0
    out = capfd.readouterr().out
    ledger = Ledger.open(Store(store), "replay-next")
    config = ledger.config
    assert config["replay_fraction"] == 0.5 and config["replay_per_task"] == 40
    assert config["earlier_tasks"] == ["parity", "compare"] and config["from_run"] == parent
    assert sorted(ledger.done_rounds("mode")) == [0, 1]
    assert "round 1 replay: 8 of 16 rows per batch from parity (40 rows), compare (40 rows)" in out, out[-3000:]
    assert "round 2 replay: 8 of 16 rows per batch from parity (40 rows), compare (40 rows), name (40 rows)" in out


@pytest.mark.slow
def test_a_short_digits_sequence_in_bf16_scores_as_fp32(fresh_digits_store, monkeypatch, capfd):
    from cl_platform.cli.sequence import main
    from cl_platform.train.resources import init_ray

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    scores = {}
    assert init_ray(None)  # one local Ray for both runs (each run leaves a Ray it did not start running)
    try:
        for precision in ("fp32", "bf16"):
            run = f"prec-{precision}"
            code = main(["--store", fresh_digits_store, "--quick", "--suite", "digits", "--tasks", "parity,compare",
                         "--method", "mode", "--steps", "24", "--precision", precision,
                         "--gradient-checkpointing", "1" if precision == "bf16" else "0", "--run", run])
            assert code == 0
            scores[precision] = _final_scores(fresh_digits_store, run)
        _check_replay_continuation(fresh_digits_store, "prec-fp32", capfd)  # sharing this Ray and parent run
    finally:
        import ray

        ray.shutdown()
    print(f"final accuracies, round losses, train seconds: fp32 {scores['fp32']}, bf16 {scores['bf16']}")
    (acc32, loss32, _), (acc16, loss16, _) = scores["fp32"], scores["bf16"]
    assert len(acc16) == 2 and all(abs(a - b) <= 0.1 for a, b in zip(acc16, acc32)), scores
    assert len(loss16) == len(loss32) == 2
    assert all(abs(a - b) <= 0.05 * b for a, b in zip(loss16, loss32)), scores
