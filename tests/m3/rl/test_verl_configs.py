"""Every cluster config composes on verl's own config and passes validation; typos fail on CPU."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from m3.rl.verl_config import compose_verl_base, compose_verl_config, ray_job_command, validate

ENTRIES = {"fsdp2": "stage1_expert", "megatron": "stage1_expert_megatron"}
NODES = {"qwen3_8b": 1, "qwen3_30b_a3b": 2, "qwen3_235b_a22b": 8}


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("size", sorted(NODES))
@pytest.mark.parametrize("backend", sorted(ENTRIES))
def test_cluster_config_composes_and_validates(backend, size, engine):
    cfg = compose_verl_config(
        ENTRIES[backend], [f"{backend}={size}", f"actor_rollout_ref.rollout.name={engine}"]
    )
    built = validate(cfg)

    assert cfg.algorithm.adv_estimator == "spar" and not cfg.algorithm.use_kl_in_reward
    actor, rollout = built["actor_rollout_ref.actor"], built["actor_rollout_ref.rollout"]
    assert actor.policy_loss.loss_mode == "gspo"
    assert (rollout.name, rollout.mode) == (engine, "async")
    assert rollout.multi_turn.enable and rollout.agent.default_agent_loop == "m3_consultation"
    assert cfg.reward.custom_reward_function.path == "pkg://m3.rl.rewards"
    assert cfg.reward.custom_reward_function.name == "compute_score"
    assert cfg.trainer.nnodes == NODES[size] and cfg.trainer.n_gpus_per_node == 8
    world = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    assert world % rollout.tensor_model_parallel_size == 0
    if backend == "fsdp2":
        assert type(actor).__name__ == "FSDPActorConfig" and actor.strategy == "fsdp2"
        assert actor.fsdp_config.strategy == "fsdp2"  # what the engine reads
    else:
        m = actor.megatron
        assert type(actor).__name__ == "McoreActorConfig"
        # Megatron's rank layout: dense TP x PP x CP and experts EP x ETP x PP must both tile the world
        assert (
            world % (m.tensor_model_parallel_size * m.pipeline_model_parallel_size * m.context_parallel_size)
            == 0
        )
        assert (
            world
            % (m.expert_model_parallel_size * m.expert_tensor_parallel_size * m.pipeline_model_parallel_size)
            == 0
        )


def test_235b_megatron_layout():
    cfg = compose_verl_config("stage1_expert_megatron", ["megatron=qwen3_235b_a22b"])
    m = validate(cfg)["actor_rollout_ref.actor"].megatron
    assert (m.tensor_model_parallel_size, m.pipeline_model_parallel_size, m.expert_model_parallel_size) == (
        4,
        4,
        8,
    )
    layers = m.override_transformer_config
    # 94 layers over 4 stages: 23 + 24 + 24 + 23
    first, last = layers["num_layers_in_first_pipeline_stage"], layers["num_layers_in_last_pipeline_stage"]
    assert (94 - first - last) % (m.pipeline_model_parallel_size - 2) == 0


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "+actor_rollout_ref.actor.ppo_mini_batchsize=8",
            "ppo_mini_batchsize",
        ),  # typo inside a dataclass node
        ("+trainer.totl_epochs=2", "trainer.totl_epochs"),  # typo where verl has no dataclass
        ("actor_rollout_ref.rollout.name=hf", "vllm"),
        ("actor_rollout_ref.actor.policy_loss.loss_mode=gspo2", "gspo2"),
        ("actor_rollout_ref.actor.use_dynamic_bsz=false", "ppo_micro_batch_size"),  # verl's own check
        ("algorithm.use_kl_in_reward=true", "use_kl_in_reward"),
        ("reward.reward_model.enable=true", "enable_resource_pool"),  # a colocated RM erases step penalties
        ("trainer.use_v1=false", "use_v1"),  # the legacy trainer never writes SPAR's step rewards
    ],
)
def test_wrong_settings_fail_validation(override, message):
    cfg = compose_verl_config("stage1_expert", [override])
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_typo_without_plus_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="ppo_mini_batchsize"):
        compose_verl_config("stage1_expert", ["actor_rollout_ref.actor.ppo_mini_batchsize=8"])


@pytest.mark.parametrize(
    "name, overrides, base",
    [
        ("stage1_expert", ["fsdp2=qwen3_30b_a3b"], "ppo_trainer"),
        (
            "stage1_expert_megatron",
            ["megatron=qwen3_235b_a22b", "actor_rollout_ref.rollout.name=sglang"],
            "ppo_megatron_trainer",
        ),
    ],
)
def test_ray_job_command_rebuilds_the_same_config_from_verls_entry(name, overrides, base):
    cfg = compose_verl_config(name, overrides)
    cmd = ray_job_command(cfg, address="http://head:8265")
    head = ["ray", "job", "submit", "--address", "http://head:8265", "--"]
    head += ["python3", "-m", "verl.trainer.main_ppo", f"--config-name={base}"]
    assert cmd[: len(head)] == head
    assert "algorithm.adv_estimator='spar'" in cmd
    rebuilt = compose_verl_base(base, cmd[len(head) :])  # what main_ppo's Hydra will compose
    assert OmegaConf.to_container(rebuilt, resolve=False) == OmegaConf.to_container(cfg, resolve=False)
