"""Size arithmetic against hand-computed numbers, the real Qwen3-235B-A22B totals, KL and perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from quant.report import (
    QWEN3_235B_A22B,
    model_shapes,
    next_token_kl,
    next_token_nll,
    perplexity,
    qwen3_moe_shapes,
    w4_size,
)


def test_w4_size_hand_computed():
    # one quantized 8x256 projection + one 10x4 embedding (BF16), group 128, BF16 scales:
    #   packed 4 * 2048 / 8 = 1024 B; scales 8 rows * 2 groups * 2 B = 32 B; embedding 40 * 2 = 80 B
    shapes = {"a.q_proj.weight": (8, 256), "embed_tokens.weight": (10, 4)}
    s = w4_size(shapes, group_size=128)
    assert s["params"] == 2088 and s["params_quantized"] == 2048
    assert s["bytes_bf16"] == 4176
    assert s["bytes_w4"] == 1024 + 32 + 80
    assert s["ratio"] == pytest.approx(1136 / 4176)
    assert s["bits_per_weight"] == pytest.approx(8 * 1136 / 2088)
    assert s["bits_per_quantized_weight"] == 4.125
    # a width the group does not divide still needs a scale for the last partial group
    assert w4_size({"x.o_proj.weight": (1, 200)}, group_size=128)["bytes_w4"] == 100 + 2 * 2


def test_fused_experts_counted_per_expert_row():
    # experts.gate_up_proj [E=2, 2I=4, H=64]: 8 rows of 64 -> 8 * 1 scale group of 64
    s = w4_size({"l.mlp.experts.gate_up_proj": (2, 4, 64)}, group_size=64)
    assert s["bytes_w4"] == 4 * 512 / 8 + 8 * 1 * 2


def test_dense_mlp_is_quantized_and_the_router_is_not():
    # a dense Llama layer (the real preset) quantizes its MLP; a MoE router `mlp.gate` stays BF16
    shapes = {
        "l.mlp.gate_proj.weight": (4, 64),
        "l.mlp.down_proj.weight": (64, 4),
        "l.mlp.gate.weight": (8, 64),
    }
    s = w4_size(shapes, group_size=64)
    assert s["params_quantized"] == 512
    assert s["bytes_w4"] == 4 * 256 / 8 + 4 * 1 * 2 + 4 * 256 / 8 + 64 * 1 * 2 + 512 * 2


def test_real_qwen3_235b_shapes_match_the_card():
    shapes = qwen3_moe_shapes(**QWEN3_235B_A22B)
    s = w4_size(shapes, group_size=128)
    # 94 x (attention 71.3M + experts 128 x 3 x 4096 x 1536 + router) + 2 untied vocab matrices
    assert s["params"] / 1e9 == pytest.approx(235.09, abs=0.01)
    assert s["gb_bf16"] == pytest.approx(470.2, abs=0.05)  # the card: 470.2 GB
    assert s["params_quantized"] / 1e9 == pytest.approx(233.80, abs=0.01)
    assert 0.26 < s["ratio"] < 0.265  # paper: 26% of BF16 (124.5 GB; 123.1 GB here without zero points)
    assert 4.1 < s["bits_per_weight"] < 4.25


def test_shapes_function_matches_the_tiny_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    c = model.config
    want = qwen3_moe_shapes(
        hidden=c.hidden_size,
        layers=c.num_hidden_layers,
        q_heads=c.num_attention_heads,
        kv_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        experts=c.num_experts,
        moe_intermediate=c.moe_intermediate_size,
        vocab=c.vocab_size,
        tied=c.tie_word_embeddings,
    )
    assert model_shapes(model) == want


def test_kl_and_perplexity_hand_computed():
    # p = softmax([0, 0]) = (.5, .5); q = softmax([log 3, 0]) = (.75, .25)
    ref = torch.tensor([[0.0, 0.0]])
    q = torch.tensor([[math.log(3.0), 0.0]])
    want = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(next_token_kl(ref, q)[0]) == pytest.approx(want, abs=1e-6)
    assert float(next_token_kl(ref, ref)[0]) == 0.0
    # logits at t predict token t+1: nll = -log q(token 1) = -log .25 under the second row's logits
    nll = next_token_nll(torch.stack([q[0], q[0]]), torch.tensor([0, 1]))
    assert nll.tolist() == pytest.approx([math.log(4.0)])
    assert perplexity(torch.tensor([math.log(2.0), math.log(8.0)])) == pytest.approx(4.0)
