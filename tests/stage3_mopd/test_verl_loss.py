"""`m3_mopd` inside verl: its distillation-loss path computes our MOPD loss; configs validate."""

import pytest
import torch

from m3.rl.verl_config import compose_verl_config, validate
from stage3_mopd.losses import mopd_loss
from stage3_mopd.verl_loss import MOPDLossConfig, check_config


def _micro_batch(student, teacher, old, adv, mask, prompt_len=3):
    """A verl micro-batch: padded prompts/responses and a no-padding (jagged) teacher log-prob tensor
    whose value at position p-1+i belongs to response token i, as verl's model outputs are laid out."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    B, R = student.shape
    L = prompt_len + R

    def flat(x):
        out = torch.zeros(B * L, *x.shape[2:])
        for b in range(B):
            out[b * L + prompt_len - 1 : b * L + prompt_len - 1 + R] = x[b]
        return out

    data = TensorDict(
        {
            "prompts": torch.zeros(B, prompt_len, dtype=torch.long),
            "responses": torch.zeros(B, R, dtype=torch.long),
            "attention_mask": torch.ones(B, L, dtype=torch.long),
            "response_mask": mask,
            "old_log_probs": old,
            "advantages": adv,
            "teacher_logprobs": torch.nested.as_nested_tensor(
                list(flat(teacher[..., None]).split(L)), layout=torch.jagged
            ),
        },
        batch_size=[B],
    )
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    return data, flat(student)


def test_verl_distillation_loss_with_m3_mopd_equals_our_formula():
    from verl.trainer.distillation.losses import distillation_loss
    from verl.workers.config import ActorConfig, DistillationConfig, PolicyLossConfig

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4) - 2, torch.randn(2, 4) - 2
    old = student + 0.5 * torch.randn(2, 4)  # some tokens fall outside the [0.5, 2] window
    adv, mask = torch.randn(2, 4), torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]])
    data, flat_student = _micro_batch(student, teacher, old, adv, mask)
    actor = ActorConfig(
        strategy="fsdp",
        ppo_micro_batch_size_per_gpu=1,
        rollout_n=1,
        ppo_mini_batch_size=2,
        loss_agg_mode="seq-mean-token-mean",
        policy_loss=PolicyLossConfig(loss_mode="vanilla"),
    )
    loss_cfg = MOPDLossConfig(
        loss_mode="m3_mopd",
        use_policy_gradient=False,
        use_task_rewards=False,
        loss_max_clamp=None,
        alpha=0.7,
        eps_low=0.5,
        eps_high=2.0,
    )
    ours, stats = mopd_loss(student, teacher, old, adv, mask.float(), 0.7, 0.5, 2.0)
    theirs, metrics = distillation_loss(
        actor, DistillationConfig(distillation_loss=loss_cfg), {"log_probs": flat_student}, data
    )
    assert float(theirs) == pytest.approx(float(ours), rel=1e-6)
    assert metrics["distillation/reverse_kl"] == pytest.approx(float(stats["reverse_kl"]), rel=1e-6)
    assert metrics["distillation/is_masked_fraction"] == pytest.approx(float(stats["masked_fraction"]))


@pytest.mark.parametrize(
    "name,size", [("stage3_mopd", "qwen3_8b"), ("stage3_mopd_megatron", "qwen3_235b_a22b")]
)
def test_cluster_configs_validate_into_verl_dataclasses(name, size):
    backend = "fsdp2" if name == "stage3_mopd" else "megatron"
    cfg = compose_verl_config(name, [f"{backend}={size}", f"mopd_teachers={size}"])
    built = validate(cfg)
    check_config(cfg)
    dist = built["distillation"]
    assert isinstance(dist.distillation_loss, MOPDLossConfig) and dist.distillation_loss.alpha == 1.0
    # one teacher per domain, routed by the rows' data_source values
    assert sorted(dist.teacher_models) == ["m3_general", "m3_healthcare", "m3_inquiry"]
    assert dist.teacher_key == "data_source"


@pytest.mark.parametrize(
    "override,message",
    [
        ("distillation.distillation_loss.use_task_rewards=true", "use_task_rewards"),
        ("algorithm.rollout_correction.bypass_mode=false", "bypass_mode"),
        ("actor_rollout_ref.actor.loss_agg_mode=token-mean", "seq-mean-token-mean"),
        ("distillation.distillation_loss.loss_max_clamp=10.0", "loss_max_clamp"),
    ],
)
def test_settings_that_break_the_formula_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        check_config(compose_verl_config("stage3_mopd", [override]))
