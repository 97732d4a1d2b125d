"""Stage 2 losses on CPU: hand-computed Clip-Forward-KL values, gradients, chunked log-probs."""

from __future__ import annotations

import pytest
import torch

from stage2_distill.losses import clip_forward_kl_loss, forward_kl_nll_loss, gather_logprobs_chunked

# Row 0: t0 active (-1 < -0.5), t1 clipped (-2 > -3), t2 a tie (clipped), t3 padding that WOULD be
#        active (-3 < -1) if the mask let it in.
# Row 1: four teacher tokens: t0 active (-4 < -1), t1 clipped (-0.1 > -1), t2 active (-2.5 < -2),
#        t3 active (-9 < 0).
# Row 2: all padding, every position would be active (-5 < 0) if unmasked.
STUDENT = [[-1.0, -2.0, -0.5, -3.0], [-4.0, -0.1, -2.5, -9.0], [-5.0, -5.0, -5.0, -5.0]]
TEACHER = [[-0.5, -3.0, -0.5, -1.0], [-1.0, -1.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
MASK = [[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
ACTIVE = [[1, 0, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]]
# teacher tokens 3 + 4 = 7, active 1 + 3 = 4, summed NLL on active = 1 + (4 + 2.5 + 9) = 16.5


def _inputs():
    s = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    return s, torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(MASK, dtype=torch.bool)


@pytest.mark.parametrize(
    "norm, expected",
    [
        ("token", 16.5 / 7),  # 2.357142857: clipped teacher tokens count as zeros
        ("active", 16.5 / 4),  # 4.125
        ("sequence", (1.0 / 3 + 15.5 / 4) / 2),  # (0.3333 + 3.875) / 2 = 2.104166667; empty row 2 left out
    ],
)
def test_clip_forward_kl_hand_values(norm, expected):
    s, t, m = _inputs()
    loss, stats = clip_forward_kl_loss(s, t, m, norm=norm)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["clip/masked_frac"] == pytest.approx(3 / 7)  # t1, t2 of row 0 and t1 of row 1
    assert stats["clip/active_tokens"] == 4 and stats["clip/teacher_tokens"] == 7
    assert stats["clip/student_logp_mean"] == pytest.approx(-19.1 / 7)  # (-3.5 - 15.6) / 7
    assert stats["clip/teacher_logp_mean"] == pytest.approx(-8 / 7)  # (-4 - 4) / 7


@pytest.mark.parametrize(
    "norm, expected_grad",
    [
        ("token", torch.tensor(ACTIVE, dtype=torch.float64) * (-1 / 7)),
        ("active", torch.tensor(ACTIVE, dtype=torch.float64) * (-1 / 4)),
        # row 0: -1 / (3 tokens * 2 rows), row 1: -1 / (4 tokens * 2 rows)
        (
            "sequence",
            torch.tensor(ACTIVE, dtype=torch.float64)
            * torch.tensor([[-1 / 6], [-1 / 8], [0.0]], dtype=torch.float64),
        ),
    ],
)
def test_clip_gradient_only_on_active_tokens(norm, expected_grad):
    s, t, m = _inputs()
    t.requires_grad_(True)
    loss, _ = clip_forward_kl_loss(s, t, m, norm=norm)
    loss.backward()
    torch.testing.assert_close(s.grad, expected_grad, rtol=0, atol=1e-15)
    # exactly zero (not merely small) on clipped tokens and padding
    assert (s.grad[~torch.tensor(ACTIVE, dtype=torch.bool)] == 0).all()
    assert t.grad is None or (t.grad == 0).all()  # the indicator is not differentiated


def test_padding_values_never_leak():
    # -inf / nan at padding (e.g. log-probs of pad ids) must not reach loss, stats or gradient.
    s, t, m = _inputs()
    s_bad = s.detach().clone()
    s_bad[0, 3], s_bad[2, 0] = float("-inf"), float("nan")
    t_bad = t.clone()
    t_bad[2, 1] = float("nan")
    s_bad.requires_grad_(True)
    loss, stats = clip_forward_kl_loss(s_bad, t_bad, m)
    loss.backward()
    assert loss.item() == pytest.approx(16.5 / 7)
    assert all(v == v for v in stats.values())  # no nan
    assert torch.isfinite(s_bad.grad).all() and s_bad.grad[0, 3] == 0 and s_bad.grad[2, 0] == 0


def test_mask_as_float_and_empty_batch():
    s, t, m = _inputs()
    loss_f, _ = clip_forward_kl_loss(s, t, m.double())
    assert loss_f.item() == pytest.approx(16.5 / 7)
    for norm in ("token", "active", "sequence"):
        loss0, stats0 = clip_forward_kl_loss(s, t, torch.zeros_like(m), norm=norm)
        assert loss0.item() == 0.0 and stats0["clip/masked_frac"] == 0.0


@pytest.mark.parametrize(
    "norm, expected",
    [
        ("token", 19.1 / 7),  # (3.5 + 15.6) / 7 = 2.728571
        ("active", 19.1 / 7),  # every teacher token is active
        ("sequence", (3.5 / 3 + 15.6 / 4) / 2),  # (1.1667 + 3.9) / 2 = 2.533333
    ],
)
def test_forward_kl_nll_hand_values(norm, expected):
    s, _, m = _inputs()
    loss, stats = forward_kl_nll_loss(s, m, norm=norm)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["clip/masked_frac"] == 0.0 and stats["clip/teacher_tokens"] == 7
    loss.backward()
    assert (s.grad[~m] == 0).all() and (s.grad[m] < 0).all()


@pytest.mark.parametrize("norm", ["token", "active", "sequence"])
def test_clip_equals_nll_when_student_below_teacher(norm):
    s, _, m = _inputs()
    s2 = s.detach().clone().requires_grad_(True)
    clip, stats = clip_forward_kl_loss(s, s.detach() + 1.0, m, norm=norm)
    nll, _ = forward_kl_nll_loss(s2, m, norm=norm)
    assert stats["clip/masked_frac"] == 0.0
    torch.testing.assert_close(clip, nll, rtol=0, atol=1e-15)
    clip.backward()
    nll.backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=0, atol=1e-15)


def test_loss_bad_inputs_raise():
    s, t, m = _inputs()
    with pytest.raises(ValueError, match="norm"):
        clip_forward_kl_loss(s, t, m, norm="mean")
    with pytest.raises(ValueError, match="norm"):
        forward_kl_nll_loss(s, m, norm="batch")
    with pytest.raises(ValueError, match="shape"):
        clip_forward_kl_loss(s, t[:, :3], m)
    with pytest.raises(ValueError, match="shape"):
        clip_forward_kl_loss(s, t, m[:2])
    with pytest.raises(ValueError, match="shape"):
        forward_kl_nll_loss(s, m.T)
    with pytest.raises(ValueError, match="float"):
        forward_kl_nll_loss(s.flatten(), m.flatten())


# --- chunked log-probs ------------------------------------------------------------------------------
def _random_lm(seed=0, B=2, T=5, H=8, V=13):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64)
    tgt = torch.randint(0, V, (B, T), generator=g)
    return h, w, tgt


def _reference(h, w, tgt):
    return torch.log_softmax(h @ w.T, dim=-1).gather(-1, tgt[..., None]).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 1024])  # B*T = 10: 3 and 4 leave a ragged last chunk
