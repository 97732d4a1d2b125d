"""The patient simulator of the consultation environment (PAPER.md, "Patient simulator").

A passive standardized patient: it answers only what the doctor asks, never volunteers unasked
facts, says "I don't know" when the case lacks the answer, never names its diagnosis and knows no
examination findings or test results. It implements `m3.clinic.episode.Patient`:

    from m3.clinic.simulator import PatientSimulator, SimulatorConfig, check_reply
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
  * "offline" (deterministic, `m3.clinic.simulator_offline`): the case facts that match the question
    (TOPICS + MiniLM similarity + shared words), at most `max_facts`, rewritten in the first person;
    no match -> "I don't know". It passes `check_reply` by construction (tests/m3/clinic/test_simulator.py
    runs it over the 107 AgentClinic cases).
  * "openai" (`m3.clinic.simulator_llm`): any OpenAI-compatible endpoint, prompted with the patient
    profile (history facts only: no diagnosis, no exam, no tests), the behavioural rules and the
    dialogue, answering {"reply", "fact_ids"}. The factual check runs on every answer; a failed
    answer is asked again once (`check_retries`) with the problems listed, then replaced by the
    offline answer (`stats.fallbacks` counts these).
The simulator sees `Transcript.patient_messages()` only, never the interruption snippets.

Layout: this module holds the config, the question rules (TOPICS, `classify`), the interruption
snippets and the simulator; `m3.clinic.simulator_offline` the retrieval and first-person rewrite;
`m3.clinic.simulator_llm` the factual check, the termination gate and the LLM backend.

Limits: English only; the question rules are keyword lists, so an unusual phrasing can miss a topic
(it then falls back to similarity); the gate ends only on diagnosis statements it recognises ("you
have X", "I think this is X", "the diagnosis is X"; see `termination_gate`); the factual check is
lexical (see `m3.clinic.simulator_llm`). Persona: a parent answers for children under `child_age`.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from m3.clinic.episode import PatientReply
from m3.clinic.simulator_llm import GATE_REPLIES, ask_llm, build_messages, check_reply, termination_gate
from m3.clinic.simulator_offline import (
    EXAM_REPLY,
    NOTHING_ELSE,
    PERSONA_SELF,
    TEST_REPLY,
    CaseIndex,
    dont_know,
    lower_first,
    retrieve,
    say_facts,
)

if TYPE_CHECKING:
    from m3.clinic.cases import ClinicalCase, HistoryFact
    from m3.clinic.transcript import Transcript
    from m3.llm import AsyncLLMClient, LLMConfig

__all__ = [
    "INTERRUPTIONS", "PARENT_INTERRUPTIONS", "TOPICS", "PatientSimulator", "SimulatorConfig", "SimulatorStats",
    "Topic", "check_reply", "classify", "termination_gate",
]  # fmt: skip

log = logging.getLogger("m3.clinic.simulator")
BACKENDS = ("offline", "openai")


@dataclass(unsafe_hash=True)  # hashable (one simulator per config) yet mergeable by Hydra
class SimulatorConfig:
    """Backend and retrieval knobs; the llm_* fields describe the endpoint of backend "openai"."""

    backend: str = "offline"
    max_facts: int = 2  # facts disclosed per reply at most
    sim_threshold: float = 0.6  # MiniLM cosine that alone makes a fact an answer
    lexical_sim_floor: float = 0.3  # cosine needed by a fact sharing a content word with the question
    topic_sim_threshold: float = 0.5  # cosine a fact of a topic's "soft" category needs
    lexical_weight: float = 0.3  # ranking bonus: share of question words found in the fact
    topic_bonus: float = 0.2  # ranking bonus per topic cue the fact matches (category, words)
    margin: float = 0.15  # without a topic, keep only facts scoring within this of the best
    child_age: int = 12  # younger patients are spoken for by a parent
    check_retries: int = 1  # LLM answers re-asked after a failed factual check, then the offline answer
    model: str = ""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    cache_path: str | None = None
    temperature: float = 0.0
    max_tokens: int = 300
    timeout_s: float = 60.0
    max_concurrency: int = 16

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"SimulatorConfig.backend={self.backend!r}: use one of {BACKENDS}")
        if self.backend == "openai" and not self.model.strip():
            raise ValueError("SimulatorConfig(backend='openai') needs model=... (the served model name)")
        if self.max_facts < 1:
            raise ValueError(f"SimulatorConfig.max_facts={self.max_facts} must be >= 1 (e.g. 2)")
        for name in ("sim_threshold", "lexical_sim_floor", "topic_sim_threshold"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"SimulatorConfig.{name}={getattr(self, name)} is a cosine: keep it in [-1, 1]"
                )
        for name in ("lexical_weight", "topic_bonus", "margin", "check_retries", "child_age"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimulatorConfig.{name}={getattr(self, name)} must be >= 0")

    def llm_config(self) -> LLMConfig:
        from m3.llm import LLMConfig

        return LLMConfig(
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            cache_path=self.cache_path,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            timeout_s=self.timeout_s,
            max_concurrency=self.max_concurrency,
            template_version="patient-sim-v1",  # bump with the prompt in simulator_llm
        )


@dataclass
class SimulatorStats:
    replies: int = 0
    gate_ends: int = 0
    llm_replies: int = 0  # LLM answers that passed the check
    llm_retries: int = 0  # re-asks after a failed check
    fallbacks: int = 0  # LLM turns answered offline (failed check twice, or endpoint error)


# --- question rules (both backends) --------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """A history topic: `question` fires it; it takes facts whose category is in `direct`, whose
    text matches `focus`, or whose category is in `soft` and whose cosine passes the topic threshold.
    A `strict` topic takes only facts of its `direct` categories that also match `focus`."""

    name: str
    question: re.Pattern
    focus: re.Pattern | None
    direct: frozenset[str] = frozenset()
    soft: frozenset[str] = frozenset()
    strict: bool = False

    def takes(self, fact: HistoryFact, sim: float, threshold: float) -> int | None:
        """None if the fact is off-topic, else how many cues it matches (ranking bonus)."""
        direct = fact.category in self.direct
        focus = self.focus is not None and bool(self.focus.search(fact.text))
        if self.strict:
            ok = direct and (self.focus is None or focus)
        else:
            ok = direct or focus or (fact.category in self.soft and sim >= threshold)
        return int(direct) + int(focus) if ok else None


def _rx(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.I)


_PRESENT = frozenset({"chief_complaint", "hpi", "symptom"})
_SOCIAL = frozenset({"social"})
TOPICS: tuple[Topic, ...] = (
    Topic("complaint", _rx(r"what brings you|what('s| is) the (problem|matter)|how can i help|what seems to be"
                           r"|why (are you|did you come) here|tell me (more )?about (your|the) (problem|symptoms?|complaint)"),
          None, direct=frozenset({"chief_complaint", "hpi"}), strict=True),
    Topic("timeline", _rx(r"\b(when did|how long|since when|start\w*|began|begin|onset|first notic\w*|duration)\b"),
          _rx(r"\b(\d+|one|two|three|four|five|six|seven|eight|several|few|ago|since|yesterday|today|tonight|morning"
              r"|evening|night|last|past|weeks?|months?|years?|days?|hours?|sudden\w*|gradual\w*|onset|began|started)\b"),
          direct=_PRESENT, strict=True),
    Topic("smoking", _rx(r"\b(smok\w*|cigar\w*|tobacco|vap(e|ing))\b"),
          _rx(r"\b(smok\w*|cigar\w*|tobacco|pack[- ]?years?|packs? (of|a|per))\b"), soft=_SOCIAL),
    Topic("alcohol", _rx(r"\b(alcohol\w*|drink\w*|beers?|wine|liquor|booze)\b"),
          _rx(r"\b(alcohol\w*|drink\w*|beers?|wine|liquor)\b"), soft=_SOCIAL),
    Topic("drugs", _rx(r"\b(recreational|illicit|street drugs?|cocaine|marijuana|cannabis|heroin|substances?)\b"),
          _rx(r"\b(drugs?|cocaine|marijuana|cannabis|heroin|ecstasy|substances?|illicit)\b"), soft=_SOCIAL),
    Topic("work", _rx(r"\b(work|job|occupation|for a living|employ\w*|profession)\b"),
          _rx(r"\b(works?|working|job|teacher|employ\w*|profession|student|retired|clerk|engineer|farmer|cashier)\b"),
          soft=_SOCIAL),
    Topic("home", _rx(r"\b(live with|living|at home|married|partners?|sexual\w*|relationship)\b"),
          _rx(r"\b(lives?|living|married|partners?|sexual\w*|husband|wife|condoms?|relationship)\b"), soft=_SOCIAL),
    Topic("travel", _rx(r"\b(travel\w*|trips?|abroad|been away)\b"),
          _rx(r"\b(travel\w*|trips?|visit\w*|returned|abroad|camping|immigrated)\b"), soft=_SOCIAL),
    Topic("family", _rx(r"\b(family|families|mother|father|parents?|siblings?|brothers?|sisters?|relatives?"
                        r"|runs? in|inherit\w*|genetic)\b"),
          # relatives, but not as the reporter of the history ("His mother reports that ...")
          _rx(r"\b(family|familial|genetic|hereditary)\b|\b(mother|father|brothers?|sisters?|siblings?|uncles?|aunts?"
              r"|grand(mother|father|parents?))\b(?!\s+(also\s+)?(reports?|notes?|mentions?|describes?|says?|states?"
              r"|recalls?|is concerned))"),
          direct=frozenset({"family"})),
    Topic("medication", _rx(r"\b(medications?|medicines?|meds|drugs do you|taking|take any|pills?|prescri\w*"
                            r"|supplements?|vitamins?|treatments?|treated)\b"),
          _rx(r"\b(medicat\w*|medicines?|tak(e|es|ing)|treated with|managed with|medicated|regimen|therapy"
              r"|prescri\w*|supplements?|vitamins?|insulin|inhaler)\b|\bon (oral |a low dose of )?\w+ (for|since)\b"),
          direct=frozenset({"medication"})),
    Topic("allergy", _rx(r"\ballerg\w*"), _rx(r"\b(allerg\w*|anaphyla\w*)"), direct=frozenset({"allergy"})),
    Topic("past", _rx(r"\b(past medical|medical (history|problems?|conditions?|issues?)|health (problems?|conditions?|issues?)"
                      r"|chronic (illness|disease|condition)s?|other (illness|disease|condition)s?|been (seriously )?ill"
                      r"|any (illness|disease|condition)s?|diagnosed with anything|in the past)\b"),
          _rx(r"\b(previous\w*|prior|diagnosed|past medical)\b"), direct=frozenset({"past_medical"})),
    Topic("surgery", _rx(r"\b(surger\w*|operations?|operated|hospitali\w*|admitted)\b"),
          _rx(r"\b(surger\w*|surgical|operations?|\w+ectomy|\w+plasty|\w+otomy|hospitali\w*|admitted)\b"),
          soft=frozenset({"past_medical"})),
    Topic("before", _rx(r"\b(happened|had (this|it|anything like this)|felt like this|this) before\b|\b(first time|ever happened)\b"),
          _rx(r"\b(previous\w*|prior|before|similar|first|never)\b")),
    Topic("belief", _rx(r"what do you think|any idea (what|why)|what('s| is) (wrong|causing|going on)"
                        r"|why do you think|do you know what"),
          _rx(r"\b(believes?|thinks?|attribut\w*|blames?)\b|as a (possible )?cause")),
)  # fmt: skip

_EXAM_Q = _rx(
    r"\b(examine|examination|physical exam|auscultat\w*|palpat\w*|listen to your|let me (look|check|feel)"
    r"|vital signs|what('s| is| was) your (blood pressure|pulse|heart rate|temperature|oxygen|weight|bmi)"
    r"|(take|check|measure) your (blood pressure|pulse|temperature|vitals))\b"
)
_TEST_WORDS = (
    r"tests?|testing|results?|labs?|laboratory|blood ?work|scans?|x-?rays?|mri|ct|ultrasound|biops(y|ies)"
    r"|ecg|ekg|echocardiogram|cultures?|imaging|urinalysis"
)
_TEST_Q = _rx(
    rf"\b({_TEST_WORDS})\b.*\b(show\w*|came back|reveal\w*|find|found|say|said|results?)\b"
    rf"|\b(what|any|which)\b.*\b({_TEST_WORDS})\b|\b(order|run|do|get|check)\b.*\b({_TEST_WORDS})\b"
)
_AGE_Q = _rx(r"\bhow old\b|\byour age\b|\bwhat age\b")
_NOTHING_ELSE_Q = _rx(
    r"^\W*(anything|something) else\b|\bany(thing)? (else|other (symptoms?|concerns?|problems?|complaints?))\b"
    r"|\bis there anything else\b"
)


@dataclass
class Intent:
    kind: str  # "exam" | "test" | "nothing_else" | "age" | "history"
    topics: list[Topic] = field(default_factory=list)


def classify(question: str) -> Intent:
    """What the doctor asks for: an exam, a test result, "anything else", the age, or history (with topics)."""
    if _AGE_Q.search(question):
        return Intent("age")
    if _EXAM_Q.search(question):
        return Intent("exam")
    if _TEST_Q.search(question):
        return Intent("test")
    if _NOTHING_ELSE_Q.search(question):
        return Intent("nothing_else")
    return Intent("history", [t for t in TOPICS if t.question.search(question)])


# --- interruptions (shown to the doctor only; m3.clinic.episode injects them) ---------------------

INTERRUPTIONS = (
    "Sorry, doctor, I just read online that this could be cancer. Is it cancer?",
    "Wait, doctor, before you go on, I'm really scared. Is this something serious?",
    "Sorry to interrupt, but my neighbour had something like this and ended up in hospital. Will I have to stay in hospital?",
    "Doctor, I'm sorry, I can't stop worrying. Am I going to die from this?",
    "Excuse me, doctor, I have to get back to work soon. Can't you just give me something for it now?",
    "Sorry, I keep thinking about my family. Is this contagious? Could they catch it from me?",
    "Doctor, I'm terrified of needles. Will I need injections or blood tests?",
    "Sorry, doctor, my friend says I should just take antibiotics. Should I?",
    "I'm sorry, I'm so anxious about all this. Will I ever get back to normal?",
    "Doctor, is this my fault? Did I do something to cause this?",
)
PARENT_INTERRUPTIONS = (
    "Sorry, doctor, I read online that this could be cancer. Does my child have cancer?",
    "Wait, doctor, I'm really frightened. Is my child going to be okay?",
    "Sorry to interrupt, but is this serious? Will my child have to stay in hospital?",
    "Doctor, I'm so worried. Did I do something wrong as a parent?",
    "Excuse me, doctor, could this spread to my other children? Is it contagious?",
    "Sorry, doctor, my mother says we should just wait and see. Should we just wait?",
    "Doctor, my child is terrified of needles. Will there have to be injections?",
    "I'm sorry, I haven't slept for days. Will this affect how my child grows up?",
)


# --- persona and opening ------------------------------------------------------------------------


def persona_of(case: ClinicalCase, child_age: int) -> str:
    """PERSONA_SELF, or "child:<sex>" when a parent speaks for a child younger than `child_age`."""
    age = case.demographics.age
    if age is not None and age < child_age:
        return f"child:{case.demographics.sex or 'unknown'}"
    return PERSONA_SELF


def opening_text(case: ClinicalCase, persona: str) -> str:
    """The first-person chief complaint statement."""
    cc = re.sub(r"^(?:the )?presence of\s+", "", case.chief_complaint.strip().rstrip("."), flags=re.I)
    if not cc:
        return "Hello, doctor. I haven't been feeling well."
    cc = lower_first(cc)
    if persona == PERSONA_SELF:
        return f"Hello, doctor. I'm here because of {cc}."
    baby = case.demographics.age == 0
    who = {"male": "son", "female": "daughter"}.get(persona.split(":", 1)[1], "baby" if baby else "child")
    who = f"baby {who}" if baby and who != "baby" else who
    return f"Hello, doctor. I'm here with my {who} because of {cc}."


def age_text(case: ClinicalCase, persona: str) -> str:
    """The age as the case's demographics state it ("I'm a 35-year-old female.")."""
    text = case.demographics.text.strip().rstrip(".")
    if not text:
        return dont_know("how old")
    article = "an" if text[0].lower() in "aeiou8" or text.startswith(("11", "18")) else "a"
    if persona == PERSONA_SELF:
        return f"I'm {article} {lower_first(text)}."
    child = {"male": "My son", "female": "My daughter"}.get(persona.split(":", 1)[1], "My child")
    return f"{child} is {article} {lower_first(text)}."


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
        from m3.embeddings import embed

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
