"""KD loss: top-K renormalised KL, temperature once, T**2, masking, float32 compute, chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from cl_platform.methods.kd import KDConfig, TeacherTargets, kd_loss, shifted_mask, teacher_targets_from_logits


def reference_kd(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, k: int, t: float) -> torch.Tensor:
    """Dense float64 reference, written plainly: full softmax at T, gather top-K, renormalise,
    KL(teacher || student) per position, times T**2, mean over the valid positions."""
    student, teacher = student.double(), teacher.double()
    top = teacher.topk(k, dim=-1).indices
    p_t = torch.softmax(teacher / t, dim=-1).gather(-1, top)
    p_t = p_t / p_t.sum(-1, keepdim=True)
    p_s = torch.softmax(student / t, dim=-1).gather(-1, top)
    p_s = p_s / p_s.sum(-1, keepdim=True)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1)
    m = mask.double()
    return t * t * (kl * m).sum() / m.sum()


def random_case(b: int, l: int, v: int, *, seed: int, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(b, l, v, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    teacher = torch.randn(b, l, v, generator=g, dtype=torch.float64) * scale
    mask = torch.rand(b, l, generator=g) < 0.7
    mask[0, 0] = True  # at least one valid position
    return student, teacher, mask


CASES = [
    # (k, temperature, chunk_size): chunk sizes that divide N=3*7=21 and ones that do not
    (1, 1.0, 4096),
    (5, 2.0, 1),
    (5, 2.0, 4),
    (8, 0.5, 5),
    (8, 3.7, 21),
    (16, 2.0, 8),
    (40, 1.0, 20),
    (40, 4.0, 22),
]


@pytest.mark.parametrize("k, temperature, chunk_size", CASES)
def test_kd_loss_matches_dense_reference_value_and_grad(k: int, temperature: float, chunk_size: int) -> None:
    student, teacher, mask = random_case(3, 7, 40, seed=1000 + k * 7 + chunk_size)
    targets = teacher_targets_from_logits(teacher, k, chunk_size=chunk_size)

    ours = kd_loss(student, targets, mask, temperature=temperature, chunk_size=chunk_size)
    (grad_ours,) = torch.autograd.grad(ours, student)
    ref = reference_kd(student, teacher, mask, k, temperature)
    (grad_ref,) = torch.autograd.grad(ref, student)

    assert ours.dtype == torch.float64 and ours.dim() == 0
    if k > 1:  # with K = 1 both renormalised distributions are [1.0] and the loss is 0
        assert ref.item() > 1e-3
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-10, atol=1e-12)


def test_teacher_targets_are_top_k_log_probs_at_temperature_one() -> None:
    logits = torch.randn(2, 5, 30, dtype=torch.float64) * 4
    targets = teacher_targets_from_logits(logits, 6, chunk_size=3)
    ids = logits.topk(6, dim=-1).indices
    assert targets.ids.dtype == torch.long and torch.equal(targets.ids, ids)
    torch.testing.assert_close(targets.logprobs, torch.log_softmax(logits, -1).gather(-1, ids), rtol=0, atol=1e-13)
    # most likely first
    assert bool((targets.logprobs[..., :-1] >= targets.logprobs[..., 1:]).all())
    # renormalised at T they equal softmax(z[I] / T): the log-sum-exp shift cancels
    t = 2.5
    torch.testing.assert_close(
        torch.softmax(targets.logprobs / t, -1), torch.softmax(logits.gather(-1, ids) / t, -1), rtol=0, atol=1e-13
    )


def test_teacher_targets_half_precision_logits_give_float32_log_probs() -> None:
    logits = (torch.randn(2, 4, 30) * 4).bfloat16()
    targets = teacher_targets_from_logits(logits, 5, chunk_size=3)
    assert targets.logprobs.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), -1).gather(-1, targets.ids)
    torch.testing.assert_close(targets.logprobs, expected, rtol=0, atol=1e-6)


def test_temperature_is_applied_once() -> None:
    student, teacher, mask = random_case(2, 6, 30, seed=7)
    k, t = 10, 2.0
    targets = teacher_targets_from_logits(teacher, k)
    ours = kd_loss(student, targets, mask, temperature=t)

    # The formula, written with torch's kl_div: p = softmax(z[I] / T) on both sides, times T**2.
    ids = targets.ids
    log_pt = torch.log_softmax(teacher.gather(-1, ids) / t, -1)
    log_ps = torch.log_softmax(student.gather(-1, ids) / t, -1)
    kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)
    formula = t * t * kl[mask].mean()
    torch.testing.assert_close(ours, formula, rtol=1e-12, atol=1e-12)

    # The reference implementation's bug: T applied twice (effective T**2 = 4).
    log_pt2 = torch.log_softmax(teacher.gather(-1, ids) / t / t, -1)
    log_ps2 = torch.log_softmax(student.gather(-1, ids) / t / t, -1)
    twice = t * t * F.kl_div(log_ps2, log_pt2, log_target=True, reduction="none").sum(-1)[mask].mean()
    assert abs(ours.item() - twice.item()) > 0.05 * ours.item()


def test_loss_is_scaled_by_temperature_squared() -> None:
    student, teacher, mask = random_case(2, 5, 20, seed=11)
    targets = teacher_targets_from_logits(teacher, 8)
    for t in (0.5, 1.0, 3.0):
        ids = targets.ids
        log_pt = torch.log_softmax(teacher.gather(-1, ids) / t, -1)
        log_ps = torch.log_softmax(student.gather(-1, ids) / t, -1)
        unscaled = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)[mask].mean()
        torch.testing.assert_close(kd_loss(student, targets, mask, temperature=t), t * t * unscaled, rtol=1e-12, atol=0)


def test_temperature_one_with_full_vocab_is_the_full_kl() -> None:
    student, teacher, mask = random_case(3, 4, 25, seed=3)
    ours = kd_loss(student, teacher_targets_from_logits(teacher, 25), mask, temperature=1.0, chunk_size=5)
    full = F.kl_div(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1), log_target=True, reduction="none")
    torch.testing.assert_close(ours, full.sum(-1)[mask].mean(), rtol=1e-12, atol=1e-12)


def test_masked_positions_change_neither_loss_nor_valid_grads() -> None:
    student, teacher, mask = random_case(3, 6, 20, seed=5)
    targets = teacher_targets_from_logits(teacher, 7)
    loss = kd_loss(student, targets, mask, chunk_size=4)
    (grad,) = torch.autograd.grad(loss, student)

    # Rewrite every masked position: new student logits (with NaN / inf), new teacher log-probs,
    # and out-of-range ids.
    noise = torch.randn_like(student) * 10
    noise[..., 0] = float("nan")
    noise[..., 1] = float("inf")
    other = torch.where(mask[..., None], student.detach(), noise).requires_grad_(True)
    ids = targets.ids.clone()
    logprobs = targets.logprobs.clone()
    ids[~mask] = -5
    logprobs[~mask] = torch.randn_like(logprobs[~mask]) * 100
    loss2 = kd_loss(other, TeacherTargets(ids, logprobs), mask, chunk_size=4)
    (grad2,) = torch.autograd.grad(loss2, other)

    assert loss2.item() == loss.item()
    assert torch.equal(grad2[mask], grad[mask])
    assert torch.equal(grad2[~mask], torch.zeros_like(grad2[~mask]))


def test_all_masked_gives_zero_and_finite_grads() -> None:
    student, teacher, _ = random_case(2, 3, 10, seed=9)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss = kd_loss(student, teacher_targets_from_logits(teacher, 4), mask)
    (grad,) = torch.autograd.grad(loss, student)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_teacher_ids_with_zero_probability_contribute_nothing() -> None:
    # A teacher that puts -inf on some vocabulary ids (e.g. a constrained head) and K larger
    # than the number of finite logits: those ids have p_t = 0 and must not produce NaN.
    student, teacher, mask = random_case(2, 4, 12, seed=21)
    teacher = teacher.clone()
    teacher[..., 6:] = float("-inf")
    targets = teacher_targets_from_logits(teacher, 9)
    loss = kd_loss(student, targets, mask)
    (grad,) = torch.autograd.grad(loss, student)
    # Plain reference: both sides renormalised on the same 9 ids, 0 * log 0 taken as 0.
    top = teacher.topk(9, dim=-1).indices
    p_t = torch.softmax(teacher / 2.0, -1).gather(-1, top)
    p_s = torch.softmax(student / 2.0, -1).gather(-1, top)
    p_s = p_s / p_s.sum(-1, keepdim=True)
    kl = torch.where(p_t > 0, p_t * (p_t.log() - p_s.log()), 0.0).sum(-1)
    expected = 4.0 * kl[mask].mean()
    assert bool((p_t == 0).any())
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(13)
    student32 = torch.randn(3, 9, 50, generator=g) * 3
    teacher32 = torch.randn(3, 9, 50, generator=g) * 3
    mask = torch.rand(3, 9, generator=g) < 0.8
    student_half = student32.to(dtype).requires_grad_(True)
    targets = teacher_targets_from_logits(teacher32, 16)
    half_targets = TeacherTargets(targets.ids.int(), targets.logprobs.to(dtype))

    loss = kd_loss(student_half, half_targets, mask, chunk_size=7)
    assert loss.dtype == torch.float32
    # Same as feeding the rounded values in float32: no arithmetic happened in half precision.
    upcast = student_half.detach().float().requires_grad_(True)
    loss_upcast = kd_loss(upcast, TeacherTargets(half_targets.ids, half_targets.logprobs.float()), mask, chunk_size=7)
    torch.testing.assert_close(loss, loss_upcast, rtol=1e-6, atol=1e-7)
    # And close to the float32 result on the unrounded inputs.
    loss32 = kd_loss(student32, targets, mask)
    torch.testing.assert_close(loss, loss32, rtol=3e-2, atol=1e-3)

    (grad,) = torch.autograd.grad(loss, student_half)
    (grad_upcast,) = torch.autograd.grad(loss_upcast, upcast)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.float(), grad_upcast.to(dtype).float(), rtol=0, atol=0)


def test_under_bf16_autocast_the_loss_stays_float32() -> None:
    """The training step runs the method's forward and ``kd_loss`` inside CPU bfloat16 autocast
    (``--precision bf16``): nothing after the gather is done in bfloat16."""
    g = torch.Generator().manual_seed(17)
    student = (torch.randn(2, 6, 40, generator=g) * 3).bfloat16().requires_grad_(True)
    targets = teacher_targets_from_logits(torch.randn(2, 6, 40, generator=g) * 3, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = kd_loss(student, targets, mask)
    assert loss.dtype == torch.float32
    plain = kd_loss(student.detach().float(), targets, mask)
    torch.testing.assert_close(loss.detach(), plain, rtol=1e-6, atol=1e-7)
    loss.backward()
    assert student.grad is not None and student.grad.dtype == torch.bfloat16


class _LargestFloat32(TorchDispatchMode):
    """Records the largest float32 tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_chunking_bounds_the_float32_intermediates() -> None:
    b, l, v, k, chunk = 4, 32, 200, 8, 16
    student = (torch.randn(b, l, v) * 2).bfloat16().requires_grad_(True)
    teacher = (torch.randn(b, l, v) * 2).bfloat16()
    mask = torch.ones(b, l, dtype=torch.bool)

    with _LargestFloat32() as probe:
        targets = teacher_targets_from_logits(teacher, k, chunk_size=chunk)
    assert probe.largest <= max(chunk * v, b * l * k)  # never [N, V] in float32

    with _LargestFloat32() as probe:
        loss = kd_loss(student, targets, mask, chunk_size=chunk)
        loss.backward()
    assert probe.largest <= b * l * k  # only [chunk, K] pieces (and the [N, K] targets) upcast
    assert student.grad is not None and student.grad.dtype == torch.bfloat16


