"""The patient simulator of the consultation environment (docs/formulas.md, "Patient simulator").

A passive standardized patient: it answers only what the doctor asks, never volunteers unasked
facts, says "I don't know" when the case lacks the answer, never names its diagnosis and knows no
examination findings or test results. It implements `m3.clinic.episode.Patient`:

    from m3.clinic.patient.simulator import PatientSimulator
    from m3.clinic.patient.config import SimulatorConfig
    from m3.clinic.patient.guards import check_reply
    patient = PatientSimulator(SimulatorConfig())                    # backend "offline"
    patient.opening(case)        # PatientReply("Hello, doctor. I'm here because of double vision.", ["h1"])
    await patient.reply(case, transcript, "Do you smoke?")          # ("I am a non-smoker, ...", ["h8"])
    await patient.reply(case, transcript, "You have myasthenia gravis.")   # end=True, reason="diagnosis"
    patient.interruption(case, random.Random(0))   # a snippet shown to the doctor only
    check_reply(case, "I think I have myasthenia gravis.", [])   # ['diagnosis_leak: ...']

    llm = PatientSimulator(SimulatorConfig(backend="openai", model="gpt-4.1", cache_path="sim.sqlite"))

Every question goes through the same rules first (both backends): the termination gate (the doctor
states a diagnosis or says goodbye -> end=True), requests to examine or test ("You'd have to examine
me for that, doctor"), and "anything else?". History questions then go to the backend:
  * "offline" (deterministic, `m3.clinic.patient.retrieval`): the case facts that match the question
    (TOPICS + MiniLM similarity + shared words), at most `max_facts`, rewritten in the first person;
    no match -> "I don't know". It passes `check_reply` by construction (tests/m3/clinic/test_simulator.py
    runs it over the 107 AgentClinic cases).
  * "openai" (`m3.clinic.patient.llm`): any OpenAI-compatible endpoint, prompted with the patient
    profile (history facts only: no diagnosis, no exam, no tests), the behavioural rules and the
    dialogue, answering {"reply", "fact_ids"}. The factual check runs on every answer; a failed
    answer is asked again once (`check_retries`) with the problems listed, then replaced by the
    offline answer (`stats.fallbacks` counts these).
The simulator sees `Transcript.patient_messages()` only, never the interruption snippets.

Layout: see `m3.clinic.patient` (config, questions, persona, retrieval, guards, llm).

Limits: English only; the question rules are keyword lists, so an unusual phrasing can miss a topic
(it then falls back to similarity); the gate ends only on diagnosis statements it recognises ("you
have X", "I think this is X", "the diagnosis is X"; see `termination_gate`); the factual check is
lexical (see `m3.clinic.patient.llm`). Persona: a parent answers for children under `child_age`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from m3.clinic.episode import PatientReply
from m3.clinic.patient.config import SimulatorConfig
from m3.clinic.patient.guards import GATE_REPLIES, termination_gate
from m3.clinic.patient.llm import ask_llm, build_messages
from m3.clinic.patient.persona import (
    EXAM_REPLY,
    INTERRUPTIONS,
    NOTHING_ELSE,
    PARENT_INTERRUPTIONS,
    PERSONA_SELF,
    TEST_REPLY,
    age_text,
    dont_know,
    opening_text,
    persona_of,
)
from m3.clinic.patient.questions import Intent, classify
from m3.clinic.patient.retrieval import CaseIndex, retrieve, say_facts

if TYPE_CHECKING:
    from m3.clinic.cases import ClinicalCase
    from m3.clinic.transcript import Transcript
    from m3.llm import AsyncLLMClient

log = logging.getLogger("m3.clinic.patient")


@dataclass
class SimulatorStats:
    replies: int = 0
    gate_ends: int = 0
    llm_replies: int = 0  # LLM answers that passed the check
    llm_retries: int = 0  # re-asks after a failed check
    fallbacks: int = 0  # LLM turns answered offline (failed check twice, or endpoint error)


# --- the simulator -------------------------------------------------------------------------------


def _disclosed(transcript: Transcript | None) -> set[str]:
    """Fact ids the patient already said (m3.clinic.episode stores them in turn.meta["facts"])."""
    if transcript is None:
        return set()
    return {fid for t in transcript.turns if t.role == "patient" for fid in t.meta.get("facts", [])}


class PatientSimulator:
    """The `m3.clinic.episode.Patient` of the OSCE environment; safe to share across concurrent episodes."""

    def __init__(self, cfg: SimulatorConfig | None = None) -> None:
        self.cfg = cfg or SimulatorConfig()
        self.stats = SimulatorStats()
        self._indexes: dict[tuple[str, int], CaseIndex] = {}
        self._client: AsyncLLMClient | None = None

    def index(self, case: ClinicalCase) -> CaseIndex:
        """The retrieval index of `case` (built once per case and kept)."""
        key = (case.case_id, hash(tuple((f.id, f.text) for f in case.history)))
        if key not in self._indexes:
            self._indexes[key] = CaseIndex(case)
        return self._indexes[key]

    def prepare(self, cases: list[ClinicalCase]) -> None:
        """Embed the facts of all `cases` in one batch (faster than case by case)."""
        from m3.text.embeddings import embed

        embed([f.text for c in cases for f in c.history])
        for case in cases:
            _ = self.index(case).vectors

    def persona(self, case: ClinicalCase) -> str:
        return persona_of(case, self.cfg.child_age)

    def opening(self, case: ClinicalCase) -> PatientReply:
        """The chief complaint, first person; fact_ids = the chief complaint fact(s)."""
        ids = [f.id for f in case.history if f.category == "chief_complaint"]
        return PatientReply(opening_text(case, self.persona(case)), ids)

    def answer(self, case: ClinicalCase, question: str, transcript: Transcript | None = None) -> PatientReply:
        """The offline reply to `question` (synchronous; `reply` uses it for backend "offline")."""
        self.stats.replies += 1
        gate = termination_gate(question, case)
        if gate is not None:
            self.stats.gate_ends += 1
            return PatientReply(GATE_REPLIES[gate], [], end=True, reason=gate)
        return self._offline(case, classify(question), question, _disclosed(transcript))

    def _offline(
        self, case: ClinicalCase, intent: Intent, question: str, disclosed: set[str]
    ) -> PatientReply:
        if intent.kind == "exam":
            return PatientReply(EXAM_REPLY)
        if intent.kind == "test":
            return PatientReply(TEST_REPLY)
        if intent.kind == "nothing_else":
            return PatientReply(NOTHING_ELSE)
        if intent.kind == "age":
            return PatientReply(age_text(case, self.persona(case)))
        facts = retrieve(self.index(case), question, intent.topics, self.cfg, frozenset(disclosed))
        if not facts:
            return PatientReply(dont_know(question))
        return PatientReply(say_facts(facts, self.persona(case), disclosed), [f.id for f in facts])

    async def reply(self, case: ClinicalCase, transcript: Transcript | None, question: str) -> PatientReply:
        """The patient's answer to the doctor's latest `question` (already the last turn of `transcript`)."""
        intent = classify(question)
        if self.cfg.backend == "offline" or intent.kind != "history" or termination_gate(question, case):
            return self.answer(case, question, transcript)
        self.stats.replies += 1
        disclosed = _disclosed(transcript)
        messages = build_messages(case, self.persona(case), transcript, question)
        outcome = await ask_llm(self._llm(), case, messages, question, self.cfg.check_retries)
        self.stats.llm_retries += outcome.retries
        if outcome.ok:
            self.stats.llm_replies += 1
            return PatientReply(outcome.text, outcome.fact_ids)
        self.stats.fallbacks += 1
        log.info("case %s: LLM patient reply rejected (%s); answering offline", case.case_id, outcome.why)
        return self._offline(case, intent, question, disclosed)

    def interruption(self, case: ClinicalCase, rng: random.Random) -> str:
        """A predefined anxious snippet (INTERRUPTIONS, or PARENT_INTERRUPTIONS for a child)."""
        pool = INTERRUPTIONS if self.persona(case) == PERSONA_SELF else PARENT_INTERRUPTIONS
        return rng.choice(pool)

    def _llm(self) -> AsyncLLMClient:
        if self._client is None:
            from m3.llm import AsyncLLMClient

            self._client = AsyncLLMClient(self.cfg.llm_config())
        return self._client

    async def aclose(self) -> None:
        """Close the LLM client (if one was opened)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
