"""Gated Attention, Y' = Y * sigmoid(X W_g^T), against numbers computed by hand."""

import math

import torch

from draft_eagle3.model import gate_attention


def test_gate_by_hand():
    y = torch.tensor([[[1.0, -2.0]]])  # B=1, T=1, D = heads x head_dim = 2
    x = torch.tensor([[[1.0, 0.0, 2.0]]])  # the layer input, X = 3
    w_g = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.5]])  # D x X
    # element 0: x.w0 = 0 -> sigmoid 0.5 -> 0.5 ; element 1: x.w1 = 1 + 1 = 2 -> -2 * sigmoid(2)
    expected = torch.tensor([[[0.5, -2.0 / (1.0 + math.exp(-2.0))]]])
    assert torch.allclose(gate_attention(y, x, w_g), expected, atol=1e-7)
    assert abs(float(gate_attention(y, x, w_g)[0, 0, 1]) - (-1.7615941559557646)) < 1e-6


def test_gate_is_elementwise_and_bounded():
    y = torch.ones(2, 3, 4)
    x = torch.randn(2, 3, 5)
    w_g = torch.zeros(4, 5)
    assert torch.equal(gate_attention(y, x, w_g), torch.full((2, 3, 4), 0.5))  # zero gate halves Y
    big = gate_attention(y, x, torch.randn(4, 5) * 100)
    assert bool(((big >= 0) & (big <= 1)).all())  # sigmoid keeps each element of Y within [0, Y]
