"""Binding rules, model resolution and dry runs through `python -m serve`."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from m3 import registry
from m3.config import REPO_ROOT, compose
from serve import __main__ as serve_main
from serve.launch import check_bind, check_port_free, infer_shape, plan_serve


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


# --- vLLM's CPU build: command, checks before anything loads ---------------------------------------


def _copy_config(src, dst, **changes):
    dst.mkdir(parents=True, exist_ok=True)
    cfg = {**json.loads((src / "config.json").read_text()), **changes}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_cpu_plan_for_a_checkpoint_directory(tiny_dir):
    plan = plan_serve(
        compose("serve/serve", ["engine=vllm", f"model={tiny_dir}", "device=cpu", "dry_run=true"])
    )
    assert plan.platform == "cpu" and plan.argv[0].endswith(".venv-serve/bin/python")
    assert plan.argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert plan.argv[plan.argv.index("--reasoning-parser") + 1] == "qwen3"  # the Qwen3 tokenizer has <think>
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "2" and "--dtype" in plan.argv
    assert "make setup-serve" in plan.describe()


def test_real_shape_stays_a_gpu_deployment():
    plan = plan_serve(compose("serve/serve", ["engine=vllm", "model=qwen3_235b_a22b", "dry_run=true"]))
    assert plan.platform == "cuda" and plan.argv[:2] == ["vllm", "serve"]


def test_model_directory_without_config_json(tmp_path):
    with pytest.raises(ValueError, match=f"model {tmp_path} has no config.json"):
        plan_serve(compose("serve/serve", ["engine=vllm", f"model={tmp_path}", "device=cpu", "dry_run=true"]))


def test_draft_for_another_hidden_size_names_both(tiny_dir, tmp_path):
    draft = tmp_path / "draft"
    draft.mkdir()
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "target_hidden_size": 576, "vocab_size": 151936,
           "eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 2, 3]}}  # fmt: skip
    (draft / "config.json").write_text(json.dumps(cfg))
    over = ["engine=vllm", f"model={tiny_dir}", f"draft={draft}", "device=cpu", "dry_run=true"]
    with pytest.raises(ValueError, match="hidden size 576") as e:
        plan_serve(compose("serve/serve", over))
    assert str(draft) in str(e.value) and str(tiny_dir) in str(e.value)


def test_w4_moe_is_refused_on_cpu_before_anything_starts(tiny_dir, tmp_path, capsys):
    w4 = _copy_config(tiny_dir, tmp_path / "w4", quantization_config={"quant_method": "compressed-tensors"})
    # engine_bin without an engine: were the check missing, this would fail on the install check instead
    over = ["engine=vllm", f"model={w4}", "device=cpu", f"engine_bin={tmp_path / 'bin'}"]
    assert serve_main.main(over) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no W4 MoE kernel" in err[0] and str(w4) in err[0]
    over_gpu = ["engine=vllm", f"model={w4}", "device=cuda", "dry_run=true"]
    assert "--quantization" in plan_serve(compose("serve/serve", over_gpu)).argv  # GPUs have Marlin MoE


def test_port_in_use_is_refused_before_loading():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)


def test_missing_serve_venv_names_make_setup_serve(tiny_dir, tmp_path, capsys):
    rc = serve_main.main(["engine=vllm", f"model={tiny_dir}", "device=cpu", f"engine_bin={tmp_path / 'bin'}"])
    assert rc == 2 and "make setup-serve" in capsys.readouterr().err


def test_make_serve_passes_draft_and_port():
    out = subprocess.run(
        ["make", "-n", "serve", "ENGINE=vllm", "MODEL=/m", "DRAFT=/d", "PORT=8123"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "-m serve engine=vllm model=/m draft=/d port=8123" in out
