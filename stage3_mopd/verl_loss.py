"""MOPD inside verl's built-in on-policy distillation: the `m3_mopd` distillation loss and its config.

verl 0.9.1 ships multi-teacher on-policy distillation (teacher per `data_source`, teacher log-probs
from one forward pass after each rollout). Its built-in losses cannot express MiMo's MOPD exactly:

- `k1` with `use_policy_gradient=true` and `use_task_rewards=true` optimises
  PPO(A_ORM) + coef * PPO(log pi_teacher - log pi_theta): two separately clipped surrogates added,
  with PPO's ratio clip, not one advantage A_t = sg[teacher - student] + alpha * A_ORM under the
  truncated importance weight w_t = sg[pi_theta/mu_theta] that is ZERO outside [eps_low, eps_high];
- `k3` / `forward_kl_topk` are supervised divergences, not the policy-gradient form.

So we register our own loss, `m3_mopd`, through verl's distillation-loss registry. verl calls it per
micro-batch with the student's log-probs, the routed teacher's log-probs (`teacher_logprobs`), the
task advantages (`advantages`, from `algorithm.adv_estimator=spar`) and `old_log_probs`; it returns
the per-token loss -w_t A_t log pi_theta(y_t) and verl aggregates it with the actor's
`loss_agg_mode` (we require `seq-mean-token-mean`, the 1/|y| of the formula).

Settings that make verl's surrounding code compute exactly the formula (checked by `check_config`):
- `distillation.distillation_loss.use_policy_gradient=false` (verl then aggregates our per-token loss
  as is) and `use_task_rewards=false` (otherwise verl adds a second PPO loss on A_ORM; A_ORM is
  already inside A_t with weight alpha). Task rewards are still computed and turned into advantages:
  that is the reward function and estimator, which distillation does not switch off.
- `algorithm.rollout_correction.bypass_mode=true`: old_log_probs = the inference engine's log-probs,
  so exp(log_prob - old_log_probs) is pi_theta/mu_theta. Without it verl recomputes old_log_probs
  with the trainer and w_t would miss the train/inference mismatch it exists to catch.
- `loss_max_clamp: null` (verl's clamp would cut A_t * log pi terms).
alpha, eps_low and eps_high live in `MOPDLossConfig`, a subclass of verl's DistillationLossConfig
selected with `_target_` in configs/verl/stage3_common.yaml, so verl's own config validation builds it.

Registered in every Ray worker through the `verl.plugins` entry point `m3_mopd` (pyproject.toml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.workers.config import DistillationLossConfig

from stage3_mopd.losses import mopd_advantages, mopd_token_loss, truncated_importance_weight

NAME = "m3_mopd"


@dataclass
class MOPDLossConfig(DistillationLossConfig):
    """verl's distillation-loss config plus the MOPD knobs (defaults documented in configs/stage3.yaml)."""

    alpha: float = 1.0
    eps_low: float = 0.5
    eps_high: float = 2.0


def compute_mopd_loss(config, distillation_config, model_output: dict, data) -> tuple[Any, dict]:
    """verl DistillationLossFn: per-token -w_t A_t log pi_theta(y_t) of shape (bsz, resp_len)."""
    from verl.workers.utils.padding import no_padding_2_padding

    loss_cfg = distillation_config.distillation_loss
    student = no_padding_2_padding(model_output["log_probs"], data)
    teacher = no_padding_2_padding(data["teacher_logprobs"], data).squeeze(-1)
    padded = data.select("response_mask", "old_log_probs", "advantages").to_padded_tensor()
    mask = padded["response_mask"].bool()
    adv = mopd_advantages(teacher, student, padded["advantages"], loss_cfg.alpha)
    w, kept = truncated_importance_weight(
        student, padded["old_log_probs"], loss_cfg.eps_low, loss_cfg.eps_high
    )
    n = mask.sum().clamp(min=1)
    metrics = {
        "distillation/reverse_kl": float(((student - teacher).detach() * mask).sum() / n),
        "distillation/is_masked_fraction": float(((~kept) & mask).sum() / n),
    }
    return mopd_token_loss(student, adv, w), metrics


def register() -> None:
    """Add `m3_mopd` to verl's distillation-loss registry (idempotent)."""
    from verl.trainer.distillation import losses

    if NAME not in losses.DISTILLATION_LOSS_REGISTRY:
        settings = losses.DistillationLossSettings(names=[NAME], use_estimator=True)
        losses.register_distillation_loss(settings)(compute_mopd_loss)


def check_config(cfg) -> None:
    """ValueError unless a composed verl config computes the MOPD formula (see the module docstring)."""
    dist = cfg.distillation
    loss = dist.distillation_loss
    problems = []
    if not dist.enabled:
        problems.append("distillation.enabled must be true")
    if loss.loss_mode != NAME:
        problems.append(f"distillation.distillation_loss.loss_mode must be {NAME}")
    if loss.use_policy_gradient or loss.use_task_rewards:
        problems.append("use_policy_gradient and use_task_rewards must be false (A_ORM is inside A_t)")
    if loss.get("loss_max_clamp") is not None:
        problems.append("distillation_loss.loss_max_clamp must be null")
    if cfg.actor_rollout_ref.actor.loss_agg_mode != "seq-mean-token-mean":
        problems.append("actor.loss_agg_mode must be seq-mean-token-mean (the 1/|y| of the formula)")
    if not (cfg.algorithm.get("rollout_correction") or {}).get("bypass_mode", False):
        problems.append("algorithm.rollout_correction.bypass_mode must be true (w_t = pi_theta/mu_theta)")
    if not cfg.actor_rollout_ref.rollout.get("calculate_log_probs", False):
        problems.append("actor_rollout_ref.rollout.calculate_log_probs must be true (mu_theta)")
    if problems:
        raise ValueError("MOPD verl config: " + "; ".join(problems))


register()
