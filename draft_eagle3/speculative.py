"""Reference speculative decoding, chain and tree (batch 1, temperature 0), with the target's KV cache.

    from draft_eagle3.speculative import compare
    report = compare(target, draft, prompts, k=6, max_new_tokens=64, eos_ids=eos_ids(target))
    report["acceptance_length"], report["per_position_acceptance"], report["speedup"]
    tree = compare(target, draft, prompts, k=6, max_new_tokens=64, eos_ids=..., topk=4, num_draft_tokens=16)

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

Tree (`topk` > 1; the EAGLE-2 tree that SGLang's `--speculative-eagle-topk` /
`--speculative-num-steps` / `--speculative-num-draft-tokens` build): step 2 instead grows a tree of
depth k. The root column proposes its top-`topk` tokens (score = draft log-prob); each further draft
step feeds the current frontier in one forward (each node at position n-1+depth, attending to the
committed columns and its own ancestors) and keeps the `topk` best of the frontier's topk x topk
children by cumulative log-prob. The `num_draft_tokens` - 1 best nodes of the whole tree (by
cumulative log-prob; ancestors always included) are verified in one target forward over
[x_n, nodes] with a tree attention mask (`tree_attention_mask`) and depth positions. `tree_accept`
walks from x_n to the child whose token is the target's greedy choice, as long as one exists; the
target cache keeps x_n and the accepted path (`_keep_positions`). topk = 1 with num_draft_tokens =
k + 1 is the chain.

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


def tree_accept(parents: list[int], tokens: list[int], target_greedy: list[int]) -> list[int]:
    """The accepted path of a verified tree: node indices from the root's child downwards.

    Nodes 1..N of the verify forward have parents[i] (0 = the root x_n; parents[0] is unused) and
    tokens[i]; target_greedy[i] is the target's argmax after node i's path. From the root, move to
    the child whose token equals the target's choice at the current node while one exists. The step
    then commits the path's tokens plus target_greedy[last node] (len(path) + 1 tokens).
    """
    assert len(parents) == len(tokens) == len(target_greedy)
    path, cur = [], 0
    while True:
        nxt = [i for i in range(1, len(parents)) if parents[i] == cur and tokens[i] == target_greedy[cur]]
        if not nxt:
            return path
        cur = nxt[0]
        path.append(cur)


def tree_attention_mask(parents: list[int], prefix: int) -> torch.Tensor:
    """Bool [N+1, prefix+N+1] (True = attend) for a verify forward over [x_n, nodes 1..N] after
    `prefix` cached tokens: every row sees the prefix, x_n, its ancestors and itself."""
    m = len(parents)
    mask = torch.zeros(m, prefix + m, dtype=torch.bool)
    mask[:, : prefix + 1] = True
    for i in range(1, m):
        j = i
        while j > 0:
            mask[i, prefix + j] = True
            j = parents[j]
    return mask


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


def _keep_positions(cache: DynamicCache, keep: list[int]) -> None:
    """Keep only sequence positions `keep` of every layer of a transformers DynamicCache."""
    idx = torch.tensor(keep)
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(-2, idx.to(layer.keys.device))
        layer.values = layer.values.index_select(-2, idx.to(layer.values.device))


def _chain(draft, h, logits, ck, cv, n: int, k: int) -> list[int]:
    """k chain tokens: each draft step from its own output hidden state; keys follow the committed ones."""
    dev = logits.device
    proposal = [int(draft.to_target_ids(logits[0, -1].argmax()))]
    for j in range(1, k):
        pos = torch.tensor([[n - 1 + j]], device=dev)
        h, logits, (kk, vv) = draft.step(torch.tensor([[proposal[-1]]], device=dev), h, pos, (ck, cv), None)
        ck, cv = torch.cat([ck, kk], 2), torch.cat([cv, vv], 2)
        proposal.append(int(draft.to_target_ids(logits[0, -1].argmax())))
    return proposal


def _tree(draft, h, logits, ck, cv, n: int, k: int, topk: int, num_nodes: int) -> tuple[list[int], list[int]]:
    """An EAGLE-2 tree of depth k (module docstring): (parents, tokens) of its `num_nodes` best nodes,
    index 0 = the root x_n, nodes in depth order."""
    dev = logits.device
    score, idx = torch.log_softmax(logits[0, -1].float(), -1).topk(topk)
    # all nodes: (parent node or -1 = root, target token, depth, cumulative log-prob)
    nodes = [(-1, int(draft.to_target_ids(i)), 1, float(sc)) for sc, i in zip(score, idx, strict=True)]
    out_h = {-1: h}  # a node's draft output hidden state: its children's input
    col = {}  # a fed node's column in the draft cache (committed columns are 0..n-1)
    frontier = list(range(len(nodes)))
    for depth in range(1, k):
        s0, t = ck.shape[2], len(frontier)
        mask = torch.zeros(t, s0 + t, dtype=torch.bool, device=dev)
        mask[:, :n] = True
        for r, i in enumerate(frontier):
            mask[r, s0 + r] = True
            j = nodes[i][0]
            while j >= 0:
                mask[r, col[j]] = True
                j = nodes[j][0]
        ids = torch.tensor([[nodes[i][1] for i in frontier]], device=dev)
        hid = torch.cat([out_h[nodes[i][0]] for i in frontier], dim=1)
        pos = torch.full((1, t), n - 1 + depth, device=dev)
        h, logits, (kk, vv) = draft.step(ids, hid, pos, (ck, cv), mask)
        ck, cv = torch.cat([ck, kk], 2), torch.cat([cv, vv], 2)
        children = []
        for r, i in enumerate(frontier):
            col[i], out_h[i] = s0 + r, h[:, r : r + 1]
            sc, ix = torch.log_softmax(logits[0, r].float(), -1).topk(topk)
            children += [
                (nodes[i][3] + float(a), i, int(draft.to_target_ids(b))) for a, b in zip(sc, ix, strict=True)
            ]
        children.sort(key=lambda c: -c[0])
        frontier = []
        for sc, parent, tok in children[:topk]:
            frontier.append(len(nodes))
            nodes.append((parent, tok, depth + 1, sc))
    # the best nodes by cumulative log-prob: a child's score is its parent's plus a log-prob <= 0, so
    # it never sorts before its parent (ties: lower depth first) and the set is closed under ancestors
    best = sorted(range(len(nodes)), key=lambda i: (-nodes[i][3], nodes[i][2], i))[:num_nodes]
    order = sorted(best, key=lambda i: (nodes[i][2], i))
    row = {i: r + 1 for r, i in enumerate(order)}
    parents = [0] + [0 if nodes[i][0] < 0 else row[nodes[i][0]] for i in order]
    return parents, [-1] + [nodes[i][1] for i in order]


@torch.no_grad()
def speculative_generate(
    target, draft, prompt: list[int], k: int, max_new_tokens: int, eos_ids, topk: int = 1,
    num_draft_tokens: int | None = None,
) -> GenResult:  # fmt: skip
    """Chain drafting of k tokens per cycle (topk = 1), or a tree of depth k whose num_draft_tokens - 1
    best nodes are verified (topk > 1), by one target forward (module docstring)."""
    if k < 1:
        raise ValueError(f"k (draft tokens per step) must be >= 1, got {k}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    num_draft_tokens = k + 1 if num_draft_tokens is None else num_draft_tokens
    if topk > 1 and not 2 <= num_draft_tokens <= topk * k + 1:
        raise ValueError(f"num_draft_tokens must be in 2..topk*k+1 = {topk * k + 1}, got {num_draft_tokens}")
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
        if topk == 1:
            # 2. chain, 3. verify all k in one target forward
            proposal = _chain(draft, h[:, -1:], logits, dk, dv, n, k)
            verify = torch.tensor([[seq[-1], *proposal]], device=dev)
            out = target(verify, past_key_values=cache, use_cache=True, output_hidden_states=True)
            greedy = out.logits[0].argmax(-1).tolist()
            a = greedy_accept(proposal, greedy)
            path, commit = list(range(1, a + 1)), proposal[:a] + [greedy[a]]
            cache.crop(n + 1 + a)  # 4. drop the rejected positions
        else:
            # 2. tree, 3. verify its nodes in one forward with the tree mask and depth positions
            parents, tokens = _tree(draft, h[:, -1:], logits, dk, dv, n, k, topk, num_draft_tokens - 1)
            depth = [0] * len(parents)
            for i in range(1, len(parents)):
                depth[i] = depth[parents[i]] + 1
            mask = tree_attention_mask(parents, n).to(dev)
            bias = torch.zeros(mask.shape, dtype=target.dtype, device=dev).masked_fill(~mask, float("-inf"))
            out = target(
                torch.tensor([[seq[-1], *tokens[1:]]], device=dev),
                position_ids=torch.tensor([[n + d for d in depth]], device=dev),
                attention_mask=bias[None, None],
                past_key_values=cache,
                use_cache=True,
                output_hidden_states=True,
            )
            greedy = out.logits[0].argmax(-1).tolist()
            path = tree_accept(parents, tokens, greedy)
            a = len(path)
            commit = [tokens[i] for i in path] + [greedy[path[-1] if path else 0]]
            _keep_positions(cache, [*range(n + 1), *(n + i for i in path)])  # 4. x_n and the path
        accepted.append(a)
        # 4. commit the accepted tokens and the target's token after them
        seq += commit
        pending = _aux(out, layers)[:, [0, *path]].to(draft.fc.weight.dtype)
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
            plain: list[GenResult] | None = None, topk: int = 1, num_draft_tokens: int | None = None) -> dict:  # fmt: skip
    """Speculative vs plain greedy on the same prompts: acceptance, speedup and whether every output
    matched token for token. `plain`: greedy results of these prompts already decoded (reused);
    topk > 1: tree drafting with num_draft_tokens verified tokens (speculative_generate)."""
    tree = {"topk": topk, "num_draft_tokens": num_draft_tokens}
    # warm-up: first calls pay one-off costs (allocator, kernels) that are not decoding speed
    speculative_generate(target, draft, prompts[0], k, 4, eos_ids, **tree)
    if plain is None:
        greedy_generate(target, prompts[0], 4, eos_ids)
        plain = [greedy_generate(target, p, max_new_tokens, eos_ids) for p in prompts]
    spec = [speculative_generate(target, draft, p, k, max_new_tokens, eos_ids, **tree) for p in prompts]
    t_plain, t_spec = sum(r.seconds for r in plain), sum(r.seconds for r in spec)
    return {
        **acceptance_stats([r.accepted for r in spec], k),
        "k": k,
        **({"topk": topk, "num_draft_tokens": num_draft_tokens} if topk > 1 else {}),
        "tokens": sum(len(r.tokens) for r in spec),
        "plain_seconds": t_plain,
        "spec_seconds": t_spec,
        "speedup": t_plain / t_spec if t_spec > 0 else float("nan"),
        "identical_outputs": all(a.tokens == b.tokens for a, b in zip(plain, spec, strict=True)),
        "mismatches": [i for i, (a, b) in enumerate(zip(plain, spec, strict=True)) if a.tokens != b.tokens],
    }