def test_shifted_mask_aligns_tokens_with_the_logits_that_predict_them() -> None:
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert torch.equal(shifted_mask(attention), torch.tensor([[True, True, False, False], [True, True, True, False]]))
    # Only some tokens distilled (e.g. image tokens at 2..3): the positions before them count.
    image = torch.tensor([[0, 0, 1, 1]])
    assert torch.equal(shifted_mask(image), torch.tensor([[False, True, True, False]]))
    # Left padding: the pad position before the first real token must not count.
    left = torch.tensor([[0, 1, 1, 1]])
    assert torch.equal(shifted_mask(left, left), torch.tensor([[False, True, True, False]]))
    with pytest.raises(ValueError, match="token_mask"):
        shifted_mask(torch.ones(4))
    with pytest.raises(ValueError, match="attention_mask"):
        shifted_mask(attention, torch.ones(2, 3))


def test_kd_config_defaults_and_validation() -> None:
    cfg = KDConfig()
    assert (cfg.weight, cfg.temperature, cfg.top_k, cfg.chunk_size) == (0.3, 2.0, 256, 4096)
    for bad in ({"weight": -0.1}, {"temperature": 0.0}, {"temperature": float("nan")}, {"top_k": 0}, {"chunk_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            KDConfig(**bad)


def test_teacher_targets_validation_slicing_and_device() -> None:
    ids = torch.randint(0, 10, (4, 3, 2))
    lp = torch.randn(4, 3, 2)
    targets = TeacherTargets(ids, lp)
    assert targets.k == 2 and len(targets) == 4
    assert torch.equal(targets[1:3].ids, ids[1:3])
    assert torch.equal(targets[[3, 0]].logprobs, lp[[3, 0]])
    assert targets[2].shape == (1, 3, 2) and targets[-1].shape == (1, 3, 2)
    assert targets.to("cpu").ids.dtype == ids.dtype
    with pytest.raises(ValueError, match="ids must be \\[B, L, K\\]"):
        TeacherTargets(ids[0], lp[0])
    with pytest.raises(ValueError, match="integer"):
        TeacherTargets(ids.float(), lp)
    with pytest.raises(ValueError, match="logprobs shape"):
        TeacherTargets(ids, lp[:, :2])


def test_kd_loss_rejects_misaligned_inputs() -> None:
    student, teacher, mask = random_case(2, 4, 10, seed=1)
    targets = teacher_targets_from_logits(teacher, 3)
    with pytest.raises(ValueError, match="targets are"):
        kd_loss(student[:, :3], targets, mask[:, :3])
    with pytest.raises(ValueError, match="mask must be"):
        kd_loss(student, targets, mask[:, :3])
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(student, targets, mask, temperature=0)
    with pytest.raises(ValueError, match="chunk_size"):
        kd_loss(student, targets, mask, chunk_size=0)
    with pytest.raises(ValueError, match="k must be"):
        teacher_targets_from_logits(teacher, 11)
