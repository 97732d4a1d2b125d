"""MOPD (multi-teacher on-policy distillation with task rewards) as pure tensor functions.

Paper: Baichuan-M3 stage 3 in the MiMo-V2-Flash form (docs/formulas.md, "Stage 3: MOPD"). The student
samples y ~ mu_theta (the inference engine), the teacher is the expert of the prompt's domain:

    A_t = sg[log pi_domain(y_t) - log pi_theta(y_t)] + alpha * A_ORM,t
    w_t = sg[pi_theta(y_t) / mu_theta(y_t)]   if eps_low <= pi_theta/mu_theta <= eps_high   else 0
    L   = - E_y[ (1/|y|) sum_t w_t * A_t * log pi_theta(y_t) ]

Shapes: B sequences x T response positions, right-padded; `mask_BT` is 1 on the student's own
(assistant) tokens and 0 on simulator turns and padding, so |y| counts the student's tokens only.
`log pi_domain - log pi_theta` on a token the student sampled is the single-sample estimate of the
reverse KL's gradient signal: its mean over the student's tokens is the reverse-KL estimate we log.

Defaults (docs/formulas.md leaves them OPEN; configs/stage3.yaml documents them): alpha = 1.0,
eps_low = 0.5, eps_high = 2.0 (the window a published MOPD user took).

Run: `pytest tests/stage3_mopd/test_losses.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mopd_advantages(
    teacher_logp_BT: Tensor, student_logp_BT: Tensor, orm_adv_BT: Tensor, alpha: float
) -> Tensor:
    """A_t = sg[log pi_domain(y_t) - log pi_theta(y_t)] + alpha * A_ORM,t (no gradient flows)."""
    return (teacher_logp_BT - student_logp_BT).detach() + alpha * orm_adv_BT.detach()


def truncated_importance_weight(
    student_logp_BT: Tensor, behaviour_logp_BT: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """w_t = sg[pi_theta/mu_theta] inside [eps_low, eps_high], else 0. Returns (w_BT, kept_BT).

    mu_theta is the policy that sampled the tokens (the inference engine's log-probs); outside the
    window the token is dropped rather than clipped, so a train/inference mismatch cannot push it.
    """
    if not 0.0 <= eps_low <= 1.0 <= eps_high:
        raise ValueError(f"need 0 <= eps_low <= 1 <= eps_high, got eps_low={eps_low}, eps_high={eps_high}")
    ratio = torch.exp((student_logp_BT - behaviour_logp_BT).detach())
    kept = (ratio >= eps_low) & (ratio <= eps_high)
    return torch.where(kept, ratio, torch.zeros_like(ratio)), kept


def mopd_token_loss(student_logp_BT: Tensor, adv_BT: Tensor, w_BT: Tensor) -> Tensor:
    """Per-token loss -w_t * A_t * log pi_theta(y_t); gradient only through log pi_theta."""
    return -(w_BT.detach() * adv_BT.detach() * student_logp_BT)


def seq_mean_token_mean(loss_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """E_y[(1/|y|) sum_t loss_t]: the mean over each sequence's own tokens, then over sequences.

    Sequences with no student token (|y| = 0) are left out of the outer mean.
    """
    mask = mask_BT.to(loss_BT.dtype)
    n = mask.sum(-1)
    per_seq = (loss_BT * mask).sum(-1) / n.clamp(min=1)
    has = n > 0
    return per_seq[has].mean() if bool(has.any()) else loss_BT.sum() * 0.0


def mopd_loss(
    student_logp_BT: Tensor,
    teacher_logp_BT: Tensor,
    behaviour_logp_BT: Tensor,
    orm_adv_BT: Tensor,
    mask_BT: Tensor,
    alpha: float = 1.0,
    eps_low: float = 0.5,
    eps_high: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = -E[(1/|y|) sum_t w_t A_t log pi_theta(y_t)] and its diagnostics (all over student tokens).

    stats: reverse_kl (mean of log pi_theta - log pi_domain, the k1 estimate on on-policy samples),
    masked_fraction (tokens dropped by the importance window), adv_mean, orm_adv_abs_mean.
    """
    mask = mask_BT.to(student_logp_BT.dtype)
    adv = mopd_advantages(teacher_logp_BT, student_logp_BT, orm_adv_BT, alpha)
    w, kept = truncated_importance_weight(student_logp_BT, behaviour_logp_BT, eps_low, eps_high)
    loss = seq_mean_token_mean(mopd_token_loss(student_logp_BT, adv, w), mask)
    n = mask.sum().clamp(min=1)
    with torch.no_grad():
        stats = {
            "reverse_kl": ((student_logp_BT - teacher_logp_BT) * mask).sum() / n,
            "masked_fraction": ((~kept).to(mask.dtype) * mask).sum() / n,
            "adv_mean": (adv * mask).sum() / n,
            "orm_adv_abs_mean": (orm_adv_BT.abs() * mask).sum() / n,
        }
    return loss, stats
