"""The stage on the tiny model (CPU): quantize once, then check the checkpoint, the verified reload,
the BF16 modules, the registered artifact, the skip on re-run and the strict key accounting.

Tolerances (tiny random model, group 32, held-out text): mean next-token KL(BF16 || W4) < 1e-3
nats, top-1 agreement > 0.85 (the tiny model's next-token distributions are nearly flat, so the
argmax flips on small changes), |logit difference| < 0.5; every quantized tensor within 0.3
relative error of BF16 (4-bit rounding gives ~0.1; the naive AutoModelForCausalLM load
re-initialises experts, ~1.4)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from m3.config import compose
from quant.quantize import BF16_TENSORS
from quant.reload import ReloadError, check_weights, load_w4

OVERRIDES = [
    "calibration.prompts_per_domain=1",
    "calibration.heldout_per_domain=1",
    "calibration.max_new_tokens=8",
    "eval.healthbench_examples=0",  # the HealthBench comparison runs in the slow test below
]


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    """main() once on the tiny checkpoint, in its own MLflow store; yields (cfg, version, out dir)."""
    import mlflow

    from quant import quantize

    tmp = tmp_path_factory.mktemp("quant")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
        mp.setenv("M3_ARTIFACT_ROOT", str(tmp / "mlruns" / "artifacts"))
        cfg = compose(
            "quant",
            [f"source={tiny_dir}", f"out_dir={tmp / 'out'}", f"summary_out={tmp / 's.json'}", *OVERRIDES],
        )
        mv = quantize.main(cfg)
        yield cfg, mv, tmp
        while mlflow.active_run() is not None:
            mlflow.end_run()


@pytest.fixture(scope="module")
def bf16(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).float().eval()


def test_report_numbers(run):
    _, mv, tmp = run
    rep = json.loads((tmp / "out" / "report.json").read_text())
    assert rep["group_size"] == 32  # 128 does not divide the tiny widths (32)
    assert rep["activation"]["covered_fraction"] == 1.0
    q = rep["quality"]
    assert q["kl_mean"] < 1e-3 and q["top1_agreement"] > 0.85 and q["max_abs_logit_diff"] < 0.5
    assert 0 < rep["weights"]["weight_rel_err_mean"] < 0.3
    # the size formula is exact for what was written (16 B of weight_shape per quantized Linear)
    assert rep["sizes"]["measured_bytes"] == rep["sizes"]["formula_bytes_with_shape_records"]
    assert rep["sizes"]["qwen3_235b_a22b_g128"]["ratio"] == pytest.approx(0.262, abs=0.002)
    summary = json.loads((tmp / "s.json").read_text())
    assert summary["step"] == "quant" and f"v{mv.version}" in summary["value"]


def test_reload_equals_dequantized_weights(run):
    """Independent of the loader: unpack int4, multiply by each group's scale, stack the experts."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    _, _, tmp = run
    w4_dir = tmp / "out" / "w4"
    raw = load_file(str(w4_dir / "model.safetensors"))
    model, acc = load_w4(w4_dir, dtype=torch.bfloat16)
    params = dict(model.named_parameters())

    def dequant(prefix: str) -> torch.Tensor:
        shape = raw[f"{prefix}.weight_shape"]
        q = unpack_from_int32(raw[f"{prefix}.weight_packed"], 4, shape)  # int values in [-8, 7]
        assert int(q.min()) >= -8 and int(q.max()) <= 7
        scale = raw[f"{prefix}.weight_scale"]
        group = int(shape[1]) // scale.shape[1]
        return (q.float() * scale.float().repeat_interleave(group, dim=1)).to(torch.bfloat16)

    for layer in range(model.config.num_hidden_layers):
        p = f"model.layers.{layer}"
        assert torch.equal(params[f"{p}.self_attn.q_proj.weight"], dequant(f"{p}.self_attn.q_proj"))
        for e in range(model.config.num_experts):
            fused = params[f"{p}.mlp.experts.gate_up_proj"][e]
            want = torch.cat(
                [dequant(f"{p}.mlp.experts.{e}.gate_proj"), dequant(f"{p}.mlp.experts.{e}.up_proj")]
            )
            assert torch.equal(fused, want)
            assert torch.equal(
                params[f"{p}.mlp.experts.down_proj"][e], dequant(f"{p}.mlp.experts.{e}.down_proj")
            )
    assert acc["quantized_linears"] == model.config.num_hidden_layers * (4 + 3 * model.config.num_experts)


