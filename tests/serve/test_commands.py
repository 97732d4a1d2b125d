"""Command lines at the real 235B shape, the Eagle3 aux-layer id conventions, secrets in commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m3.config import compose
from serve import commands
from serve.launch import materialize, plan_serve


def _plan(*overrides: str):
    return plan_serve(compose("serve/serve", ["model=qwen3_235b_a22b", "dry_run=true", *overrides]))


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_vllm_235b_w4_draft_command():
    plan = _plan("engine=vllm")
    argv = plan.argv
    assert argv[:3] == ["vllm", "serve", "/models/m3-w4"]
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "8000"
    assert _flag(argv, "--reasoning-parser") == "qwen3"
    assert _flag(argv, "--served-model-name") == "m3"
    assert _flag(argv, "--tensor-parallel-size") == "4"
    assert "--enable-expert-parallel" in argv
    assert _flag(argv, "--quantization") == "compressed-tensors"
    spec = json.loads(_flag(argv, "--speculative-config"))
    assert spec == {"method": "eagle3", "model": "/models/m3-draft-vllm", "num_speculative_tokens": 3}
    # the draft copy handed to vLLM carries the ids +1 (input of layer i) of SpecForge's [1, 46, 90]
    assert any("[2, 47, 91]" in n for n in plan.notes)
    assert plan.env == {} and plan.base_url == "http://127.0.0.1:8000/v1" and plan.model_name == "m3"


def test_sglang_235b_w4_draft_command_uses_model_card_values():
    argv = _plan("engine=sglang").argv
    assert argv[:5] == ["python", "-m", "sglang.launch_server", "--model-path", "/models/m3-w4"]
    assert _flag(argv, "--reasoning-parser") == "qwen3"
    assert _flag(argv, "--tp-size") == "4" and _flag(argv, "--ep-size") == "4"
    assert _flag(argv, "--quantization") == "compressed-tensors"
    assert _flag(argv, "--speculative-algorithm") == "EAGLE3"
    assert _flag(argv, "--speculative-draft-model-path") == "/models/m3-draft"
    assert (_flag(argv, "--speculative-num-steps"), _flag(argv, "--speculative-eagle-topk")) == ("6", "10")
    assert _flag(argv, "--speculative-num-draft-tokens") == "32"


def test_bf16_without_draft_takes_the_bf16_parallel_sizes():
    argv = _plan("engine=vllm", "quantized=off", "draft=off").argv
    assert argv[2] == "Qwen/Qwen3-235B-A22B"
    assert _flag(argv, "--tensor-parallel-size") == "8" and "--enable-expert-parallel" in argv
    assert "--quantization" not in argv and "--speculative-config" not in argv


def test_api_key_is_a_reference_never_the_value(monkeypatch):
    monkeypatch.setenv("M3_SERVE_API_KEY", "s3cret-value-123")
    vplan = _plan("engine=vllm", "host=0.0.0.0")
    splan = _plan("engine=sglang", "host=0.0.0.0")
    for plan in (vplan, splan):
        assert "s3cret-value-123" not in plan.describe()
    assert vplan.env == {"VLLM_API_KEY": "${M3_SERVE_API_KEY}"} and "--api-key" not in vplan.argv
    assert 'VLLM_API_KEY="${M3_SERVE_API_KEY}" vllm serve' in vplan.describe()
    assert _flag(splan.argv, "--api-key") == "${M3_SERVE_API_KEY}"
    _, env = materialize(["python", "-m", "x"], vplan.env)  # expanded only for the child process
    assert env["VLLM_API_KEY"] == "s3cret-value-123"


def test_aux_layer_ids_conventions():
    assert commands.default_aux_layer_ids(94) == [1, 46, 90]
    assert commands.default_aux_layer_ids(6) == [1, 2, 2]
    out = commands.OUTPUT_OF_LAYER
    inp = commands.INPUT_OF_LAYER
    assert commands.convert_aux_layer_ids([1, 46, 90], out, inp) == [2, 47, 91]
    assert commands.convert_aux_layer_ids([2, 47, 91], inp, out) == [1, 46, 90]
    assert commands.convert_aux_layer_ids([3], out, out) == [3]
    with pytest.raises(ValueError):
        commands.convert_aux_layer_ids([0], inp, out)
    sgl_export = {
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 46, 90]}
    }  # no convention: SpecForge
    assert commands.engine_aux_layer_ids(sgl_export, "vllm") == [2, 47, 91]
    assert commands.engine_aux_layer_ids(sgl_export, "sglang") == [1, 46, 90]
    vllm_export = {
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [2, 47, 91], "aux_layer_ids_convention": inp}
    }
    assert commands.engine_aux_layer_ids(vllm_export, "sglang") == [1, 46, 90]
    assert commands.engine_aux_layer_ids(vllm_export, "vllm") == [2, 47, 91]


def _draft(tmp_path, arch="LlamaForCausalLMEagle3", **eagle):
    d = tmp_path / "draft"
    d.mkdir()
    cfg = {
        "architectures": [arch],
        "draft_vocab_size": 32000,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 2, 2], **eagle},
    }
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes(b"weights")
    return d


def test_write_engine_draft(tmp_path):
    src = _draft(tmp_path)
    vdir = commands.write_engine_draft(src, "vllm", tmp_path / "out")
    assert vdir != src
    cfg = json.loads((vdir / "config.json").read_text())
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [2, 3, 3]  # read first by every vLLM version
    assert cfg["eagle_config"] == {
        "eagle_aux_hidden_state_layer_ids": [2, 3, 3],
        "aux_layer_ids_convention": "input_of_layer",
    }
    assert (vdir / "model.safetensors").is_symlink() and (
        vdir / "model.safetensors"
    ).read_bytes() == b"weights"
    assert commands.write_engine_draft(src, "sglang", tmp_path / "out") == src.resolve()
    assert commands.write_engine_draft(src, "vllm", tmp_path / "out") == vdir  # idempotent


def test_write_engine_draft_converts_a_vllm_export_for_sglang(tmp_path):
    src = _draft(tmp_path, aux_layer_ids_convention="input_of_layer")
    sdir = commands.write_engine_draft(src, "sglang", tmp_path / "out")
    assert json.loads((sdir / "config.json").read_text())["eagle_config"][
        "eagle_aux_hidden_state_layer_ids"
    ] == [0, 1, 1]


def test_unknown_draft_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="gated"):
        commands.write_engine_draft(_draft(tmp_path, arch="GatedEagle3Draft"), "vllm", tmp_path / "out")


def test_gated_draft_goes_to_vllm_only(tmp_path):
    """vLLM loads LlamaForCausalLMEagle3Gated through our plugin; SGLang has no such class."""
    src = _draft(tmp_path, arch=commands.GATED_EAGLE3_ARCHITECTURE)
    vdir = commands.write_engine_draft(src, "vllm", tmp_path / "out")
    assert json.loads((vdir / "config.json").read_text())["architectures"] == ["LlamaForCausalLMEagle3Gated"]
    with pytest.raises(ValueError, match="loads in vLLM only"):
        commands.write_engine_draft(src, "sglang", tmp_path / "out")


def test_plugin_registers_both_names_of_the_gated_draft():
    """The raw config.json name (draft ModelConfig) and vLLM's EAGLEConfig rewrite of it (class lookup)."""
    from serve import vllm_plugin

    raw = commands.GATED_EAGLE3_ARCHITECTURE
    rewritten = raw if raw.startswith("Eagle3") or raw.endswith("Eagle3") else f"Eagle3{raw}"
    assert vllm_plugin.ARCHITECTURES == (raw, rewritten)
    module = vllm_plugin.MODEL_CLASS.split(":")[0]  # imported by vLLM only (it imports vllm)
    assert (Path(__file__).parents[2] / (module.replace(".", "/") + ".py")).is_file()


