"""Training-time test (EAGLE-3): unroll the draft k steps on its own outputs, in parallel over all
positions of a sequence, with the attention mask that reproduces what it sees at inference.

    from draft_eagle3.ttt import unroll
    loss, stats = unroll(draft, batch, k=7, decay=0.8)     # batch from draft_eagle3.data.collate

Indexing. Tokens x_0..x_{T-1}; g_t = the target's aux states at position t (from x_<=t); the
target's logits at position p give its distribution of x_{p+1}. Column t of step i:
    input token  x_{t+1+i}                      (step 0: the token after g_t's position)
    input hidden g_t (3H, through fc) at step 0; the draft's own step-(i-1) output of column t after
    position     t + i                          (RoPE)
    target       softmax of the target's logits at position t+1+i, restricted to the draft vocab
    mask         valid[t+1+i] (that position's next token is a response token whose target argmax
                 is in the draft vocabulary; 0 past the end)
The input tokens of steps >= 1 are the data's tokens, which are the target's own (regenerated)
tokens: at inference a draft token only matters while it equals the target's, so this is the
draft's own prediction on every path that can still be accepted; the hidden state is the draft's
own output, which is the part that differs from step 0 (as in EAGLE-3 and SpecForge).

Attention of step i: column t attends to the step-0 keys of columns 0..t (causal) and to the keys of
steps 1..i at the same column t (the chain it has drafted so far): `ttt_attention_mask`.
Loss (docs/formulas.md, "Gated Eagle3 draft"):
    L = sum_{i=0}^{k-1} 0.8^i * L_i,
    L_i = sum_{b,t} m_i[b,t] * ( - sum_v p_i[b,t,v] * log q_i[b,t,v] ) / max(1, sum_{b,t} m_i[b,t])
with p_i the target's distribution restricted to the draft vocabulary and q_i the draft's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ttt_attention_mask(T: int, step: int, device=None) -> torch.Tensor:
    """Bool T x (step+1)T, True = attend. Keys are ordered [step 0 | step 1 | ... | step `step`],
    T columns each: a causal block for step 0, then an identity block per later step."""
    blocks = [torch.ones(T, T, dtype=torch.bool, device=device).tril()]
    blocks += [torch.eye(T, dtype=torch.bool, device=device)] * step
    return torch.cat(blocks, dim=1)


def shift_left(x: torch.Tensor, n: int, fill=0) -> torch.Tensor:
    """x[:, n:] padded at the end of dim 1 with `fill` back to the same length."""
    if n == 0:
        return x
    pad = torch.full_like(x[:, :n], fill)
    return torch.cat([x[:, n:], pad], dim=1)


def step_weights(k: int, decay: float = 0.8) -> list[float]:
    """[decay^0, ..., decay^(k-1)]."""
    return [decay**i for i in range(k)]


def soft_cross_entropy(
    logits_BTN: torch.Tensor, target_p_BTN: torch.Tensor, mask_BT: torch.Tensor
) -> torch.Tensor:
    """Masked mean over positions of -sum_v p * log_softmax(logits) (0 when nothing is masked in)."""
    ce_BT = -(target_p_BTN * F.log_softmax(logits_BTN.float(), dim=-1)).sum(-1)
    m = mask_BT.float()
    return (ce_BT * m).sum() / m.sum().clamp(min=1.0)


def step_accuracy(logits_BTN: torch.Tensor, target_logits_BTN: torch.Tensor, mask_BT: torch.Tensor) -> float:
    """Fraction of masked positions where the draft's argmax equals the target's (draft vocab)."""
    m = mask_BT.float()
    hit = (logits_BTN.argmax(-1) == target_logits_BTN.argmax(-1)).float()
    return float((hit * m).sum() / m.sum().clamp(min=1.0))


def unroll_logits(draft, ids_BT: torch.Tensor, aux_BTx: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The draft's logits B x T x N of each of the k unrolled steps (column t of step i predicts
    token t+2+i; module docstring)."""
    B, T = ids_BT.shape
    pos0 = torch.arange(T, device=ids_BT.device).expand(B, T)
    past = None
    hidden = aux_BTx
    out = []
    for i in range(k):
        mask = ttt_attention_mask(T, i, device=ids_BT.device)
        # id 0 fills the last 1+i columns: their targets lie past the end and are masked out
        hidden, logits, (kk, vv) = draft.step(shift_left(ids_BT, 1 + i), hidden, pos0 + i, past, mask)
        past = (kk, vv) if past is None else (torch.cat([past[0], kk], 2), torch.cat([past[1], vv], 2))
        out.append(logits)
    return out


def unroll(draft, batch: dict, k: int = 7, decay: float = 0.8) -> tuple[torch.Tensor, dict]:
    """The weighted TTT loss over k steps and per-step stats {"loss_i", "acc_i", "n_i"}."""
    total = torch.zeros((), device=batch["input_ids"].device)
    stats: dict[str, float] = {}
    step_logits = unroll_logits(draft, batch["input_ids"], batch["aux"], k)
    for i, (w, logits) in enumerate(zip(step_weights(k, decay), step_logits, strict=True)):
        tlog_i = shift_left(batch["target_logits"], 1 + i)  # the target at position t+1+i
        mask_i = shift_left(batch["valid"], 1 + i, fill=False)
        loss_i = soft_cross_entropy(logits, F.softmax(tlog_i.float(), dim=-1), mask_i)
        total = total + w * loss_i
        stats[f"loss_{i}"] = float(loss_i.detach())
        stats[f"acc_{i}"] = step_accuracy(logits.detach(), tlog_i, mask_i)
        stats[f"n_{i}"] = float(mask_i.sum())
    return total, stats
