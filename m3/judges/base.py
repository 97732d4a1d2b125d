"""The judge interface shared by the RL rewards and the evaluations.

A rubric judge decides, per rubric item, whether a response meets it. Two backends implement it:
`openai` (any OpenAI-compatible endpoint, `m3.judges.openai_judge`) and `offline` (deterministic,
no network, `m3.judges.offline`). Every report names the backend (`RubricJudge.name`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class RubricItem:
    """One rubric item: integer points in [-10, 10] (negative = undesirable behaviour)."""

    criterion: str
    points: float
    tags: tuple[str, ...] = ()


@dataclass
class ItemVerdict:
    """A judge's verdict on one item. `criteria_met` is None when the judge failed (see `error`)."""

    criteria_met: bool | None
    explanation: str = ""
    error: str | None = None
    meta: dict = field(default_factory=dict)


class RubricJudge(Protocol):
    name: str  # backend name written into every report, e.g. "offline" or "openai:gpt-4.1"

    async def grade_items(
        self, conversation: list[dict], response: str, items: list[RubricItem]
    ) -> list[ItemVerdict]:
        """Grade `response` (the final assistant turn) after `conversation` against every item.

        `conversation` is a list of {"role", "content"} messages (the prompt, without the response).
        Returns one verdict per item, in order. Items of one call are graded concurrently.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and caches (a no-op for backends that hold none)."""
        ...
