"""Calibration prompts cover every domain, the activation report counts routed tokens, and the
coverage check finds starved experts."""

from __future__ import annotations

import pytest
import torch

from quant.calibrate import (
    DOMAINS,
    activation_summary,
    calibration_prompts,
    expert_activation,
    uncovered_experts,
)
from quant.gptq import effective_group_size


def test_uncovered_experts_and_summary():
    counts = torch.tensor([[5, 0, 3], [1, 2, 9]])
    assert uncovered_experts(counts, min_tokens=1) == [(0, 1)]
    assert uncovered_experts(counts, min_tokens=3) == [(0, 1), (1, 0), (1, 1)]
    s = activation_summary(counts, min_tokens=1)
    assert s["experts"] == 6 and s["covered_fraction"] == pytest.approx(5 / 6)
    assert s["min_tokens_per_expert"] == 0 and s["max_tokens_per_expert"] == 9
    assert s["max_over_mean"] == pytest.approx(9 / (20 / 6))


def test_prompts_every_domain_and_heldout_disjoint():
    calib = calibration_prompts(3, offset=0)
    held = calibration_prompts(2, offset=3)
    assert [sum(r["domain"] == d for r in calib) for d in DOMAINS] == [3, 3, 3]
    assert not {r["prompt_id"] for r in calib} & {r["prompt_id"] for r in held}
    assert all(r["messages"] and r["messages"][-1]["content"] for r in calib + held)


def test_expert_activation_counts_every_routed_token(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    samples = [list(range(100, 117)), list(range(2000, 2005))]
    counts = expert_activation(model, samples)
    c = model.config
    assert counts.shape == (c.num_hidden_layers, c.num_experts)
    # each token goes to top_k experts in every layer
    assert counts.sum(1).tolist() == [22 * c.num_experts_per_tok] * c.num_hidden_layers
    # the hooks are gone: a second pass counts the same, not double
    assert torch.equal(expert_activation(model, samples), counts)


def test_group_size_shrinks_only_when_needed():
    assert effective_group_size(128, [4096, 1536, 8192], shrink=True) == 128
    assert effective_group_size(128, [32], shrink=True) == 32
    assert effective_group_size(128, [32, 48], shrink=True) == 16
    with pytest.raises(ValueError, match="gptq.group_size=32"):
        effective_group_size(128, [32], shrink=False)
