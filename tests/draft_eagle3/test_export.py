"""Gated and ungated drafts: shared init, the SGLang/vLLM EAGLE3 layout, config fields, reload."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from draft_eagle3.export import GATE_TENSOR, export_draft, load_draft
from draft_eagle3.model import DraftShape, Eagle3Draft

UNGATED = {
    "fc.weight",
    "midlayer.input_layernorm.weight",
    "midlayer.hidden_norm.weight",
    "midlayer.self_attn.q_proj.weight",
    "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight",
    "midlayer.post_attention_layernorm.weight",
    "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight",
    "norm.weight",
    "lm_head.weight",
    "d2t",
    "t2d",
}


def _draft(target, gated: bool) -> Eagle3Draft:
    ids = torch.tensor([11, 198, 872, 9099, 151645])
    d = Eagle3Draft(DraftShape.from_target(target.config, [1, 2, 3], len(ids), gated), seed=0)
    d.copy_target_weights(target, ids)
    return d


def test_gated_shares_the_ungated_init(walk_target):
    g, u = _draft(walk_target, True), _draft(walk_target, False)
    gs, us = g.state_dict(), u.state_dict()
    assert set(gs) - set(us) == {GATE_TENSOR}
    assert all(torch.equal(gs[k], us[k]) for k in us)
    assert gs[GATE_TENSOR].shape == (4 * 8, 2 * 32)  # heads x head_dim, from the 2H concat input
    assert not g.embed_tokens.weight.requires_grad
    assert torch.equal(g.embed_tokens.weight, walk_target.get_input_embeddings().weight)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_export_layout_and_reload(walk_target, tmp_path, gated, engine):
    draft = _draft(walk_target, gated)
    out = export_draft(draft, tmp_path / "d", layer_ids=engine, dtype="float32", extra={"target": "x"})
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        assert f.get_tensor("d2t").dtype == torch.int64 and f.get_tensor("t2d").dtype == torch.bool
        assert f.get_tensor("fc.weight").shape == (32, 96)
        assert f.get_tensor("midlayer.self_attn.q_proj.weight").shape == (32, 64)
        assert f.get_tensor("lm_head.weight").shape == (5, 32)
    assert names == (UNGATED | {GATE_TENSOR} if gated else UNGATED)  # no embedding
    assert not any(".gate_proj" in n for n in names - {"midlayer.mlp.gate_proj.weight"})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3Gated" if gated else "LlamaForCausalLMEagle3"]
    assert cfg["draft_vocab_size"] == 5 and cfg["vocab_size"] == 151936 and cfg["num_hidden_layers"] == 1
    ids = cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"]
    assert ids == ([1, 2, 3] if engine == "sglang" else [2, 3, 4])
    m3 = cfg["m3_eagle3"]
    assert m3["layer_id_convention"] == ("output_of_layer" if engine == "sglang" else "input_of_layer")
    assert (m3["aux_layers_sglang"], m3["aux_layers_vllm"]) == ([1, 2, 3], [2, 3, 4])
    assert m3["gate_tensor"] == (GATE_TENSOR if gated else None) and m3["target"] == "x"
    back = load_draft(out, walk_target)
    assert back.s == draft.s
    for k, v in draft.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_bf16_export(walk_target, tmp_path):
    out = export_draft(_draft(walk_target, True), tmp_path / "d")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor(GATE_TENSOR).dtype == torch.bfloat16
