"""Shared types of the fact pipeline: claims, passages, verdicts, and the verifier interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

LABELS = ("Supported", "Refuted", "Uncertain")


@dataclass(frozen=True)
class Claim:
    """An atomic, self-contained factual statement extracted from a response."""

    text: str
    sentence_index: int = -1  # which response sentence it came from (-1: unknown)


@dataclass(frozen=True)
class Passage:
    """A unit of evidence: a chunk of a guideline digest or a user-supplied passage."""

    id: str  # stable: "<source>#<section>#<chunk>"
    text: str
    source: str  # e.g. the guideline id or a URL
    section: str = ""
    title: str = ""


@dataclass
class Verdict:
    label: str  # Supported | Refuted | Uncertain
    evidence_ids: list[str] = field(default_factory=list)
    confidence: float = 0.0
    rationale: str = ""
    verifier: str = ""  # backend name and version, e.g. "offline-nli-v1"
    cached: str = ""  # "" (fresh) | "l1" | "l2"

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"verdict label must be one of {LABELS}, got {self.label!r}")


class ClaimVerifier(Protocol):
    """Labels claims against evidence. `version` enters every cache key, so changing the verifier
    (prompt, model, thresholds) or the corpus never serves stale verdicts."""

    name: str
    version: str  # verifier + corpus version

    async def verify(self, claims: list[str]) -> list[Verdict]: ...
