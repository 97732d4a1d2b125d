"""Stage 2 losses: Clip-Forward-KL, its forward-KL (NLL) ablation, and chunked token log-probs.

Paper (Baichuan-M3, Stage 2; see docs/formulas.md). Offline distillation on the teachers' own
samples, with the teacher's log-prob of every sampled token stored with the data:

    L = E_{(s,a) ~ teacher data} [ 1(log pi_theta(a|s) < log pi_teacher(a|s)) * (-log pi_theta(a|s)) ]

i.e. token NLL on the teacher's tokens, only where the student is still below the teacher; the other
tokens are masked (the student is never pushed above the teacher on a token). The ablation is the plain
sampled forward-KL estimator, NLL on every teacher token.

All functions are pure tensor math on `[B, T]` rows (B sequences, T positions); `mask_BT` marks the
teacher's response tokens (1/True) against prompt and padding (0/False). Log-probs at masked positions
may hold anything, even -inf or nan: they never reach the loss, the stats or the gradient.

Run: `pytest tests/stage2_distill/test_losses.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

NORMS = ("token", "active", "sequence")


# --- log-probs of the sampled tokens, one chunk of full-vocabulary logits at a time ---------------
def _chunk_logprobs(h_CH: Tensor, w_VH: Tensor, targets_C: Tensor) -> Tensor:
    """log pi(target) = logit[target] - logsumexp(logits) for one chunk, logsumexp in fp32 or wider."""
    acc_dtype = torch.promote_types(h_CH.dtype, torch.float32)  # fp32 for bf16/fp32, fp64 stays fp64
    logits_CV = (h_CH @ w_VH.T).to(acc_dtype)
    picked_C = logits_CV.gather(1, targets_C[:, None]).squeeze(1)
    return picked_C - torch.logsumexp(logits_CV, dim=-1)


def gather_logprobs_chunked(
    hidden_BTH: Tensor, lm_head_weight_VH: Tensor, targets_BT: Tensor, chunk_size: int = 1024
) -> Tensor:
    """logp_BT[b, t] = log_softmax(hidden_BTH[b, t] @ W_VH.T)[targets_BT[b, t]], chunk by chunk.

    The B*T tokens are flattened and processed `chunk_size` at a time, so at most one chunk of
    full-vocabulary logits exists at once. Memory scales as chunk_size * V * 4 bytes (fp32 logits;
    plus chunk_size * V * 2 for the bf16 matmul output when the inputs are bf16), independent of B*T:
    with Qwen3's V = 151,936, chunk_size 1024 is 1024 * 151,936 * 4 B = 622 MB, where the unchunked
    `log_softmax(h @ W.T)` holds B*T*V*4 bytes (8 x 4096 tokens = 19.9 GB) and autograd keeps it alive.

    Backward: each chunk runs under `torch.utils.checkpoint` (non-reentrant), which saves only the
    chunk's inputs and recomputes its logits during the backward, so the backward also materializes
    one chunk of logits (and its softmax) at a time. The gradient of W_VH accumulates over chunks.
    Without autograd (no_grad, or neither hidden nor W requires grad) the chunks run plainly.

    hidden_BTH: [B, T, H] final hidden states (after the final norm), the position that predicts t.
    lm_head_weight_VH: [V, H] output embedding. targets_BT: [B, T] integer ids in [0, V); give padding
    any valid id (e.g. 0, not -100) and mask it in the loss.
    Returns logp_BT: [B, T] in fp32 (fp64 if the inputs are fp64).
    """
    if hidden_BTH.dim() != 3 or lm_head_weight_VH.dim() != 2:
        raise ValueError(
            f"expected hidden [B, T, H] and lm_head weight [V, H], got {tuple(hidden_BTH.shape)} and "
            f"{tuple(lm_head_weight_VH.shape)}"
        )
    B, T, H = hidden_BTH.shape
    V = lm_head_weight_VH.shape[0]
    if lm_head_weight_VH.shape[1] != H:
        raise ValueError(f"lm_head weight is [V, H] = {tuple(lm_head_weight_VH.shape)} but hidden H = {H}")
    if tuple(targets_BT.shape) != (B, T):
        raise ValueError(f"targets must be [B, T] = {(B, T)} like hidden, got {tuple(targets_BT.shape)}")
    if targets_BT.dtype.is_floating_point or targets_BT.dtype == torch.bool:
        raise ValueError(f"targets must be integer token ids, got dtype {targets_BT.dtype}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if targets_BT.numel() and (targets_BT.min() < 0 or targets_BT.max() >= V):
        raise ValueError(
            f"targets must lie in [0, V={V}); replace ignore ids such as -100 by 0 and mask them in the loss"
        )

    h_NH = hidden_BTH.reshape(B * T, H)
    t_N = targets_BT.reshape(B * T).long()
    use_ckpt = torch.is_grad_enabled() and (hidden_BTH.requires_grad or lm_head_weight_VH.requires_grad)
    pieces = []
    for start in range(0, B * T, chunk_size):
        h_CH, t_C = h_NH[start : start + chunk_size], t_N[start : start + chunk_size]
        if use_ckpt:
            pieces.append(checkpoint(_chunk_logprobs, h_CH, lm_head_weight_VH, t_C, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h_CH, lm_head_weight_VH, t_C))
    if not pieces:  # B*T == 0
        acc_dtype = torch.promote_types(hidden_BTH.dtype, torch.float32)
        return hidden_BTH.new_zeros((B, T), dtype=acc_dtype)
    return torch.cat(pieces).reshape(B, T)


# --- reductions ------------------------------------------------------------------------------------
def _check(student_logp_BT: Tensor, mask_BT: Tensor, norm: str, teacher_logp_BT: Tensor | None = None):
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    if student_logp_BT.dim() != 2 or not student_logp_BT.dtype.is_floating_point:
        raise ValueError(
            f"student log-probs must be a float [B, T] tensor, got {tuple(student_logp_BT.shape)} "
            f"{student_logp_BT.dtype}"
        )
    shapes = {"student": student_logp_BT.shape, "mask": mask_BT.shape}
    if teacher_logp_BT is not None:
        shapes["teacher"] = teacher_logp_BT.shape
    if len(set(shapes.values())) != 1:
        raise ValueError(
            f"all inputs must share one [B, T] shape, got { {k: tuple(v) for k, v in shapes.items()} }"
        )


def _reduce(nll_BT: Tensor, mask_BT: Tensor, active_BT: Tensor, norm: str) -> Tensor:
    """Normalize the summed per-token loss (already zero off `active_BT`, active within mask).

    token:    sum / #mask tokens          (clipped teacher tokens count as zeros: the paper's E_(s,a))
    active:   sum / #active tokens        (mean NLL over the tokens that still get a gradient)
    sequence: mean over sequences of (row sum / #mask tokens of the row); rows without any mask token
              are left out of the batch mean.
    An empty denominator gives a loss of 0 (still connected to the graph).
    """
    if norm == "token":
        return nll_BT.sum() / mask_BT.sum().clamp(min=1)
    if norm == "active":
        return nll_BT.sum() / active_BT.sum().clamp(min=1)
    n_B = mask_BT.sum(dim=1)
    per_seq_B = nll_BT.sum(dim=1) / n_B.clamp(min=1)
    return per_seq_B.sum() / (n_B > 0).sum().clamp(min=1)


def _masked_mean(x_BT: Tensor, mask_BT: Tensor) -> float:
    x = x_BT.detach()
    return (torch.where(mask_BT, x, 0).sum() / mask_BT.sum().clamp(min=1)).item()


# --- the losses ------------------------------------------------------------------------------------
def clip_forward_kl_loss(
    student_logp_BT: Tensor, teacher_logp_BT: Tensor, mask_BT: Tensor, norm: str = "token"
) -> tuple[Tensor, dict[str, float]]:
    """Clip-Forward-KL:  L = E[ 1(log pi_theta(a|s) < log pi_teacher(a|s)) * (-log pi_theta(a|s)) ].

    active_BT = mask & (sg[student_logp] < sg[teacher_logp])   (strict: a tie is clipped)
    nll_BT    = -student_logp where active, exactly 0 elsewhere (torch.where: zero gradient on clipped
                tokens and padding, and no nan from -inf log-probs there)
    loss      = _reduce(nll_BT) with norm "token" (default, the paper's expectation over all teacher
                tokens), "active" or "sequence" (see `_reduce`).
    The indicator is computed on detached values: no gradient flows through the comparison, and none
    into teacher_logp_BT.

    student_logp_BT, teacher_logp_BT: [B, T] log-probs of the teacher's sampled tokens.
    mask_BT: [B, T] bool or 0/1, the teacher's response tokens.
    Returns (loss, stats): stats["clip/masked_frac"] = fraction of teacher tokens clipped away,
    "clip/active_tokens", "clip/teacher_tokens", "clip/student_logp_mean", "clip/teacher_logp_mean"
    (means over teacher tokens).
    """
    _check(student_logp_BT, mask_BT, norm, teacher_logp_BT)
    mask_BT = mask_BT.bool()
    active_BT = mask_BT & (student_logp_BT.detach() < teacher_logp_BT.detach())
    nll_BT = torch.where(active_BT, -student_logp_BT, 0.0)
    loss = _reduce(nll_BT, mask_BT, active_BT, norm)
    n_mask, n_active = int(mask_BT.sum()), int(active_BT.sum())
    stats = {
        "clip/masked_frac": (n_mask - n_active) / max(n_mask, 1),
        "clip/active_tokens": float(n_active),
        "clip/teacher_tokens": float(n_mask),
        "clip/student_logp_mean": _masked_mean(student_logp_BT, mask_BT),
        "clip/teacher_logp_mean": _masked_mean(teacher_logp_BT, mask_BT),
    }
    return loss, stats


def forward_kl_nll_loss(
    student_logp_BT: Tensor, mask_BT: Tensor, norm: str = "token"
) -> tuple[Tensor, dict[str, float]]:
    """Forward-KL ablation (sampled estimator):  L = E_{(s,a) ~ teacher data} [ -log pi_theta(a|s) ].

    KL(pi_teacher || pi_theta) = E_teacher[log pi_teacher - log pi_theta]; the first term is constant,
    so on teacher samples it reduces to token NLL on every teacher token (mask). Same normalisations
    as `clip_forward_kl_loss`; here every mask token is active, so "active" equals "token".
    Returns (loss, stats) with the same keys as `clip_forward_kl_loss` minus the teacher mean
    (masked_frac is 0), so the two are interchangeable in a training loop.
    """
    _check(student_logp_BT, mask_BT, norm)
    mask_BT = mask_BT.bool()
    nll_BT = torch.where(mask_BT, -student_logp_BT, 0.0)
    loss = _reduce(nll_BT, mask_BT, mask_BT, norm)
    n_mask = float(mask_BT.sum())
    stats = {
        "clip/masked_frac": 0.0,
        "clip/active_tokens": n_mask,
        "clip/teacher_tokens": n_mask,
        "clip/student_logp_mean": _masked_mean(student_logp_BT, mask_BT),
    }
    return loss, stats
