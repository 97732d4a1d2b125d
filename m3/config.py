"""Structured configs (Hydra + dataclasses), composition, hashing and secret redaction.

Every entry point composes its YAML from `configs/` on top of a dataclass schema registered here,
so a misspelt key or a wrong type fails before any work starts:

    from m3.config import compose
    cfg = compose("base", ["model=small_qwen3_moe", "seed=1"])      # -> BaseRunConfig

Shared groups: `model` (tiny_qwen3_moe, small_qwen3_moe, qwen3_8b, qwen3_30b_a3b, qwen3_235b_a22b),
`scale` (local, cluster). Stage schemas add their own group next to these.
`config_hash` is what the registry and the demo use to recognise "same config, already built";
`redact` is applied before any config is logged to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    return Path(os.environ.get("M3_CONFIG_DIR", REPO_ROOT / "configs")).resolve()


@dataclass
class ModelConfig:
    """Which model a stage starts from and its shape (real shapes for the cluster presets).

    source: `tiny` builds a checkpoint with `m3.model.tiny` (preset = tiny|small); `gguf` converts
    the real preset's packaged GGUF (`m3.model.real`); `hf` loads `path`, a local directory or a hub
    id (hub ids need network and are registered by reference).
    alias: the registry alias every stage of this preset reads and registers (`candidate` for the
    tiny and cluster presets, `real` for the real preset), so presets never overwrite each other.
    `model=` is the one size setting of every entry point: local presets run on CPU, the real
    shapes (qwen3_8b, qwen3_30b_a3b, qwen3_235b_a22b) pick the cluster configs of the same name.
    """

    name: str = MISSING
    alias: str = "candidate"
    source: str = "tiny"
    preset: str | None = None
    path: str | None = None
    architecture: str = "Qwen3MoeForCausalLM"
    hidden_size: int = MISSING
    num_hidden_layers: int = MISSING
    num_attention_heads: int = MISSING
    num_key_value_heads: int = MISSING
    head_dim: int = MISSING
    intermediate_size: int = 0  # dense MLP width (dense models)
    num_experts: int = 0  # 0 = dense
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    vocab_size: int = 151936
    dtype: str = "bfloat16"
    trust_remote_code: bool = False  # off by default: never execute a checkpoint's code unasked

    def __post_init__(self) -> None:
        if self.source not in ("tiny", "gguf", "hf"):
            raise ValueError(f"model.source must be 'tiny', 'gguf' or 'hf', got {self.source!r}")


CLUSTER_SIZES = ("qwen3_8b", "qwen3_30b_a3b", "qwen3_235b_a22b")  # model presets with verl configs


@dataclass
class ScaleConfig:
    """local: one CPU process, HF generation. cluster: verl on Ray (FSDP2 or Megatron backend)."""

    name: str = "local"  # local | cluster
    backend: str = "fsdp2"  # cluster training backend: fsdp2 | megatron
    ray_address: str | None = None  # cluster: the Ray head (None: ray's own default / RAY_ADDRESS)

    def __post_init__(self) -> None:
        if self.name not in ("local", "cluster"):
            raise ValueError(f"scale must be local or cluster, got {self.name!r}")
        if self.backend not in ("fsdp2", "megatron"):
            raise ValueError(f"scale.backend must be fsdp2 or megatron, got {self.backend!r}")


def cluster_size(model: ModelConfig) -> str:
    """The verl config group (`fsdp2=`, `megatron=`, ...) of a model preset; ValueError for CPU presets."""
    if model.name not in CLUSTER_SIZES:
        raise ValueError(
            f"model={model.name} is a CPU preset: cluster runs take model={'|'.join(CLUSTER_SIZES)}"
        )
    return model.name


@dataclass
class TrackingConfig:
    """MLflow. tracking_uri None = $MLFLOW_TRACKING_URI or the sqlite file under mlruns/."""

    tracking_uri: str | None = None
    experiment: str = "m3"


@dataclass
class BaseRunConfig:
    """`m3 base`: build (tiny) or reference (real) the base model and register it as m3-base."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    register_name: str = "m3-base"
    by_reference: bool = False  # register a manifest (paths + sha256) instead of copying


