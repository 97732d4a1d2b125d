"""Reference speculative decoding: the accept rule by hand, and greedy output identical to plain
greedy decoding token for token (float32 target; drafts that are right, partly right and wrong)."""

from __future__ import annotations

import torch

from draft_eagle3.model import DraftShape, Eagle3Draft
from draft_eagle3.speculative import (
    acceptance_stats,
    compare,
    greedy_accept,
    greedy_generate,
    speculative_generate,
    tree_accept,
    tree_attention_mask,
)
from tests.draft_eagle3.conftest import PROMPTS

EOS = {151645, 151643}


def test_greedy_accept_by_hand():
    assert greedy_accept([5, 6, 7], [5, 6, 7, 8]) == 3  # all accepted, bonus token 8
    assert greedy_accept([5, 6, 7], [5, 9, 7, 8]) == 1  # 6 rejected: commit 5 and the correction 9
    assert greedy_accept([5, 6, 7], [1, 6, 7, 8]) == 0  # later matches do not count
    assert greedy_accept([4], [4, 2]) == 1


def test_acceptance_stats_by_hand():
    s = acceptance_stats([[0, 2], [3, 1]], k=3)
    assert s["acceptance_length"] == (1 + 3 + 4 + 2) / 4  # 2.5 tokens per verification
    assert s["per_position_acceptance"] == [3 / 4, 2 / 4, 1 / 4]
    assert s["verify_steps"] == 4


def test_tree_accept_by_hand():
    # root 0 -> nodes 1 (tok 5), 2 (tok 6); 1 -> 3 (tok 7), 4 (tok 8); 2 -> 5 (tok 9)
    parents, tokens = [0, 0, 0, 1, 1, 2], [-1, 5, 6, 7, 8, 9]
    assert tree_accept(parents, tokens, [6, 0, 9, 0, 0, 4]) == [2, 5]  # second branch, whole path
    assert tree_accept(parents, tokens, [5, 8, 0, 0, 3, 0]) == [1, 4]  # bonus token 3 after node 4
    assert tree_accept(parents, tokens, [5, 1, 0, 0, 0, 0]) == [1]  # no child of node 1 is 1
    assert tree_accept(parents, tokens, [7, 0, 0, 0, 0, 0]) == []  # 7 is not a child of the root


def test_tree_attention_mask_by_hand():
    m = tree_attention_mask([0, 0, 0, 1], prefix=2).int().tolist()
    assert m == [
        [1, 1, 1, 0, 0, 0],  # x_n: the prefix and itself
        [1, 1, 1, 1, 0, 0],  # node 1: x_n and itself
        [1, 1, 1, 0, 1, 0],  # node 2: not its sibling
        [1, 1, 1, 1, 0, 1],  # node 3: its parent 1
    ]


class OracleDraft(Eagle3Draft):
    """A draft over the full target vocabulary that runs the real draft layer (shapes, KV cache)
    but proposes the reference greedy continuation, wrong at every position divisible by
    `wrong_every`: exercises full, partial and zero acceptance. Stands in for a trained draft, not
    for the decoder under test."""

    def __init__(self, target, reference: list[int], wrong_every: int):
        V = target.config.vocab_size
        super().__init__(DraftShape.from_target(target.config, [1, 2, 3], V, gated=True))
        self.copy_target_weights(target, torch.arange(V), init_lm_head=False)
        self.ref, self.wrong_every = reference, wrong_every

    second = 0.0  # > 0: a wrong top token keeps the right one as the runner-up (tree drafting finds it)

    def step(self, ids, hidden, pos, past=None, mask=None):
        h, logits, kv = super().step(ids, hidden, pos, past, mask)
        want = torch.zeros_like(logits)
        for r, p in enumerate(pos[0].tolist()):  # column at position p predicts token p + 2
            tok = self.ref[p + 2] if p + 2 < len(self.ref) else 0
            wrong = (p + 2) % self.wrong_every == 0
            want[0, r, (tok + 1) % len(want[0, r]) if wrong else tok] = 1.0
            if wrong and self.second:
                want[0, r, tok] = self.second
        return h, want, kv


