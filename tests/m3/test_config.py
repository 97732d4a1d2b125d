"""Structured configs: composition of every model preset, validation errors, redaction, hashing."""

from __future__ import annotations

import json

import pytest
from hydra.errors import ConfigCompositionException

from m3.config import REDACTED, BaseRunConfig, compose, config_hash, log_config, redact


@pytest.mark.parametrize(
    "model,layers,experts",
    [
        ("tiny_qwen3_moe", 6, 4),
        ("small_qwen3_moe", 8, 8),
        ("qwen3_8b", 36, 0),
        ("qwen3_30b_a3b", 48, 128),
        ("qwen3_235b_a22b", 94, 128),
    ],
)
def test_every_model_preset_composes(model, layers, experts):
    cfg = compose("base", [f"model={model}"])
    assert isinstance(cfg, BaseRunConfig)
    assert cfg.model.num_hidden_layers == layers and cfg.model.num_experts == experts
    assert cfg.model.trust_remote_code is False


def test_typo_and_wrong_type_fail_before_work():
    with pytest.raises(ConfigCompositionException, match="hiden_size"):
        compose("base", ["model.hiden_size=3"])
    with pytest.raises(ConfigCompositionException, match="seed"):
        compose("base", ["seed=abc"])
    with pytest.raises(ValueError, match="model.source"):
        compose("base", ["model.source=ftp"])


def test_redact_keys_values_and_env(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_API_KEY", "zz-very-secret-value")
    data = {
        "judge": {
            "api_key": "abc",
            "api_key_env": "OPENAI_API_KEY",
            "max_tokens": 10,
            "url": "http://x?key=zz-very-secret-value",
        },
        "hf_token": "hf_abcdefghijklmnopqrstuvwxyz",
        "note": "header Bearer abc.def and sk-1234567890abcdef",
        "teacher": {"key": "inquiry", "eos_token": "<|im_end|>"},
    }
    out = redact(data)
    assert out["judge"]["api_key"] == REDACTED and out["hf_token"] == REDACTED
    assert out["judge"]["api_key_env"] == "OPENAI_API_KEY" and out["judge"]["max_tokens"] == 10
    assert "zz-very-secret-value" not in json.dumps(out)
    assert "sk-1234567890abcdef" not in out["note"] and "abc.def" not in out["note"]
    assert out["teacher"] == {"key": "inquiry", "eos_token": "<|im_end|>"}
    assert data["judge"]["api_key"] == "abc"  # the input is not modified


def test_config_hash_stable_and_sensitive():
    a, b = compose("base"), compose("base")
    assert config_hash(a) == config_hash(b)
    assert config_hash(compose("base", ["seed=1"])) != config_hash(a)
    # tracking location does not change what is built
    assert config_hash(compose("base", ["tracking.experiment=other"])) == config_hash(a)


def test_logged_config_is_redacted(mlflow_store, monkeypatch):
    import mlflow

    from m3 import registry

    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-DONOTLOG-123456")
    registry.setup("t")
    cfg = {"model": "tiny", "judge": {"api_key": "sk-live-DONOTLOG-123456", "base_url": "http://h"}}
    with mlflow.start_run() as run:
        log_config(cfg)
    client = mlflow.MlflowClient()
    logged = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml")
    params = json.dumps(client.get_run(run.info.run_id).data.params)
    assert "DONOTLOG" not in logged and "DONOTLOG" not in params
    assert REDACTED in logged and "http://h" in params
