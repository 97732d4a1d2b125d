"""Binding rules, model resolution and dry runs through `python -m serve`."""

from __future__ import annotations

import json

import pytest

from m3 import registry
from m3.config import compose
from serve import __main__ as serve_main
from serve.launch import check_bind, infer_shape, plan_serve


def test_non_loopback_without_key_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("M3_SERVE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="export M3_SERVE_API_KEY"):
        check_bind("0.0.0.0", "vllm", "M3_SERVE_API_KEY")
    rc = serve_main.main(["engine=vllm", "model=qwen3_235b_a22b", "host=0.0.0.0", "dry_run=true"])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing host=0.0.0.0 without an API key" in err


def test_loopback_and_keyed_binds(monkeypatch):
    monkeypatch.delenv("M3_SERVE_API_KEY", raising=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, "transformers", "M3_SERVE_API_KEY")
    monkeypatch.setenv("M3_SERVE_API_KEY", "k" * 12)
    check_bind("0.0.0.0", "sglang", "M3_SERVE_API_KEY")
    with pytest.raises(ValueError, match="no API key check"):
        check_bind("10.0.0.5", "transformers", "M3_SERVE_API_KEY")


def test_transformers_refuses_w4_and_draft(tiny_dir):
    with pytest.raises(ValueError, match="engine=transformers cannot serve"):
        plan_serve(compose("serve/serve", [f"model={tiny_dir}", f"quantized={tiny_dir}"]))


def test_dry_run_resolves_the_registered_model(tiny_dir, mlflow_store, capsys):
    registry.publish(tiny_dir, "m3-mopd", stage="stage3")
    rc = serve_main.main(["dry_run=true", "port=8123"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0
    path = str(registry.resolve("models:/m3-mopd@candidate"))
    assert out.startswith(f"transformers serve {path} --host 127.0.0.1 --port 8123")


def test_w4_must_descend_from_the_served_model(tiny_dir, mlflow_store):
    registry.publish(tiny_dir, "m3-base", stage="base")
    registry.publish(tiny_dir, "m3-mopd", stage="stage3")
    registry.publish(tiny_dir, "m3-w4", stage="quant", parents=["models:/m3-base@candidate"])
    cfg = compose("serve/serve", ["engine=vllm", "quantized=models:/m3-w4@candidate", "dry_run=true"])
    with pytest.raises(ValueError, match="was built from"):
        plan_serve(cfg)


def test_infer_shape(tmp_path, tiny_dir):
    real = {"num_hidden_layers": 94, "hidden_size": 4096, "num_attention_heads": 64, "num_key_value_heads": 4}
    (tmp_path / "config.json").write_text(json.dumps(real))
    assert infer_shape(tmp_path) == "qwen3_235b_a22b"
    assert infer_shape(tiny_dir) is None


def test_missing_engine_is_a_clear_error(tmp_path):
    from serve.launch import materialize

    with pytest.raises(ValueError, match="engine_bin"):
        materialize(["vllm", "serve", "x"], {}, str(tmp_path))