def test_chunked_logprobs_match_reference(chunk_size):
    h, w, tgt = _random_lm()
    h1, w1 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    h2, w2 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref = _reference(h1, w1, tgt)
    got = gather_logprobs_chunked(h2, w2, tgt, chunk_size=chunk_size)
    assert got.shape == (2, 5) and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    up = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (ref * up).sum().backward()
    (got * up).sum().backward()
    torch.testing.assert_close(h2.grad, h1.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=0, atol=1e-6)


def test_chunked_logprobs_no_grad_and_bf16():
    h, w, tgt = _random_lm()
    with torch.no_grad():
        got = gather_logprobs_chunked(h, w, tgt, chunk_size=3)
    torch.testing.assert_close(got, _reference(h, w, tgt), rtol=0, atol=1e-6)
    got_bf16 = gather_logprobs_chunked(h.bfloat16(), w.bfloat16(), tgt, chunk_size=4)
    assert got_bf16.dtype == torch.float32  # logsumexp in fp32
    assert (got_bf16 <= 0).all()


def test_chunked_then_clip_loss_end_to_end():
    # gradient through both: clipped tokens give no gradient to the hidden state at their position
    h, w, tgt = _random_lm()
    h.requires_grad_(True)
    logp = gather_logprobs_chunked(h, w, tgt, chunk_size=3)
    teacher = logp.detach().clone()
    teacher[0, :2] -= 1.0  # student above the teacher there: clipped
    teacher[0, 2:] += 1.0
    teacher[1] += 1.0
    loss, stats = clip_forward_kl_loss(logp, teacher, torch.ones(2, 5, dtype=torch.bool))
    loss.backward()
    assert stats["clip/masked_frac"] == pytest.approx(2 / 10)
    assert (h.grad[0, :2] == 0).all() and (h.grad[0, 2:].abs().sum(-1) > 0).all()


def test_chunked_bad_inputs_raise():
    h, w, tgt = _random_lm()
    with pytest.raises(ValueError, match="targets"):
        gather_logprobs_chunked(h, w, tgt[:, :4])
    with pytest.raises(ValueError, match="H"):
        gather_logprobs_chunked(h, w[:, :7], tgt)
    with pytest.raises(ValueError, match=r"\[B, T, H\]"):
        gather_logprobs_chunked(h[0], w, tgt)
    with pytest.raises(ValueError, match="-100"):
        gather_logprobs_chunked(h, w, torch.full_like(tgt, -100))
    with pytest.raises(ValueError, match="V=13"):
        gather_logprobs_chunked(h, w, torch.full_like(tgt, 13))
    with pytest.raises(ValueError, match="integer"):
        gather_logprobs_chunked(h, w, tgt.double())
    with pytest.raises(ValueError, match="chunk_size"):
        gather_logprobs_chunked(h, w, tgt, chunk_size=0)


def test_chunked_backward_recomputes_each_chunk(monkeypatch):
    # checkpointing keeps no logits for the backward: every chunk's forward runs a second time there.
    import stage2_distill.losses as losses

    calls = []
    inner = losses._chunk_logprobs

    def counting(h_CH, w_VH, t_C):
        calls.append(h_CH.shape[0])
        return inner(h_CH, w_VH, t_C)

    monkeypatch.setattr(losses, "_chunk_logprobs", counting)
    h, w, tgt = _random_lm()
    h.requires_grad_(True)
    logp = losses.gather_logprobs_chunked(h, w, tgt, chunk_size=4)
    assert calls == [4, 4, 2]
    logp.sum().backward()
    assert sorted(calls) == [2, 2, 4, 4, 4, 4]