def test_plain_greedy_matches_hf_generate(walk_target):
    ids = torch.tensor([PROMPTS[0]])
    hf = walk_target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    ours = greedy_generate(walk_target, PROMPTS[0], 20, EOS).tokens
    assert len(set(ours)) > 5  # the walk target does not just repeat one token
    assert hf[0, ids.shape[1] :].tolist()[: len(ours)] == ours


def test_speculative_equals_greedy_with_partial_acceptance(walk_target):
    seen = set()
    for prompt in PROMPTS:
        plain = greedy_generate(walk_target, prompt, 30, EOS).tokens
        for k, wrong in ((4, 3), (6, 5), (1, 2)):
            draft = OracleDraft(walk_target, prompt + plain, wrong).eval()
            spec = speculative_generate(walk_target, draft, prompt, k, 30, EOS)
            assert spec.tokens == plain, (k, wrong)
            assert sum(a + 1 for a in spec.accepted) + 1 >= len(plain)  # + the prefill's token
            seen.update(spec.accepted)
    assert {0, 1, 2, 4} <= seen  # rejections, partial and full acceptance all happened


def test_speculative_equals_greedy_with_untrained_draft(walk_target):
    ids = torch.arange(0, 151936, 1000)
    draft = Eagle3Draft(DraftShape.from_target(walk_target.config, [1, 2, 3], len(ids), gated=False))
    draft.copy_target_weights(walk_target, ids)
    report = compare(walk_target, draft.eval(), PROMPTS, k=3, max_new_tokens=16, eos_ids=EOS)
    assert report["identical_outputs"] and report["mismatches"] == []
    assert report["acceptance_length"] == 1.0 and report["per_position_acceptance"] == [0.0] * 3


def test_tree_equals_greedy_and_finds_the_runner_up(walk_target):
    """Tree drafting (topk 2): output identical to plain greedy; where the draft's top token is wrong
    and the right one is its runner-up, the tree accepts it and the chain cannot."""
    for prompt in PROMPTS:
        plain = greedy_generate(walk_target, prompt, 30, EOS).tokens
        draft = OracleDraft(walk_target, prompt + plain, 3).eval()
        draft.second = 0.5
        chain = speculative_generate(walk_target, draft, prompt, 4, 30, EOS)
        tree = speculative_generate(walk_target, draft, prompt, 4, 30, EOS, topk=2, num_draft_tokens=8)
        assert chain.tokens == tree.tokens == plain
        # every third top token is wrong: the chain never accepts past it, the tree goes through its runner-up
        assert max(chain.accepted) <= 2 < max(tree.accepted)
        assert len(tree.accepted) < len(chain.accepted)  # fewer target forwards for the same output
        # a draft that is never right: the tree still commits one target token per forward
        draft.wrong_every, draft.second = 1, 0.0
        none = speculative_generate(walk_target, draft, prompt, 3, 12, EOS, topk=3, num_draft_tokens=7)
        assert none.tokens == plain[:12] and set(none.accepted) == {0}


def test_tree_of_width_one_is_the_chain(walk_target):
    """_tree with topk 1 grows exactly the chain's proposals (random draft, real catch-up state)."""
    from draft_eagle3.speculative import _aux, _chain, _tree

    ids = torch.arange(0, 151936, 500)
    draft = Eagle3Draft(DraftShape.from_target(walk_target.config, [1, 2, 3], len(ids), gated=True))
    draft.copy_target_weights(walk_target, ids)
    prompt = PROMPTS[2]
    with torch.no_grad():
        out = walk_target(torch.tensor([prompt]), output_hidden_states=True)
        n = len(prompt) - 1
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        h, logits, (dk, dv) = draft.eval().step(
            torch.tensor([prompt[1:]]), _aux(out, (1, 2, 3))[:, :n], torch.arange(n)[None], None, mask
        )
        chain = _chain(draft, h[:, -1:], logits, dk, dv, n, 5)
        parents, tokens = _tree(draft, h[:, -1:], logits, dk, dv, n, 5, 1, 5)
    assert parents == [0, 0, 1, 2, 3, 4] and tokens[1:] == chain
    assert len(set(chain)) > 1  # a real proposal, not one repeated token
