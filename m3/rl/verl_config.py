"""Compose, validate and launch M3's verl jobs: configs/verl/*.yaml on top of verl's own Hydra config.

    from m3.rl.verl_config import compose_verl_config, validate, ray_job_command
    cfg = compose_verl_config("stage1_expert_megatron", ["megatron=qwen3_235b_a22b"])
    validate(cfg)  # on CPU: builds verl's config dataclasses, so a wrong key or value fails here
    subprocess.run(ray_job_command(cfg, address="http://head:8265"), check=True)

CLI (validates, then prints the command): `python -m m3.rl.verl_config stage1_expert fsdp2=qwen3_30b_a3b`.

Entry configs: stage1_expert (FSDP2, `ppo_trainer` base) and stage1_expert_megatron
(`ppo_megatron_trainer` base); model size is the `fsdp2=` / `megatron=` group (qwen3_8b,
qwen3_30b_a3b, qwen3_235b_a22b); rollout engine `actor_rollout_ref.rollout.name=vllm|sglang`.

Launch: `ray_job_command` runs verl's own entry point, `python -m verl.trainer.main_ppo
--config-name=<verl base> <overrides>`, where the overrides are exactly the differences between our
composed config and verl's base (round-trip tested). The job therefore needs no copy of configs/ on
the cluster, only this package installed on every node (its `verl.plugins` entry point registers
SPAR, the agent loop and the rewards in each Ray worker).

What `validate` checks, and what it cannot (verl 0.9.1, CPU, no checkpoint):
- builds, as verl does at start-up: actor, ref (after verl's own log_prob_* -> ppo_* renames),
  rollout, algorithm, and distillation / reward model when enabled; then verl's `validate_config`.
- key-checks every other `_target_` node against its dataclass fields. Those are not built because
  verl itself never builds them from this config: `model` (HFModelConfig reads the checkpoint's
  config.json), `critic` (off for SPAR), `reward` (verl reads it as a dict; building
  RewardManagerConfig fails in 0.9.1), the profilers. Keys verl's own YAML declares but its
  dataclass lacks are listed in _RAW_KEYS.
- keys that verl's base config lacks are errors outside `_target_` nodes and `data` (custom datasets
  read their own keys): Hydra lets a YAML file add keys silently, e.g. a typo under `trainer`.
- Megatron: McoreActorConfig/McoreEngineConfig build without megatron-core, so the Megatron variants
  validate fully on CPU; whether the parallel sizes fit the model is only known on the cluster.
- M3 rules: rollout engine vllm|sglang; estimator and policy loss registered; SPAR's requirements
  (m3.rl.spar.check_algorithm_config, and no colocated reward model: it rewrites rm_scores).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import shlex
import sys
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from m3.config import compose_dict
from m3.rl import spar

VERL_CONFIG_MODULE = "verl.trainer.config"
# composed config's `model_engine` (set by verl's model_engine group) -> verl entry config it came from
VERL_BASE = {"dp": "ppo_trainer", "megatron": "ppo_megatron_trainer"}
ROLLOUT_ENGINES = ("vllm", "sglang")

# Keys verl's own YAML puts in a `_target_` node although its dataclass has no such field: verl
# reads them before (or instead of) building the dataclass.
_RAW_KEYS: dict[str, set[str]] = {
    # renamed to ppo_* by verl.workers.engine_workers.init_model before the ref is built
    "actor_rollout_ref.ref": {
        "log_prob_micro_batch_size",
        "log_prob_micro_batch_size_per_gpu",
        "log_prob_use_dynamic_bsz",
        "log_prob_max_token_len_per_gpu",
    },
    "reward": {"custom_reward_function"},  # read as a dict by the reward loop
    "global_profiler": {"steps", "profile_continuous_steps"},  # read as a dict by the trainer
    "global_profiler.global_tool_config.nsys": {"controller_nsight_options", "worker_nsight_options"},
}


def compose_verl_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose configs/verl/<name>.yaml (which pulls verl's config through hydra.searchpath)."""
    return compose_dict(f"verl/{name}", overrides)