def _cpu_spec(**kw) -> commands.ServeSpec:
    return commands.ServeSpec(model_path="/ckpt/smollm2", platform="cpu", reasoning_parser=None, **kw)


def test_vllm_cpu_command():
    argv, env = commands.vllm_command(_cpu_spec(port=8123, enforce_eager=True))
    assert argv[:5] == ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/ckpt/smollm2"]
    assert _flag(argv, "--dtype") == "float32" and _flag(argv, "--max-model-len") == "2048"
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "8123"
    assert "--reasoning-parser" not in argv and "--enforce-eager" in argv and "--quantization" not in argv
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "2"}


def test_vllm_cpu_w4_takes_bf16_activations_and_true_w4a16():
    argv, env = commands.vllm_command(_cpu_spec(quantization="compressed-tensors", draft_path="/ckpt/d"))
    assert _flag(argv, "--dtype") == "bfloat16" and _flag(argv, "--quantization") == "compressed-tensors"
    assert env["VLLM_CPU_INT4_W4A8"] == "0"
    spec = json.loads(_flag(argv, "--speculative-config"))
    assert spec == {"method": "eagle3", "model": "/ckpt/d", "num_speculative_tokens": 3}


def test_vllm_cpu_refuses_parallel_sizes():
    with pytest.raises(ValueError, match="GPU settings"):
        commands.vllm_command(_cpu_spec(tensor_parallel_size=4))


