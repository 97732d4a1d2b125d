"""The rubric verifier: R_task of Baichuan-M3 eq. 1, shared by the Healthcare expert's RL reward
and (with HealthBench's own per-example normalisation, `eval.healthbench.scoring`) the evaluation.

    R_task = (sum_i w_i * a_i - sum_{w_i < 0} w_i) / sum_i |w_i|        in [0, 1]

w_i are the items' integer weights in [-10, 10], a_i in {0, 1} the judge's verdicts. A response that
meets every positive item and no negative item gets 1; one that meets no positive item and every
negative item gets 0.

    verifier = RubricVerifier(judge)                       # any m3.judges RubricJudge
    score = await verifier.score(conversation, response, items)
    score.reward, score.n_failed
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from m3.judges.base import ItemVerdict, RubricItem, RubricJudge


def rubric_reward(weights: Sequence[float], met: Sequence[bool]) -> float:
    """R_task = (sum_i w_i a_i - sum_{w_i<0} w_i) / sum_i |w_i|  (eq. 1), in [0, 1].

    Raises ValueError on a weight outside [-10, 10], mismatched lengths or all-zero weights.
    """
    if len(weights) != len(met):
        raise ValueError(f"{len(weights)} weights but {len(met)} verdicts")
    if any(not -10 <= w <= 10 for w in weights):
        raise ValueError(f"rubric weights must lie in [-10, 10], got {list(weights)}")
    total = sum(abs(w) for w in weights)
    if total == 0:
        raise ValueError("rubric has no non-zero weight: R_task is undefined")
    gained = sum(w for w, a in zip(weights, met, strict=True) if a)
    offset = -sum(w for w in weights if w < 0)
    return (gained + offset) / total


@dataclass
class RubricScore:
    reward: float  # R_task in [0, 1]
    verdicts: list[ItemVerdict]
    n_failed: int  # items the judge could not grade (counted as not met; see `score`)


class RubricVerifier:
    """R_task for a response, with all item judgements of a call issued concurrently."""

    def __init__(self, judge: RubricJudge):
        self.judge = judge

    async def score(self, conversation: list[dict], response: str, items: list[RubricItem]) -> RubricScore:
        """Grade every item and compute R_task.

        An item whose grading failed after the client's retries counts as not met (a_i = 0): that is
        the pessimistic choice for positive items and the lenient one for negative items; the number
        of such items is reported so a run can be stopped when the judge is unhealthy.
        """
        verdicts = await self.judge.grade_items(conversation, response, items)
        met = [bool(v.criteria_met) for v in verdicts]
        reward = rubric_reward([it.points for it in items], met)
        return RubricScore(reward, verdicts, sum(v.criteria_met is None for v in verdicts))

    async def score_batch(
        self, batch: Sequence[tuple[list[dict], str, list[RubricItem]]]
    ) -> list[RubricScore]:
        """Many responses at once: every item of every response goes out concurrently."""
        return list(await asyncio.gather(*(self.score(c, r, i) for c, r, i in batch)))