@functools.cache
def _verl_base(base: str) -> DictConfig:
    return compose_verl_base(base)


def compose_verl_base(base: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose one of verl's own entry configs (what `python -m verl.trainer.main_ppo` would load)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(VERL_CONFIG_MODULE, version_base=None):
        return hydra_compose(config_name=base, overrides=list(overrides or []))


def verl_base_name(cfg: DictConfig) -> str:
    engine = cfg.get("model_engine")
    if engine not in VERL_BASE:
        raise ValueError(f"model_engine={engine!r}: compose from verl's ppo_trainer or ppo_megatron_trainer")
    return VERL_BASE[engine]


# --- validation ----------------------------------------------------------------------------------
def target_nodes(node: Any, path: str = "") -> list[tuple[str, DictConfig]]:
    found = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append((path, node))
        for key in node:
            found += target_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))
    return found


def added_keys(ours: Any, base: Any, path: str = "") -> list[str]:
    """Paths present in `ours` and absent from `base` (plain containers)."""
    if not (isinstance(ours, dict) and isinstance(base, dict)):
        return []
    added = []
    for key, value in ours.items():
        sub = f"{path}.{key}" if path else str(key)
        added += added_keys(value, base[key], sub) if key in base else [sub]
    return added


def unknown_fields(cfg: DictConfig, raw_keys: dict[str, set[str]] | None = None) -> list[str]:
    """One error per `_target_` node holding keys its dataclass lacks (Hydra lets a YAML add them);
    `raw_keys[path]` lists keys verl reads from that node before building it."""
    errors = []
    for path, node in target_nodes(cfg):
        fields = {f.name for f in dataclasses.fields(get_class(node._target_))} | {"_target_"}
        unknown = set(node.keys()) - fields - (raw_keys or {}).get(path, set())
        errors += [f"{path}.{key}: not a field of {node._target_}" for key in sorted(unknown)]
    return errors


def _prepare_ref(cfg: DictConfig) -> DictConfig:
    """The ref node as verl.workers.engine_workers.init_model reshapes it before building it."""
    ref = copy.deepcopy(cfg.actor_rollout_ref.ref)
    with open_dict(ref):
        ref.ppo_mini_batch_size = cfg.actor_rollout_ref.actor.ppo_mini_batch_size
        ref.ppo_micro_batch_size = ref.pop("log_prob_micro_batch_size", None)
        ref.ppo_micro_batch_size_per_gpu = ref.pop("log_prob_micro_batch_size_per_gpu", None)
        ref.use_dynamic_bsz = ref.pop("log_prob_use_dynamic_bsz", False)
        ref.ppo_max_token_len_per_gpu = ref.pop("log_prob_max_token_len_per_gpu", None)
    return ref


