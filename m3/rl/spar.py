"""SPAR: step-penalized advantage with a relative baseline, as pure tensor functions and a verl estimator.

Paper (Baichuan-M3, SPAR; see docs/formulas.md). A consultation step z_j is one simulator turn plus
one assistant turn; the step verifier returns the violations V_j of step j, R_global scores the whole
trajectory:

    gamma_j = 1 if V_j is empty else min_{v in V_j} lambda_v          (only the worst violation counts)
    A_ij    = (gamma_ij * R_i - mu_raw) / (sigma_raw + eps)

mu_raw, sigma_raw: mean and std of the UNPENALIZED R_global over the group of rollouts of one case, so
a mild penalty (lambda 0.9) barely moves A while sigma is large and dominates once sigma shrinks (the
implicit curriculum). A_ij is spread over the assistant tokens of step j; simulator tokens get 0.

Conventions (ours; the paper leaves them open):
- sigma_raw is the unbiased std (torch.std), as in verl's GRPO, so with every gamma = 1 SPAR gives
  exactly verl's GRPO advantages on groups of two or more.
- Degenerate groups: a group of one, or a group whose R_global are all equal (sigma_raw below
  DEGENERATE_STD), has no spread to normalize by. There sigma is treated as 1, so
  A_ij = gamma_ij * R_i - mu_raw = (gamma_ij - 1) * R_i: clean steps get 0 and a penalized step a
  bounded negative advantage. The literal formula would divide by eps and blow the penalty up by 1e6.
  (verl's GRPO gives a lone rollout its raw score; we give it only its penalties.)
  DEGENERATE_STD = 1e-4 assumes R_global of order 1 (rubric scores in [0, 1]): differences that small
  are float32 noise of the reward encoding below, not signal.

Data contract with the agent loop (verl 0.9.1 v1 trainer). The estimator only receives
`token_level_rewards` (= the trajectory's `rm_scores`), `response_mask`, the group `index` (uid) and
the algorithm config (`verl.trainer.ppo.ray_trainer.compute_advantage` passes nothing else, and the
v1 trainer's `_compute_advantage` fetches no other field). So everything travels in `rm_scores`, one
row per consultation rollout (one AgentLoopOutput, continuous token stream):

    steps       = the maximal runs of response_mask == 1 (one run per assistant turn), in order
    rm[end_j]   = (gamma_j - 1) * R_global      at the last token of step j (0.0 for a clean step)
    rm[0]       = R_global - sum_j rm[end_j]    the first response token carries the rest
    rm[t]       = 0                             everywhere else
    => rm.sum() == R_global,  gamma_j * R_global == rm.sum() + rm[end_j]

`encode_step_rewards` builds that row (the agent loop calls it and ships the result as rm_scores);
`decode_step_rewards` reads it back. The row sums to R_global, which is what verl logs as the score
and what its DAPO group filter reads; unpenalized rows hold R_global exactly in one float.
A first turn of a single token ends at position 0, the carrier itself: it cannot hold a penalty
and is scored as clean.
Requirements (checked by `check_algorithm_config`): algorithm.use_kl_in_reward=False (it adds -beta*KL
to every token), no token-level rejection sampling in decoupled rollout correction (it zeroes tokens
of response_mask and would split steps), and no colocated reward model (it rewrites rm_scores with a
last-token score; `m3.rl.verl_config.validate` checks that one).

Run: `pytest tests/m3/test_spar.py`; in a verl job `algorithm.adv_estimator=spar` (registered in every
process by `m3.rl.verl_plugin`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

NAME = "spar"
GLOBAL_NAME = "spar_global"  # the global repetition penalty ablation arm
EPS = 1e-6
DEGENERATE_STD = 1e-4


# --- the paper's math ----------------------------------------------------------------------------
def step_gamma(violation_lambdas: list[list[float]]) -> list[float]:
    """gamma_j = 1 if V_j is empty else min_{v in V_j} lambda_v, one per step.

    violation_lambdas[j] holds the penalty factor lambda_v of every violation v found in step j
    (published: repetition about 0.1, rigid phrasing about 0.9).
    """
    gammas = []
    for j, lambdas in enumerate(violation_lambdas):
        for lam in lambdas:
            if not 0.0 <= lam <= 1.0:
                raise ValueError(
                    f"step {j}: penalty factor lambda={lam} is outside [0, 1]; lambda multiplies the "
                    "reward (about 0.1 for a severe violation, 0.9 for a mild one)"
                )
        gammas.append(min(lambdas) if lambdas else 1.0)
    return gammas


def global_penalty_gammas(gammas: Sequence[float]) -> list[float]:
    """The paper's third ablation arm, a global repetition penalty: the worst step's gamma on every
    step, gamma'_j = min_k gamma_k, so A_j = (min_k gamma_k * R_global - mu_raw) / (sigma_raw + eps)
    lands on every token of the trajectory (claimed to break the inquiry logic; SPAR keeps it local)."""
    worst = min(gammas, default=1.0)
    return [worst] * len(gammas)


def group_baseline(r_global_G: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """(mu_raw, denominator) of one group: mean of R_global and sigma_raw + eps, or 1 if degenerate.

    sigma_raw = torch.std (unbiased); a group of one or of equal rewards (sigma_raw < DEGENERATE_STD)
    gets denominator 1 (see the module docstring). Computed in float64.
    """
    if r_global_G.dim() != 1 or r_global_G.numel() == 0:
        raise ValueError(f"r_global_G must be a non-empty 1-D tensor, got shape {tuple(r_global_G.shape)}")
    r_G = r_global_G.double()
    mu = r_G.mean()
    sigma = r_G.std() if r_G.numel() > 1 else torch.zeros((), dtype=torch.float64)
    denom = torch.ones((), dtype=torch.float64) if sigma < DEGENERATE_STD else sigma + eps
    return mu, denom


def spar_step_advantages(
    r_global_G: Tensor, gammas: Sequence[Sequence[float]], eps: float = EPS
) -> list[Tensor]:
    """A_ij = (gamma_ij * R_i - mu_raw) / (sigma_raw + eps) for the G rollouts of one case.

    r_global_G: (G,) unpenalized R_global per rollout. gammas[i]: per-step gamma of rollout i
    (rollouts may have different step counts). Returns G float32 tensors of shape (K_i,).
    """
    if len(gammas) != r_global_G.numel():
        raise ValueError(
            f"got {r_global_G.numel()} rewards but gammas for {len(gammas)} rollouts: one list per rollout"
        )
    mu, denom = group_baseline(r_global_G, eps)
    r_G = r_global_G.double()
    return [
        ((torch.tensor(list(g), dtype=torch.float64, device=r_G.device) * r_G[i] - mu) / denom).float()
        for i, g in enumerate(gammas)
    ]


# --- token layout --------------------------------------------------------------------------------
def step_index_from_mask(response_mask_BT: Tensor) -> Tensor:
    """(B, T) long: which assistant step each response token belongs to (0, 1, ...), -1 elsewhere.

    A step is a maximal run of response_mask == 1 (one assistant turn between simulator turns).
    """
    policy_BT = response_mask_BT.bool()
    prev_BT = torch.zeros_like(policy_BT)
    prev_BT[:, 1:] = policy_BT[:, :-1]
    starts_BT = policy_BT & ~prev_BT
    step_BT = torch.cumsum(starts_BT.long(), dim=-1) - 1
    return torch.where(policy_BT, step_BT, torch.full_like(step_BT, -1))


def step_ends_from_mask(response_mask_BT: Tensor) -> Tensor:
    """(B, T) bool: True at the last token of each assistant step."""
    policy_BT = response_mask_BT.bool()
    next_BT = torch.zeros_like(policy_BT)
    next_BT[:, :-1] = policy_BT[:, 1:]
    return policy_BT & ~next_BT


def spread_over_tokens(step_adv: Sequence[Tensor], step_index_BT: Tensor, response_mask_BT: Tensor) -> Tensor:
    """adv_BT[b, t] = step_adv[b][step_index_BT[b, t]] on policy tokens, 0 on simulator/padding tokens.

    step_adv[b]: (K_b,) advantages of row b's steps; step_index_BT: (B, T), -1 off the policy's turns.
    """
    if len(step_adv) != step_index_BT.shape[0]:
        raise ValueError(f"step_adv has {len(step_adv)} rows but step_index_BT has {step_index_BT.shape[0]}")
    steps_B = (
        (step_index_BT.max(dim=-1).values + 1).tolist() if step_index_BT.shape[1] else [0] * len(step_adv)
    )
    adv_BK = torch.zeros(len(step_adv), max([1, *steps_B]), dtype=torch.float32, device=step_index_BT.device)
    for b, (adv_K, steps) in enumerate(zip(step_adv, steps_B, strict=True)):
        if adv_K.numel() != steps:
            raise ValueError(f"row {b}: tokens of {steps} steps but {adv_K.numel()} step advantages")
        adv_BK[b, :steps] = adv_K.float()
    gathered_BT = adv_BK.gather(1, step_index_BT.clamp(min=0).long())
    on_step_BT = (step_index_BT >= 0) & response_mask_BT.bool()
    return torch.where(on_step_BT, gathered_BT, torch.zeros_like(gathered_BT))


def encode_step_rewards(
    response_mask: Sequence[int] | Tensor, r_global: float, gammas: Sequence[float]
) -> Tensor:
    """The rm_scores row (T,) float32 the agent loop ships for one rollout (layout: module docstring).

    response_mask: the rollout's response mask (1 policy token, 0 simulator token), one entry per
    response token; gammas: one per assistant step (run of 1s), in order, e.g. from `step_gamma`.
    """
    mask = [int(m) for m in (response_mask.tolist() if isinstance(response_mask, Tensor) else response_mask)]
    if not mask:
        raise ValueError("empty response: there is no token to carry R_global (verl cannot score it either)")
    ends = [t for t, m in enumerate(mask) if m and (t + 1 == len(mask) or not mask[t + 1])]
    if len(ends) != len(gammas):
        raise ValueError(
            f"response_mask has {len(ends)} assistant steps (runs of 1s) but {len(gammas)} gammas were "
            "given: pass one gamma per assistant turn, in order"
        )
    rm_T = [0.0] * len(mask)
    penalty_total = 0.0
    for end, gamma in zip(ends, gammas, strict=True):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma={gamma} is outside [0, 1]; build gammas with step_gamma")
        if end == 0:  # a one-token first turn ends on the carrier: no slot for its penalty
            continue
        rm_T[end] = (gamma - 1.0) * r_global
        penalty_total += rm_T[end]
    rm_T[0] = r_global - penalty_total
    return torch.tensor(rm_T, dtype=torch.float32)


def decode_step_rewards(
    token_level_rewards_BT: Tensor, response_mask_BT: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """Inverse of `encode_step_rewards` on a right-padded batch.

    Returns r_global_B (B,) float64 = row sums, and per row the penalized step returns
    gamma_j * R_global = R_global + rm[end_j] (float64, (K_b,)).
    """
    rewards_BT = token_level_rewards_BT.double()
    r_global_B = rewards_BT.sum(dim=-1)
    ends_BT = step_ends_from_mask(response_mask_BT)
    slots_BT = ends_BT.clone()
    slots_BT[:, 0] = False  # position 0 is the carrier: a step ending there has no penalty slot
    penalty_BT = torch.where(slots_BT, rewards_BT, torch.zeros_like(rewards_BT))
    step_returns = [r_global_B[b] + penalty_BT[b][ends_BT[b]] for b in range(rewards_BT.shape[0])]
    return r_global_B, step_returns


# --- verl ----------------------------------------------------------------------------------------
def check_algorithm_config(config: Mapping[str, Any] | None) -> None:
    """Raise ValueError for verl algorithm settings that corrupt the rm_scores step layout."""
    if config is None:
        return
    if config.get("use_kl_in_reward", False):
        raise ValueError(
            "SPAR reads per-step penalties from rm_scores; algorithm.use_kl_in_reward=True adds -beta*KL "
            "to every token and corrupts them. Set algorithm.use_kl_in_reward=False "
            "(use actor.use_kl_loss for a KL term)."
        )
    correction = config.get("rollout_correction")
    if correction is None or correction.get("bypass_mode", False) or not correction.get("rollout_rs"):
        return
    # imported here: the helper pulls in ray (seconds) and is only needed when rejection sampling is on
    from verl.trainer.ppo.rollout_corr_helper import TOKEN_LEVEL_ROLLOUT_RS_OPTIONS

    token_level = {
        o.strip() for o in str(correction.get("rollout_rs")).split(",")
    } & TOKEN_LEVEL_ROLLOUT_RS_OPTIONS
    if token_level:
        raise ValueError(
            f"SPAR finds steps as runs of response_mask; token-level rejection {sorted(token_level)} zeroes "
            "tokens inside steps before the advantage is computed. Use a sequence-level "
            "algorithm.rollout_correction.rollout_rs (seq_*) or bypass_mode=True."
        )


def compute_spar_advantage(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: np.ndarray | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    global_penalty: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """verl advantage estimator "spar": (advantages, returns), both (B, T) float32, equal.

    token_level_rewards: (B, T) rm_scores in the layout of `encode_step_rewards`; response_mask:
    (B, T); index: (B,) group uid (rollouts of the same case); config: algorithm config. Other verl
    kwargs (e.g. reward_baselines) are ignored. global_penalty=True is the "spar_global" ablation
    arm (`global_penalty_gammas`: every step of a rollout takes its worst step's penalised return).
    """
    if index is None:
        raise ValueError("SPAR needs the group index (non_tensor_batch['uid']) to build the group baseline")
    check_algorithm_config(config)
    with torch.no_grad():
        r_global_B, step_returns = decode_step_rewards(token_level_rewards, response_mask)
        if (
            global_penalty
        ):  # min_j gamma_j * R_global on every step (R_global >= 0: the min is the worst gamma)
            step_returns = [torch.full_like(r, float(r.min())) if r.numel() else r for r in step_returns]
        groups: dict[Any, list[int]] = {}
        for b, uid in enumerate(index):
            groups.setdefault(uid, []).append(b)
        step_adv: list[Tensor] = [torch.zeros(0)] * len(step_returns)
        for rows in groups.values():
            mu, denom = group_baseline(r_global_B[rows])
            for b in rows:
                step_adv[b] = ((step_returns[b] - mu) / denom).float()
        adv_BT = spread_over_tokens(step_adv, step_index_from_mask(response_mask), response_mask)
    adv_BT = adv_BT.to(token_level_rewards.device)
    return adv_BT, adv_BT


def compute_global_penalty_advantage(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: np.ndarray | None = None,
    config=None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """verl advantage estimator "spar_global": the global repetition penalty ablation arm."""
    return compute_spar_advantage(
        token_level_rewards, response_mask, index, config, global_penalty=True, **kwargs
    )


def register() -> None:
    """Register verl's "spar" estimator and the "spar_global" ablation arm (idempotent)."""
    from verl.trainer.ppo import core_algos

    for name, fn in ((NAME, compute_spar_advantage), (GLOBAL_NAME, compute_global_penalty_advantage)):
        if core_algos.ADV_ESTIMATOR_REGISTRY.get(name) is not fn:
            core_algos.register_adv_est(name)(fn)