_SCHEMAS: dict[str, type] = {"base_schema": BaseRunConfig}


def register_schema(name: str, node: type) -> None:
    """Make a dataclass available to YAML defaults lists as `name` (e.g. `- stage1_schema`)."""
    _SCHEMAS[name] = node


def _store_schemas() -> None:
    cs = ConfigStore.instance()
    for name, node in _SCHEMAS.items():
        cs.store(name=name, node=node)


def compose_dict(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides; validated against its schema.

    `config_name` may name a sub-directory ("eval/healthbench"): that directory is then the config
    root, so evaluation configs can take a plain `model=models:/...` URI without Hydra reading it
    as a choice from the `model` group.
    """
    _store_schemas()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    root = config_dir()
    if "/" in config_name:
        sub, config_name = config_name.rsplit("/", 1)
        root = root / sub
    with initialize_config_dir(config_dir=str(root), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def compose(config_name: str, overrides: list[str] | None = None) -> Any:
    """Like `compose_dict` but returns the dataclass instance (runs `__post_init__` checks)."""
    return OmegaConf.to_object(compose_dict(config_name, overrides))


def to_container(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


# --- secrets ---------------------------------------------------------------------------------
REDACTED = "***REDACTED***"
_SECRET_KEY = re.compile(
    r"(^|[_\-.])(api[_\-]?key|access[_\-]?key|secret[_\-]?key|private[_\-]?key"
    r"|(hf|access|auth|api|bearer|refresh|session)[_\-]?token|secret|password|passwd|credentials?)$",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{16,}|Bearer\s+\S+)")


def _secret_env_values() -> list[str]:
    # a snapshot of the keys, then .get: another thread (MLflow's telemetry) may unset a variable
    # while we read, and iterating os.environ.items() would then raise KeyError
    values = ((k, os.environ.get(k)) for k in list(os.environ))
    return [v for k, v in values if v is not None and _SECRET_KEY.search(k) and len(v) >= 6]


def redact(obj: Any) -> Any:
    """Copy of `obj` with secrets replaced: values under secret-looking keys (api_key, hf_token,
    password, ...), strings that look like keys (sk-..., hf_..., Bearer ...), and the values of
    secret-looking environment variables wherever they appear."""
    env_secrets = _secret_env_values()

    def scrub(value: Any, key: str | None) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [scrub(v, None) for v in value]
        if key is not None and _SECRET_KEY.search(key) and value not in (None, ""):
            return REDACTED
        if isinstance(value, str):
            for secret in env_secrets:
                value = value.replace(secret, REDACTED)
            return _SECRET_VALUE.sub(REDACTED, value)
        return value

    return scrub(obj, None)


def config_hash(cfg: Any, exclude: tuple[str, ...] = ("tracking",)) -> str:
    """12-hex sha256 of the resolved, redacted config without run-location keys.

    Two runs with the same hash would produce the same artifact from the same inputs.
    """
    data = redact(to_container(cfg) if not isinstance(cfg, dict) else cfg)
    for key in exclude:
        data.pop(key, None)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def log_config(cfg: Any) -> None:
    """Log the resolved, redacted config to the active MLflow run (config.yaml + flat params)."""
    import mlflow

    data = redact(to_container(cfg) if not isinstance(cfg, dict) else cfg)
    mlflow.log_dict(data, "config.yaml")
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = str(node)[:500]

    walk(data, "")
    items = sorted(flat.items())
    for i in range(0, len(items), 100):  # MLflow caps a log_params batch at 100
        mlflow.log_params(dict(items[i : i + 100]))


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: servers bind there unless told otherwise."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve anywhere