def _check_m3_rules(cfg: DictConfig) -> None:
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn

    spar.register()  # as the plugin entry point does in every worker

    engine = cfg.actor_rollout_ref.rollout.name
    if engine not in ROLLOUT_ENGINES:
        raise ValueError(f"actor_rollout_ref.rollout.name={engine!r}: use one of {ROLLOUT_ENGINES}")
    get_adv_estimator_fn(cfg.algorithm.adv_estimator)  # ValueError if unknown
    get_policy_loss_fn(cfg.actor_rollout_ref.actor.policy_loss.loss_mode)  # ValueError if unknown
    if cfg.algorithm.adv_estimator in (spar.NAME, spar.GLOBAL_NAME):
        spar.check_algorithm_config(cfg.algorithm)
        if not cfg.trainer.get("use_v1", False):
            # only the v1 trainer builds rm_scores through AgentLoopOutput.as_dict, where the
            # consultation loop writes its per-step rewards; the legacy path keeps one last-token score
            raise ValueError("SPAR needs verl's v1 trainer: set trainer.use_v1=true")
        rm = cfg.reward.reward_model
        if rm.enable and not rm.enable_resource_pool:
            raise ValueError(
                "a colocated reward model rewrites rm_scores with one last-token score and erases SPAR's "
                "step penalties: set reward.reward_model.enable_resource_pool=true"
            )


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Raise ValueError unless verl accepts `cfg`; return the dataclasses built, by config path."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils import omega_conf_to_dataclass
    from verl.utils.config import validate_config

    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)  # verl's TaskRunner resolves before building anything
    _check_m3_rules(cfg)

    errors = unknown_fields(cfg, _RAW_KEYS)
    target_paths = {p for p, _ in target_nodes(cfg)}

    base = OmegaConf.to_container(_verl_base(verl_base_name(cfg)), resolve=False)
    for added in added_keys(OmegaConf.to_container(cfg, resolve=False), base):
        parents = {added.rsplit(".", n)[0] for n in range(1, added.count(".") + 1)}
        if not added.startswith("data.") and not parents & target_paths:
            errors.append(f"{added}: verl's {verl_base_name(cfg)} config has no such key")
    if errors:
        raise ValueError("verl config errors (fix the key or drop it):\n  " + "\n  ".join(errors))

    nodes = {
        "actor_rollout_ref.actor": cfg.actor_rollout_ref.actor,
        "actor_rollout_ref.ref": _prepare_ref(cfg),
        "actor_rollout_ref.rollout": cfg.actor_rollout_ref.rollout,
        "algorithm": cfg.algorithm,
    }
    if cfg.distillation.get("enabled", False):
        nodes["distillation"] = cfg.distillation
    if cfg.reward.reward_model.enable:
        nodes["reward.reward_model"] = cfg.reward.reward_model
    built = {}
    for path, node in nodes.items():
        try:
            built[path] = omega_conf_to_dataclass(node)
        except Exception as e:  # hydra wraps the dataclass's TypeError/AssertionError: re-raise with the path
            raise ValueError(f"{path}: verl rejects this node: {e}") from e
    try:
        validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except AssertionError as e:
        raise ValueError(f"verl validate_config: {e}") from e
    return built


# --- launch --------------------------------------------------------------------------------------
def _hydra_value(value: Any) -> str:
    """`value` in Hydra's override grammar (strings quoted so they stay strings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot write {type(value).__name__} {value!r} as a Hydra override")


def config_diff(ours: Any, base: Any, path: str) -> list[str]:
    """Hydra overrides that turn the plain container `base` into `ours` (+ adds, ~ deletes)."""
    if isinstance(ours, dict) and isinstance(base, dict):
        out = []
        for key, value in ours.items():
            sub = f"{path}.{key}" if path else str(key)
            out += config_diff(value, base[key], sub) if key in base else [f"+{sub}={_hydra_value(value)}"]
        out += [f"~{path}.{key}" if path else f"~{key}" for key in base if key not in ours]
        return out
    return [] if ours == base else [f"{path}={_hydra_value(ours)}"]


def hydra_overrides(cfg: DictConfig) -> list[str]:
    """Overrides that turn verl's base config into `cfg` (interpolations kept, not resolved)."""
    base = OmegaConf.to_container(_verl_base(verl_base_name(cfg)), resolve=False)
    return config_diff(OmegaConf.to_container(cfg, resolve=False), base, "")


def ray_job_command(cfg: DictConfig, address: str | None = None) -> list[str]:
    """argv of `ray job submit [--address A] -- python3 -m verl.trainer.main_ppo --config-name=B ...`.

    ray joins the entrypoint argv with shlex, so every override reaches Hydra as one argument.
    """
    head = ["ray", "job", "submit"] + (["--address", address] if address else [])
    entry = ["python3", "-m", "verl.trainer.main_ppo", f"--config-name={verl_base_name(cfg)}"]
    return [*head, "--", *entry, *hydra_overrides(cfg)]


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m m3.rl.verl_config <config name> [hydra overrides ...]")
    cfg = compose_verl_config(argv[0], argv[1:])
    validate(cfg)
    print(shlex.join(ray_job_command(cfg)))


if __name__ == "__main__":
    main(sys.argv[1:])
