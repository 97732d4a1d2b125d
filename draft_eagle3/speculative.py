"""Reference chain speculative decoding (batch 1, temperature 0) with the target's KV cache.

    from draft_eagle3.speculative import compare
    report = compare(target, draft, prompts, k=6, max_new_tokens=64, eos_ids=eos_ids(target))
    report["acceptance_length"], report["per_position_acceptance"], report["speedup"]

One cycle (target has processed x_0..x_{n-1}; x_n is the newest committed token, not yet fed):
1. draft catch-up: the draft KV cache holds step-0 columns 0..c-1; columns c..n-1 are computed from
   (embed(x_{t+1}), target aux states g_t) in one causal forward. The last column proposes d_1.
2. chain: k-1 more draft steps, each from its own previous output hidden state and token, appended
   to the draft cache at positions n, n+1, ... -> d_1..d_k (draft ids mapped to target ids by d2t).
3. verify: one target forward over [x_n, d_1..d_k] with the KV cache -> greedy tokens y_0..y_k.
4. accept (`greedy_accept`): a = number of leading d_i equal to y_{i-1}; commit d_1..d_a, y_a.
   The target cache is cropped to the accepted prefix; the draft cache drops the chain keys; the
   aux states of the a+1 newly processed positions feed the next catch-up.
Every committed token is the target's own greedy choice given the committed prefix, so the output
equals plain greedy decoding token for token, up to floating-point differences between a k+1-token
verify forward and a 1-token forward (see tests: float32, compared token for token).

Acceptance length = committed tokens per verification step (a + 1; 1.0 = no gain). Per-position
acceptance i = fraction of steps with a >= i. Speedup = plain greedy wall time / speculative wall time
on the same prompts (the target's prefill counts on both sides).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


def greedy_accept(draft_tokens: list[int], target_greedy: list[int]) -> int:
    """Number of draft tokens accepted by greedy verification.

    target_greedy[i] is the target's argmax after prefix + draft_tokens[:i] (len(draft_tokens) + 1
    entries). draft_tokens[i] is accepted while every earlier one was and it equals target_greedy[i];
    the step then commits the a accepted tokens plus target_greedy[a] (the correction, or the bonus
    token when all k were accepted): a + 1 tokens per target forward.
    """
    assert len(target_greedy) == len(draft_tokens) + 1
    a = 0
    while a < len(draft_tokens) and draft_tokens[a] == target_greedy[a]:
        a += 1
    return a


@dataclass
class GenResult:
    tokens: list[int]
    accepted: list[int] = field(default_factory=list)  # a per verification step
    seconds: float = 0.0


def _finish(tokens: list[int], max_new_tokens: int, eos_ids) -> tuple[list[int], bool]:
    """Truncate at the first eos (kept) or at max_new_tokens; done flag."""
    for i, t in enumerate(tokens[:max_new_tokens]):
        if t in eos_ids:
            return tokens[: i + 1], True
    return tokens[:max_new_tokens], len(tokens) >= max_new_tokens


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def greedy_generate(target, prompt: list[int], max_new_tokens: int, eos_ids) -> GenResult:
    """Plain greedy decoding with the KV cache, one target forward per token (the baseline)."""
    dev = target.device
    _sync(dev)
    t0 = time.perf_counter()
    cache = DynamicCache(config=target.config)
    out = target(torch.tensor([prompt], device=dev), past_key_values=cache, use_cache=True, logits_to_keep=1)
    toks = [int(out.logits[0, -1].argmax())]
    while not _finish(toks, max_new_tokens, eos_ids)[1]:
        out = target(torch.tensor([[toks[-1]]], device=dev), past_key_values=cache, use_cache=True)
        toks.append(int(out.logits[0, -1].argmax()))
    _sync(dev)
    return GenResult(_finish(toks, max_new_tokens, eos_ids)[0], seconds=time.perf_counter() - t0)


@torch.no_grad()
def sample_generate(target, prompt, max_new_tokens, temperature, gen: torch.Generator, eos_ids) -> list[int]:
    """Ancestral sampling at `temperature` with the KV cache (data generation only)."""
    dev = target.device
    cache = DynamicCache(config=target.config)
    out = target(torch.tensor([prompt], device=dev), past_key_values=cache, use_cache=True, logits_to_keep=1)
    toks: list[int] = []
    while True:
        p = torch.softmax(out.logits[0, -1].float() / temperature, -1)
        toks.append(int(torch.multinomial(p.cpu(), 1, generator=gen)))
        if _finish(toks, max_new_tokens, eos_ids)[1]:
            return _finish(toks, max_new_tokens, eos_ids)[0]
        out = target(torch.tensor([[toks[-1]]], device=dev), past_key_values=cache, use_cache=True)


def _aux(out, layers: tuple[int, ...]) -> torch.Tensor:
    return torch.cat([out.hidden_states[i + 1] for i in layers], dim=-1)


@torch.no_grad()
def speculative_generate(target, draft, prompt: list[int], k: int, max_new_tokens: int, eos_ids) -> GenResult:
    """Chain drafting of k tokens per cycle, verified by one target forward (module docstring)."""
    if k < 1:
        raise ValueError(f"k (draft tokens per step) must be >= 1, got {k}")
    dev = target.device
    layers = draft.s.aux_layers
    _sync(dev)
    t0 = time.perf_counter()
    cache = DynamicCache(config=target.config)
    out = target(
        torch.tensor([prompt], device=dev), past_key_values=cache, use_cache=True, output_hidden_states=True
    )
    seq = list(prompt) + [int(out.logits[0, -1].argmax())]
    pending = _aux(out, layers).to(draft.fc.weight.dtype)  # aux states of columns c..n-1
    dk = dv = None  # draft KV cache: step-0 columns 0..c-1
    c = 0
    accepted: list[int] = []
    new, done = seq[len(prompt) :], False
    new, done = _finish(new, max_new_tokens, eos_ids)
    while not done:
        n = len(seq) - 1  # target cache length
        # 1. catch-up: columns c..n-1 take (x_{t+1}, g_t)
        ids = torch.tensor([seq[c + 1 : n + 1]], device=dev)
        pos = torch.arange(c, n, device=dev)[None]
        mask = torch.ones(n - c, n, dtype=torch.bool, device=dev).tril(diagonal=c)
        past = None if dk is None else (dk, dv)
        h, logits, (kk, vv) = draft.step(ids, pending, pos, past, mask)
        dk = kk if dk is None else torch.cat([dk, kk], 2)
        dv = vv if dv is None else torch.cat([dv, vv], 2)
        c = n
        # 2. chain: each step from its own hidden state; its keys follow the committed ones
        h = h[:, -1:]
        proposal = [int(draft.to_target_ids(logits[0, -1].argmax()))]
        ck, cv = dk, dv
        for j in range(1, k):
            pos = torch.tensor([[n - 1 + j]], device=dev)
            h, logits, (kk, vv) = draft.step(
                torch.tensor([[proposal[-1]]], device=dev), h, pos, (ck, cv), None
            )
            ck, cv = torch.cat([ck, kk], 2), torch.cat([cv, vv], 2)
            proposal.append(int(draft.to_target_ids(logits[0, -1].argmax())))
        # 3. verify all k in one target forward
        verify = torch.tensor([[seq[-1], *proposal]], device=dev)
        out = target(verify, past_key_values=cache, use_cache=True, output_hidden_states=True)
        a = greedy_accept(proposal, out.logits[0].argmax(-1).tolist())
        accepted.append(a)
        # 4. commit d_1..d_a and the target's token after them; drop the rejected positions
        seq += proposal[:a] + [int(out.logits[0, a].argmax())]
        cache.crop(n + 1 + a)
        pending = _aux(out, layers)[:, : a + 1].to(draft.fc.weight.dtype)
        new, done = _finish(seq[len(prompt) :], max_new_tokens, eos_ids)
    _sync(dev)
    return GenResult(new, accepted, time.perf_counter() - t0)


def acceptance_stats(accepted: list[list[int]], k: int) -> dict:
    """Mean acceptance length (tokens per verification step, a + 1 pooled over all steps) and
    per-position acceptance P(a >= i), i = 1..k."""
    flat = [a for run in accepted for a in run]
    if not flat:
        return {"acceptance_length": float("nan"), "per_position_acceptance": [], "verify_steps": 0}
    return {
        "acceptance_length": sum(a + 1 for a in flat) / len(flat),
        "per_position_acceptance": [sum(a >= i for a in flat) / len(flat) for i in range(1, k + 1)],
        "verify_steps": len(flat),
    }


@torch.no_grad()
def compare(target, draft, prompts: list[list[int]], k: int, max_new_tokens: int, eos_ids,
            plain: list[GenResult] | None = None) -> dict:  # fmt: skip
    """Speculative vs plain greedy on the same prompts: acceptance, speedup and whether every output
    matched token for token. `plain`: greedy results of these prompts already decoded (reused)."""
    # warm-up: first calls pay one-off costs (allocator, kernels) that are not decoding speed
    speculative_generate(target, draft, prompts[0], k, 4, eos_ids)
    if plain is None:
        greedy_generate(target, prompts[0], 4, eos_ids)
        plain = [greedy_generate(target, p, max_new_tokens, eos_ids) for p in prompts]
    spec = [speculative_generate(target, draft, p, k, max_new_tokens, eos_ids) for p in prompts]
    t_plain, t_spec = sum(r.seconds for r in plain), sum(r.seconds for r in spec)
    return {
        **acceptance_stats([r.accepted for r in spec], k),
        "k": k,
        "tokens": sum(len(r.tokens) for r in spec),
        "plain_seconds": t_plain,
        "spec_seconds": t_spec,
        "speedup": t_plain / t_spec if t_spec > 0 else float("nan"),
        "identical_outputs": all(a.tokens == b.tokens for a, b in zip(plain, spec, strict=True)),
        "mismatches": [i for i, (a, b) in enumerate(zip(plain, spec, strict=True)) if a.tokens != b.tokens],
    }
