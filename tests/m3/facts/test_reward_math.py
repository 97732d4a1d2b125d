"""Fact-Aware reward formulas against hand-computed values and the paper's check values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from m3.facts.reward_math import (
    cluster_claims,
    combined_reward,
    dynamic_gate,
    fact_reward,
    hallucination_rate,
    saliency_weights,
)


def unit(*v):
    a = np.array(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def test_dynamic_gate_check_values():
    assert dynamic_gate(0.75) == pytest.approx(0.0067, abs=5e-5)
    assert dynamic_gate(0.85) == pytest.approx(0.5)
    assert dynamic_gate(0.95) == pytest.approx(0.993, abs=5e-4)
    assert dynamic_gate(0.85, tau_min=0.5, tau_max=0.7, kappa=2) == pytest.approx(
        1 / (1 + math.exp(-2 * 0.25 / 0.2))
    )
    with pytest.raises(ValueError):
        dynamic_gate(0.8, tau_min=0.9, tau_max=0.9)


def test_combined_reward():
    # R = 0.95 + 0.99331 * (-0.5)
    assert combined_reward(0.95, -0.5) == pytest.approx(0.95 - 0.5 / (1 + math.exp(-5)))
    assert combined_reward(0.3, -1.0) == pytest.approx(0.3 - 1 / (1 + math.exp(27.5)))


def test_cluster_then_weights_then_reward_by_hand():
    # claims 0 and 1 are near-duplicates (cos 0.995), claim 2 is orthogonal to both
    claims = np.stack([unit(1, 0, 0), unit(1, 0.1, 0), unit(0, 0, 1)])
    reps, assign = cluster_claims(claims, threshold=0.9)
    assert reps == [0, 2] and assign == [0, 0, 1]
    sents = np.stack([unit(1, 0, 0), unit(0, 0.6, 0.8)])
    w = saliency_weights(claims[reps], sents)
    assert w == pytest.approx([1.0, 0.8])  # max_j cos: rep0 vs s0 = 1, rep2 vs s1 = 0.8
    # rep 2 refuted: R_fact = -(0.8) / (1.8)
    assert fact_reward(w, [False, True]) == pytest.approx(-0.8 / 1.8)
    assert fact_reward(w, [True, True]) == pytest.approx(-1.0)
    assert fact_reward([], []) == 0.0
    with pytest.raises(ValueError):
        fact_reward([1.0], [])


def test_negative_cosines_are_clipped_to_zero():
    reps = np.array([[1.0, 0.0], [0.0, 1.0]])
    sents = np.array([[-1.0, 0.0], [0.6, -0.8]])
    # rep 0: cosines -1.0, 0.6 -> 0.6; rep 1: cosines 0.0, -0.8 -> max 0.0
    w = saliency_weights(reps, sents)
    assert np.allclose(w, [0.6, 0.0])
    only_negative = saliency_weights(np.array([[1.0, 0.0]]), np.array([[-0.5, 0.866]]))
    assert only_negative.tolist() == [0.0]  # clipped: -0.5 would make a refuted claim a bonus
    # a refuted claim of zero salience costs nothing; R_fact stays in [-1, 0]
    assert fact_reward([0.6, 0.0], [False, True]) == 0.0
    assert -1.0 <= fact_reward([0.6, 0.0], [True, True]) <= 0.0


def test_hallucination_rate():
    assert hallucination_rate(["Supported", "Refuted", "Uncertain", "Supported"]) == pytest.approx(1.5 / 4)
    assert hallucination_rate([]) == 0.0
