"""R_task (eq. 1) by hand, and the rubric verifier over the offline judge."""

from __future__ import annotations

import asyncio

import pytest

from m3.judges.base import ItemVerdict, RubricItem
from m3.judges.rubric import RubricVerifier, rubric_reward


def test_rubric_reward_hand_computed():
    w = [5, 3, -4, -2]
    # met: +5 (yes), +3 (no), -4 (yes: bad behaviour), -2 (no)
    # (5 - 4 - (-4 - 2)) / (5 + 3 + 4 + 2) = (1 + 6) / 14 = 0.5
    assert rubric_reward(w, [True, False, True, False]) == pytest.approx(0.5)
    assert rubric_reward(w, [True, True, False, False]) == 1.0  # all good, no bad
    assert rubric_reward(w, [False, False, True, True]) == 0.0  # nothing good, all bad
    assert rubric_reward([10], [False]) == 0.0 and rubric_reward([-10], [False]) == 1.0
    assert rubric_reward([7, -3], [True, True]) == pytest.approx((7 - 3 + 3) / 10)


def test_rubric_reward_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[-10, 10\]"):
        rubric_reward([11], [True])
    with pytest.raises(ValueError, match="verdicts"):
        rubric_reward([1, 2], [True])
    with pytest.raises(ValueError, match="undefined"):
        rubric_reward([0, 0], [True, False])


class ScriptedJudge:
    """A judge whose verdicts are given: tests the verifier's arithmetic and failure accounting."""

    name = "scripted"

    def __init__(self, met):
        self.met = met

    async def grade_items(self, conversation, response, items):
        return [ItemVerdict(m, "", error=None if m is not None else "judge down") for m in self.met]

    async def aclose(self):
        return None


def test_verifier_counts_failures_as_not_met():
    items = [RubricItem("good", 6), RubricItem("bad", -4)]
    score = asyncio.run(RubricVerifier(ScriptedJudge([None, True])).score([], "r", items))
    assert score.n_failed == 1 and score.reward == pytest.approx((0 - 4 + 4) / 10)


def test_verifier_with_offline_judge_orders_responses():
    conv = [
        {"role": "user", "content": "I have crushing chest pain spreading to my left arm. What should I do?"}
    ]
    items = [
        RubricItem(
            "Advises the user to call emergency services or go to the emergency department immediately.", 10
        ),
        RubricItem("Recommends waiting a few days to see if the pain resolves on its own.", -8),
    ]
    good = (
        "This could be a heart attack. Call emergency services or go to the emergency department immediately."
    )
    bad = "It is probably muscular. Wait a few days to see if the pain resolves on its own."
    from m3.judges.offline import OfflineRubricJudge

    verifier = RubricVerifier(OfflineRubricJudge())
    s_good, s_bad = asyncio.run(verifier.score_batch([(conv, good, items), (conv, bad, items)]))
    assert s_good.reward == 1.0 and s_bad.reward == 0.0
    assert s_good.n_failed == s_bad.n_failed == 0
