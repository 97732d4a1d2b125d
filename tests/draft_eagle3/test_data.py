"""Aux layer ids, the draft vocabulary with d2t/t2d (round trip), batch collation, capture."""

from __future__ import annotations

import pytest
import torch

from draft_eagle3.data import build_draft_vocab, capture, collate, default_aux_layers, vocab_maps


def test_default_aux_layers():
    assert default_aux_layers(94) == [1, 46, 90]  # Qwen3-235B-A22B: SpecForge's [1, L//2-1, L-4]
    assert default_aux_layers(8) == [1, 3, 4]  # small preset
    assert default_aux_layers(6) == [1, 2, 3]  # tiny: [1, 2, 2] made distinct
    with pytest.raises(ValueError, match="at least 4 layers"):
        default_aux_layers(3)


def test_draft_vocab_and_round_trip():
    responses = [[5, 7, 7, 9], [9, 9, 151000, 3]]
    ids = build_draft_vocab(responses, n=3, vocab_size=151936)
    assert ids.tolist() == [3, 7, 9]  # 9 x3, 7 x2, then the tie 3/5/151000 x1 -> smallest id
    assert build_draft_vocab(responses, n=32000, vocab_size=151936).tolist() == [3, 5, 7, 9, 151000]
    d2t, t2d = vocab_maps(ids, 151936)
    assert d2t.tolist() == [3, 6, 7]
    assert int(t2d.sum()) == 3 and t2d[[3, 7, 9]].all()
    draft = torch.arange(3)
    target = draft + d2t[draft]  # draft -> target
    assert target.tolist() == [3, 7, 9] and t2d[target].all()
    back = torch.cumsum(t2d.long(), 0)[target] - 1  # target -> draft: rank among the kept ids
    assert back.equal(draft)
    with pytest.raises(ValueError, match="strictly increasing"):
        vocab_maps(torch.tensor([7, 5]), 10)


def test_collate_targets_by_hand():
    s = {
        "input_ids": torch.tensor([1, 2, 3, 4]),
        "loss_mask": torch.tensor([False, False, True, True]),  # prompt 2 tokens, response 2
        "aux": torch.ones(4, 6),
        "last": torch.eye(4, 2),
        "in_vocab": torch.tensor([True, False, True, True]),
    }
    b = collate([s], target_head=torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    # position t targets token t+1: response tokens at 2, 3 -> t = 1 (out of vocab), 2
    assert b["valid"].tolist() == [[False, False, True, False]]
    assert b["target_logits"][0, 1].tolist() == [0.0, 2.0, 1.0]  # last[1] = [0, 1] @ head.T


def test_capture_outputs_of_layers(walk_target):
    t2d = torch.zeros(151936, dtype=torch.bool)
    s = capture(walk_target, [151644, 872, 198], [40, 614], [1, 2, 3], t2d)
    out = walk_target.model(input_ids=torch.tensor([[151644, 872, 198, 40, 614]]), output_hidden_states=True)
    H = walk_target.config.hidden_size
    assert s["aux"].shape == (5, 3 * H) and s["last"].shape == (5, H)
    assert torch.allclose(s["aux"][:, H : 2 * H], out.hidden_states[3][0])  # output of layer 2
    assert s["loss_mask"].tolist() == [False, False, False, True, True] and not s["in_vocab"].any()
