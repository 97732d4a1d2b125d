"""A scripted claim verifier for tests of what consumes verdicts (the rubric miner), not of the verifier."""

from __future__ import annotations

from dataclasses import dataclass, field

from m3.facts.types import Verdict

WRONG = "Antibiotics cure the common cold."
DOSE = "Take 4000 mg of paracetamol every four hours."


@dataclass
class ScriptedFacts:
    """FactAwareReward.score's shape: a claim of `claims` found in the response is Refuted when it is
    one of `refuted`, else Supported."""

    refuted: tuple[str, ...] = (WRONG, DOSE)
    claims: tuple[str, ...] = field(default=(WRONG, DOSE, "Rest helps recovery."))

    async def score(self, response, r_task, question=None):
        found = [c for c in self.claims if c in response]

        class Score:
            claims = found
            verdicts = [Verdict("Refuted" if c in self.refuted else "Supported") for c in found]
            representatives = list(range(len(found)))

        return Score()
