"""Training-time test: mask and loss by hand, and the parallel unroll equals sequential drafting."""

from __future__ import annotations

import math

import torch

from draft_eagle3.model import DraftShape, Eagle3Draft
from draft_eagle3.ttt import (
    shift_left,
    soft_cross_entropy,
    step_accuracy,
    step_weights,
    ttt_attention_mask,
    unroll,
    unroll_logits,
)

SHAPE = DraftShape(16, 4, 2, 4, 32, vocab_size=50, draft_vocab_size=12, aux_layers=(1, 2, 3))


def test_mask_by_hand():
    m = ttt_attention_mask(3, 2).int().tolist()
    assert m == [
        [1, 0, 0, 1, 0, 0, 1, 0, 0],  # column 0: step-0 key 0, then its own keys of steps 1, 2
        [1, 1, 0, 0, 1, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 1, 0, 0, 1],
    ]
    assert ttt_attention_mask(4, 0).equal(torch.ones(4, 4, dtype=torch.bool).tril())


def test_shift_weights_ce_accuracy_by_hand():
    x = torch.tensor([[1, 2, 3, 4]])
    assert shift_left(x, 2, fill=-1).tolist() == [[3, 4, -1, -1]]
    assert step_weights(3) == [1.0, 0.8, 0.8**2]
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 0.0]]])  # softmax [1/4, 3/4], ...
    p = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    want = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))  # 0.8369
    assert abs(float(soft_cross_entropy(logits, p, mask)) - want) < 1e-6
    assert float(soft_cross_entropy(logits, p, torch.zeros(1, 2, dtype=torch.bool))) == 0.0
    # draft argmax [1, 0] vs target argmax [0 (tie -> first), 0]
    assert step_accuracy(logits, p, torch.tensor([[True, True]])) == 0.5


def _batch(B=2, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 50, (B, T), generator=g),
        "aux": torch.randn(B, T, 48, generator=g),
        "target_logits": torch.randn(B, T, 12, generator=g),
        "valid": torch.ones(B, T, dtype=torch.bool),
    }


def test_unroll_shapes_and_stats():
    draft = Eagle3Draft(SHAPE)
    b = _batch()
    logits = unroll_logits(draft, b["input_ids"], b["aux"], 4)
    assert [tuple(x.shape) for x in logits] == [(2, 9, 12)] * 4
    loss, stats = unroll(draft, b, k=4)
    assert torch.isfinite(loss) and loss.requires_grad
    # step i can be scored at columns t with t+1+i < T: T-1-i per row
    assert [stats[f"n_{i}"] for i in range(4)] == [2 * (9 - 1 - i) for i in range(4)]
    want = sum(w * stats[f"loss_{i}"] for i, w in enumerate(step_weights(4)))
    assert abs(float(loss.detach()) - want) < 1e-4


def test_unroll_equals_sequential_drafting():
    """Step i at column t of the parallel unroll = catch-up over columns 0..t, then i chain steps
    with a growing KV cache (what speculative decoding runs): the mask and positions are right."""
    torch.manual_seed(0)
    draft = Eagle3Draft(SHAPE, seed=3)
    b = _batch(B=1, T=8)
    ids, aux = b["input_ids"], b["aux"]
    par = unroll_logits(draft, ids, aux, 4)
    for t in (0, 2, 3):
        n = t + 1
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        h, logits, (k, v) = draft.step(ids[:, 1 : n + 1], aux[:, :n], torch.arange(n)[None], None, mask)
        assert torch.allclose(logits[0, -1], par[0][0, t], atol=1e-5)
        h = h[:, -1:]
        for i in range(1, 4):
            h, logits, (kk, vv) = draft.step(
                ids[:, t + 1 + i : t + 2 + i], h, torch.tensor([[t + i]]), (k, v)
            )
            k, v = torch.cat([k, kk], 2), torch.cat([v, vv], 2)
            assert torch.allclose(logits[0, -1], par[i][0, t], atol=1e-5), (t, i)
