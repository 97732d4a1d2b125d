"""Every YAML file under configs/ composes with its schema, and holds only what differs from it.

Defaults live in the dataclasses (one source of truth); an entry YAML names its groups and the
values that differ. A YAML value equal to the schema default is dead weight that silently stops
tracking the dataclass, so it fails here. configs/verl/ holds verl's own configs, composed and
validated into verl's dataclasses by tests/m3/rl/test_verl_configs.py.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import demo.run  # noqa: F401  (each entry module registers its schema)
import draft_eagle3.train  # noqa: F401
import eval.hallu.run  # noqa: F401
import eval.healthbench.run  # noqa: F401
import eval.osce.run  # noqa: F401
import quant.quantize  # noqa: F401
import serve.launch  # noqa: F401
import stage1_expert_rl.train  # noqa: F401
import stage2_distill.train  # noqa: F401
import stage3_mopd.train  # noqa: F401
from m3.config import _SCHEMAS, compose, config_dir

ROOT = config_dir()
ENTRIES = sorted(
    str(p.relative_to(ROOT).with_suffix(""))
    for p in ROOT.rglob("*.yaml")
    if p.relative_to(ROOT).parts[0] not in ("verl", "model", "scale", "preset")
)
GROUPS = {g: sorted(p.stem for p in (ROOT / g).glob("*.yaml")) for g in ("model", "scale")}


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def _schema_of(name: str):
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / f"{name}.yaml"))
    schema = next(d for d in raw["defaults"] if isinstance(d, str) and d.endswith("_schema"))
    return raw, _SCHEMAS[schema]


def test_every_entry_config_is_found():
    assert {"base", "demo", "draft", "quant", "stage1", "stage2", "stage3", "serve/serve"} <= set(ENTRIES)
    assert {"eval/healthbench", "eval/hallu", "eval/osce"} <= set(ENTRIES)


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_composes_into_its_schema(name):
    _, schema = _schema_of(name)
    assert isinstance(compose(name), schema)


@pytest.mark.parametrize("name", ENTRIES)
def test_yaml_holds_only_what_differs_from_the_dataclass(name):
    raw, schema = _schema_of(name)
    defaults = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
    same = []
    for path, value in _leaves({k: v for k, v in raw.items() if k != "defaults"}):
        node = defaults
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node == value:
            same.append(f"{path}={value!r}")
    assert not same, f"configs/{name}.yaml restates dataclass defaults: {same}; delete them from the YAML"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_option_composes(group):
    entry = "stage1"  # takes both the model and the scale group
    for option in GROUPS[group]:
        cfg = compose(entry, [f"{group}={option}"])
        assert getattr(cfg, group).name == option


def test_one_model_setting_picks_size_and_alias():
    local = compose("stage1")
    assert (local.model.name, local.base) == ("tiny_qwen3_moe", "models:/m3-base@candidate")
    cluster = compose("stage1", ["scale=cluster"])
    assert cluster.model.name == "qwen3_8b"  # a cluster run trains a real shape by default
    big = compose("stage3", ["scale=cluster", "model=qwen3_235b_a22b"])
    assert big.model.name == "qwen3_235b_a22b"


def test_demo_presets_compose():
    real = compose("demo", ["preset=real"])
    assert (real.model, real.alias, real.baseline) == ("smollm2_135m", "real", True)
    assert all(step in demo.run.STEPS for step in real.step_args)
    model = compose("base", [f"model={real.model}"]).model
    assert (model.source, model.alias, model.num_hidden_layers) == ("gguf", "real", 30)
    tiny = compose("demo")
    assert (tiny.model, tiny.alias, tiny.step_args) == ("tiny_qwen3_moe", "candidate", {})