def test_w4_moe_is_refused_on_cpu_dense_w4_is_not():
    w4 = {"quantization_config": {"quant_method": "compressed-tensors"}}
    commands.check_cpu_servable({**w4, "hidden_size": 576}, "/ckpt/w4-dense")
    commands.check_cpu_servable({"num_experts": 128}, "/ckpt/bf16-moe")
    with pytest.raises(ValueError, match="no W4 MoE kernel") as e:
        commands.check_cpu_servable({**w4, "num_experts": 128}, "/ckpt/w4-moe")
    assert "\n" not in str(e.value) and "/ckpt/w4-moe" in str(e.value)


def test_dense_w4_on_cpu_needs_avx512(tmp_path):
    w4 = {"quantization_config": {"quant_method": "compressed-tensors"}, "hidden_size": 576}
    avx2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
    commands.check_cpu_servable(w4, "/ckpt/w4", avx2 | commands.AVX512)
    commands.check_cpu_servable({"hidden_size": 576}, "/ckpt/float", avx2)  # float needs no AVX-512
    commands.check_cpu_servable(w4, "/ckpt/w4", None)  # flags unknown: vLLM's own error stands
    with pytest.raises(ValueError, match="no AVX-512.*cpu_gemm_wna16") as e:
        commands.check_cpu_servable(w4, "/ckpt/w4", avx2 | {"avx512f"})  # torch wants bw, vl, dq too
    assert "\n" not in str(e.value) and "/ckpt/w4" in str(e.value)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\nbugs\t\t: spectre\n\nprocessor\t: 1\n")
    assert commands.host_cpu_flags(info) == {"fpu", "sse", "avx2", "avx512f"}
    assert commands.host_cpu_flags(tmp_path / "missing") is None


def test_draft_must_match_the_model():
    model = {"hidden_size": 576, "vocab_size": 49152}
    commands.check_draft_matches({"target_hidden_size": 576, "vocab_size": 49152}, "/d", model, "/m")
    with pytest.raises(ValueError, match="hidden size 4096.*/m has hidden size 576") as e:
        commands.check_draft_matches({"target_hidden_size": 4096, "vocab_size": 49152}, "/d", model, "/m")
    assert "/d" in str(e.value)
    with pytest.raises(ValueError, match="vocab_size"):
        commands.check_draft_matches({"target_hidden_size": 576, "vocab_size": 151936}, "/d", model, "/m")


def test_reasoning_parser_follows_the_tokenizer(tmp_path, tiny_dir):
    assert commands.has_think_tokens(tiny_dir)  # the Qwen3 tokenizer
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"content": "<|im_end|>"}]}))
    assert not commands.has_think_tokens(tmp_path)


@pytest.mark.parametrize("written", ["sglang", "vllm"])
def test_ids_of_a_real_draft_export_reach_each_engine_in_its_convention(tiny_dir, tmp_path, written):
    """draft_eagle3's export -> serve: SGLang gets "output of layer" ids, vLLM "input of layer" (+1)."""
    import torch
    from transformers import AutoModelForCausalLM

    from draft_eagle3.export import export_draft
    from draft_eagle3.model import DraftShape, Eagle3Draft
    from serve.commands import engine_aux_layer_ids

    target = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ids = torch.tensor([11, 198, 872, 151645])
    draft = Eagle3Draft(DraftShape.from_target(target.config, [1, 2, 3], len(ids), False), seed=0)
    draft.copy_target_weights(target, ids)
    cfg = json.loads((export_draft(draft, tmp_path / "d", layer_ids=written) / "config.json").read_text())
    assert engine_aux_layer_ids(cfg, "sglang") == [1, 2, 3]
    assert engine_aux_layer_ids(cfg, "vllm") == [2, 3, 4]
