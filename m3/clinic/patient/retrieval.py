"""Which case facts answer a question: MiniLM similarity + shared words + topic cues.

    from m3.clinic.patient.retrieval import CaseIndex, retrieve
    index = CaseIndex(case)                 # facts, keywords, embeddings (computed on first use)
    retrieve(index, "Do you smoke?", topics, cfg)   # [HistoryFact('h8', 'social', ...)]

With topics (from the question rules), a fact is a candidate when a topic takes it (`Topic.takes`:
its category, its words, or its category plus MiniLM cosine); without topics, when its cosine to the
question passes `sim_threshold`, or it shares a content word with the question and passes
`lexical_sim_floor`. Candidates are ranked by cosine + lexical bonus (+ topic bonus); the best
`max_facts` are kept (without topics only those within `margin` of the best), in checklist order.
Facts that describe what an examiner saw ("Physical examination shows ...", "appears anxious") are
never said: the patient cannot know them. Nothing here needs a network or an LLM, only the bundled
MiniLM (`m3.text.embeddings`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from m3.clinic.patient.persona import REPEAT_PREFIX, first_person, lower_first
from m3.text.lexical import keywords

if TYPE_CHECKING:
    from m3.clinic.cases import ClinicalCase, HistoryFact
    from m3.clinic.patient.config import SimulatorConfig
    from m3.clinic.patient.questions import Topic

_FILLER = frozenset(
    keywords(
        "notice noticed experience experiencing feel feeling symptom symptoms problem problems issue tell "
        "describe doctor ever currently current today now lately recent recently long any kind happen happened "
        "okay ok well"
    )
)
# Lay words the doctor may use for the case's medical words; MiniLM covers the rest.
_LAY_WORDS = {
    "tired": ("fatigu",), "throw": ("vomit",), "breath": ("dyspnea", "breathing"), "pee": ("urin",),
    "dizzy": ("dizziness", "vertigo"), "poop": ("stool", "bowel"), "bleed": ("blood", "bloody"),
    "blood": ("bleed", "bloody"), "sweat": ("sweats",), "sick": ("nausea", "vomit"), "hurt": ("pain", "painful"),
    "ache": ("pain",), "sore": ("pain",), "lost": ("loss",), "lose": ("loss",),
    "better": ("improv", "reliev", "alleviat"), "worse": ("worsen", "exacerbat"),
}  # fmt: skip
_SYNONYMS = {keywords(word)[0]: alts for word, alts in _LAY_WORDS.items()}  # keyed by stem ("tired" -> "tir")
# Facts an examiner observed, not something the patient could say.
_OBSERVED = re.compile(
    r"\b(physical exam\w*|exam\w* (shows?|reveal\w*)|upon examination|on examination|auscultation|heard (at|over)"
    r"|appears|presents as|is noted|noted to be|shows signs|vital signs|oriented to|exhibits|pulse is"
    r"|respirations are|temperature of)\b",
    re.I,
)


# --- retrieval -----------------------------------------------------------------------------------


def same_word(a: str, b: str) -> bool:
    """Keyword match: equal, or one a prefix of the other ("smok" / "smoker", "pain" / "painful")."""
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 4 and long_.startswith(short)


class CaseIndex:
    """Per-case retrieval data: speakable facts, their keywords and (lazily) their embeddings."""

    def __init__(self, case: ClinicalCase) -> None:
        self.case = case
        self.facts: list[HistoryFact] = list(case.history)
        self.keywords = [set(keywords(f.text)) for f in self.facts]
        self.speakable = [f.category == "chief_complaint" or not _OBSERVED.search(f.text) for f in self.facts]
        self._vectors: np.ndarray | None = None

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            from m3.text.embeddings import embed

            self._vectors = embed([f.text for f in self.facts])
        return self._vectors


_ANAPHORA = re.compile(r"\b(this|it|these|those|that|the (symptoms?|problems?|pain|complaint))\b", re.I)


def _question_keywords(question: str) -> list[frozenset[str]]:
    """One group per content word of the question: the word and its lay-to-medical synonyms."""
    return [frozenset((k, *_SYNONYMS.get(k, ()))) for k in keywords(question) if k not in _FILLER]


def retrieve(
    index: CaseIndex,
    question: str,
    topics: list[Topic],
    cfg: SimulatorConfig,
    disclosed: frozenset[str] = frozenset(),
) -> list[HistoryFact]:
    """The facts that answer `question` (at most cfg.max_facts, in checklist order); [] if none.
    For a topic question, facts not yet `disclosed` come first, so "Any other medications?" moves on."""
    from m3.text.embeddings import embed

    if not index.facts:
        return []
    sims = index.vectors @ embed([question])[0]
    q_words = _question_keywords(question)
    cc = [i for i, f in enumerate(index.facts) if f.category == "chief_complaint"]
    if cc and any(t.name == "timeline" for t in topics) and _ANAPHORA.search(question):
        # "When did this start?": "this" is the complaint, so facts about it rank first (no new encode)
        sims = (sims + index.vectors @ index.vectors[cc[0]]) / 2
        q_words += [frozenset({w}) for w in index.keywords[cc[0]]]
    scored: list[tuple[float, int]] = []
    for i, fact in enumerate(index.facts):
        if not index.speakable[i]:
            continue
        sim = float(sims[i])
        hits = sum(1 for group in q_words if any(same_word(q, w) for q in group for w in index.keywords[i]))
        score = sim + cfg.lexical_weight * (hits / len(q_words) if q_words else 0.0)
        if topics:
            bonus = [t.takes(fact, sim, cfg.topic_sim_threshold) for t in topics]
            if any(b is not None for b in bonus):
                scored.append((score + cfg.topic_bonus * max(b for b in bonus if b is not None), i))
        # the lexical path needs most question words: "chest pain" is not answered by "abdominal pain"
        elif sim >= cfg.sim_threshold or (hits * 3 >= 2 * len(q_words) > 0 and sim >= cfg.lexical_sim_floor):
            scored.append((score, i))
    if not scored:
        return []
    # ties -> checklist order, so the choice is deterministic
    scored.sort(key=lambda p: (bool(topics) and index.facts[p[1]].id in disclosed, -p[0], p[1]))
    best = max(s for s, _ in scored)
    keep = [i for s, i in scored[: cfg.max_facts] if topics or s >= best - cfg.margin]
    return [index.facts[i] for i in sorted(keep)]


def say_facts(facts: list[HistoryFact], persona: str, disclosed: set[str]) -> str:
    """The reply that discloses `facts`; "As I said, ..." when every one of them was said before."""
    text = " ".join(first_person(f.text, persona, f.category) for f in facts)
    if facts and all(f.id in disclosed for f in facts):
        text = REPEAT_PREFIX + lower_first(text)
    return text
