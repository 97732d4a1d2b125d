"""MOPD formulas against hand-computed numbers (stage3_mopd/losses.py)."""

import math

import pytest
import torch

from stage3_mopd.losses import (
    mopd_advantages,
    mopd_loss,
    seq_mean_token_mean,
    truncated_importance_weight,
)


def _case():
    student = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    teacher = torch.tensor([[-0.5, -3.0, 0.0]])
    # token 0 sampled by the same policy (ratio 1); token 1 with ratio 3 (> eps_high 2): dropped
    behaviour = torch.tensor([[-1.0, -2.0 - math.log(3.0), -3.0]])
    orm = torch.full((1, 3), 0.5)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # last position: a simulator token
    return student, teacher, behaviour, orm, mask


def test_loss_by_hand():
    student, teacher, behaviour, orm, mask = _case()
    loss, stats = mopd_loss(student, teacher, behaviour, orm, mask, alpha=2.0, eps_low=0.5, eps_high=2.0)
    # A = [(-0.5+1) + 2*0.5, (-3+2) + 2*0.5] = [1.5, 0.0]; w = [1, 0]
    # per-token loss = -w*A*logp = [1.5, 0]; mean over the 2 student tokens = 0.75
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    # d loss / d logp_0 = -w_0 A_0 / |y| = -0.75; dropped token and simulator token get nothing
    assert student.grad[0].tolist() == pytest.approx([-0.75, 0.0, 0.0])
    assert stats["reverse_kl"].item() == pytest.approx(((-1 + 0.5) + (-2 + 3)) / 2)  # 0.25
    assert stats["masked_fraction"].item() == pytest.approx(0.5)


def test_advantage_and_weight_by_hand():
    adv = mopd_advantages(torch.tensor([[-1.0]]), torch.tensor([[-3.0]]), torch.tensor([[0.4]]), 0.5)
    assert adv.item() == pytest.approx(2.0 + 0.2)
    w, kept = truncated_importance_weight(
        torch.log(torch.tensor([[0.3, 0.5, 0.9, 0.2]])),
        torch.log(torch.tensor([[0.3, 0.5, 0.3, 0.5]])),
        eps_low=0.5,
        eps_high=2.0,
    )
    # ratios 1, 1, 3 (dropped), 0.4 (dropped)
    assert w[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert kept.tolist() == [[True, True, False, False]]


def test_student_equal_to_teacher_and_no_task_reward_gives_zero():
    logp = torch.tensor([[-0.7, -1.3, -2.0], [-0.1, -0.2, -0.3]], requires_grad=True)
    loss, stats = mopd_loss(
        logp, logp.detach().clone(), logp.detach().clone(), torch.randn(2, 3), torch.ones(2, 3), alpha=0.0
    )
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logp.grad) == 0
    assert stats["reverse_kl"].item() == 0.0


def test_sequence_mean_ignores_empty_rows_and_weights_sequences_equally():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert seq_mean_token_mean(loss, mask).item() == pytest.approx((1.0 + 4.0) / 2)


def test_bad_window_is_rejected():
    with pytest.raises(ValueError, match="eps_low"):
        truncated_importance_weight(torch.zeros(1, 1), torch.zeros(1, 1), eps_low=1.5, eps_high=2.0)