def test_ignored_modules_stay_bf16(run, bf16):
    _, _, tmp = run
    w4_dir = tmp / "out" / "w4"
    raw = load_file(str(w4_dir / "model.safetensors"))
    qc = json.loads((w4_dir / "config.json").read_text())["quantization_config"]
    assert "lm_head" in qc["ignore"] and any("mlp.gate" in i for i in qc["ignore"])
    assert qc["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    assert qc["config_groups"]["group_0"]["weights"]["symmetric"] is True
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.gate.weight", "model.norm.weight"):
        assert raw[name].dtype == torch.bfloat16
    assert not [k for k in raw if re.search(r"(embed_tokens|mlp\.gate|lm_head)\.weight_", k)]
    model, _ = load_w4(w4_dir, dtype=torch.float32)
    ref = dict(bf16.named_parameters())
    for name, p in model.named_parameters():
        if re.search(BF16_TENSORS, name):
            assert torch.equal(p, ref[name]), name
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied


def test_naive_load_is_caught(run, bf16):
    """AutoModelForCausalLM re-initialises the fused experts; the weight check refuses it."""
    from transformers import AutoModelForCausalLM

    _, _, tmp = run
    naive = AutoModelForCausalLM.from_pretrained(tmp / "out" / "w4", dtype=torch.float32)
    with pytest.raises(ReloadError, match="experts"):
        check_weights(bf16, naive, re.compile(BF16_TENSORS), rel_tolerance=0.3)


def test_missing_expert_tensor_is_an_error(run, tmp_path):
    _, _, tmp = run
    broken = tmp_path / "broken"
    shutil.copytree(tmp / "out" / "w4", broken)
    t = load_file(str(broken / "model.safetensors"))
    for k in [k for k in t if k.startswith("model.layers.2.mlp.experts.3.up_proj.")]:
        del t[k]
    save_file(t, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ReloadError, match="up_proj"):
        load_w4(broken)


def test_registered_artifact_reloads_and_rerun_skips(run, bf16):
    from m3 import registry
    from quant import quantize

    cfg, mv, tmp = run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
        mp.setenv("M3_ARTIFACT_ROOT", str(tmp / "mlruns" / "artifacts"))
        got = registry.get_version("models:/m3-w4@candidate")
        assert got.version == mv.version
        assert json.loads(got.tags["m3.data_hashes"])["calibration"]
        assert got.tags["m3.quant.group_size"] == "32" and got.tags["m3.stage"] == "quant"
        path = registry.resolve("models:/m3-w4@candidate")
        model, _ = load_w4(path, dtype=torch.float32)
        x = torch.tensor([[151644, 872, 198, 40, 614, 264, 33553, 13]])
        with torch.no_grad():
            a, b = bf16(input_ids=x).logits, model(input_ids=x).logits
        assert (a - b).abs().max() < 0.5
        assert (
            torch.nn.functional.kl_div(
                b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none"
            )
            .sum(-1)
            .mean()
            < 1e-3
        )
        assert quantize.main(cfg).version == mv.version  # same config and source: skipped


@pytest.mark.slow
def test_healthbench_comparison(tiny_dir, tmp_path, mlflow_store):
    from quant import quantize

    cfg = compose(
        "quant",
        [f"source={tiny_dir}", f"out_dir={tmp_path / 'out'}", *OVERRIDES[:3], "eval.healthbench_examples=2"],
    )
    quantize.main(cfg)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    for key in ("healthbench_bf16", "healthbench_w4"):
        assert rep[key]["n"] == 2 and 0.0 <= rep[key]["overall_score"] <= 1.0
