"""The deterministic patient: first-person rewriting of case facts and fact retrieval (MiniLM + lexical).

Used by `m3.clinic.simulator.PatientSimulator` (backend "offline", and as the fallback of the LLM
backend); the question rules (topics, exam/test requests) live in that module, the termination gate
in `m3.clinic.simulator_llm`.
Nothing here needs a network or an LLM, only the bundled MiniLM (`m3.embeddings`).

    from m3.clinic.simulator_offline import CaseIndex, first_person, retrieve, PERSONA_SELF
    first_person("She denies any recent trauma.", PERSONA_SELF)   # "I haven't had any recent trauma."
    first_person("Non-smoker, drinks wine occasionally.", PERSONA_SELF)
    # "I am a non-smoker, I drink wine occasionally."
    index = CaseIndex(case)                 # facts, keywords, embeddings (computed on first use)
    retrieve(index, "Do you smoke?", topics, cfg)   # [HistoryFact('h8', 'social', ...)]

Retrieval (`retrieve`): with topics (from the question rules), a fact is a candidate when a topic
takes it (`Topic.takes`: its category, its words, or its category plus MiniLM cosine); without
topics, when its cosine to the question passes `sim_threshold`, or it shares a content word with
the question and passes `lexical_sim_floor`. Candidates are ranked by cosine + lexical bonus (+ topic
bonus); the best `max_facts` are kept (without topics only those within `margin` of the best), in
checklist order. Facts that describe what an examiner saw ("Physical examination shows ...",
"appears anxious") are never said: the patient cannot know them.

Persona (`m3.clinic.simulator.persona_of`): adults speak for themselves (PERSONA_SELF: "I've had
..."); for children under `child_age` a parent speaks ("child:male": "My son has ..."). `first_person` is a small set of regular
expressions: grammatical enough for a simulator, deterministic, and it keeps every content word and
every negation of the fact, which the factual check (`m3.clinic.simulator_llm.check_reply`) relies on.

Limits: English only; the rewrite leaves some fragments stilted ("I have improvement of symptoms
after rest") and keeps the case's medical words ("I have diplopia"): patients in these cases talk
like their case notes. A child's case written from the mother's view may keep a stray "she".
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from m3.text import keywords

if TYPE_CHECKING:
    from m3.clinic.cases import ClinicalCase, HistoryFact
    from m3.clinic.simulator import SimulatorConfig, Topic

PERSONA_SELF = "self"

# --- canned replies (none may contain medical content: they are said for every case) -------------
DONT_KNOW = ("I'm not sure, doctor.", "I don't know, doctor.", "I'm not sure about that, I don't really know.")  # fmt: skip
EXAM_REPLY = "You'd have to examine me for that, doctor."
TEST_REPLY = "You'd have to test me for that, doctor. I don't know any results."
NOTHING_ELSE = "Not that I can think of, doctor."
REPEAT_PREFIX = "As I said, "

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


def dont_know(question: str) -> str:
    """One of DONT_KNOW, chosen by a stable hash of the question (not `hash`, which is salted)."""
    return DONT_KNOW[zlib.crc32(question.strip().lower().encode()) % len(DONT_KNOW)]


def lower_first(text: str) -> str:
    """Lowercase the first letter ("No fever." -> "no fever."), but not of "I" or an acronym ("AIDS")."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


# --- first-person rewrite ------------------------------------------------------------------------

_ADVERBS = (
    r"(?:(?:also|currently|initially|recently|occasionally|then|often|still|now|later|previously|frequently"
    r"|additionally|subsequently|never|just|always|sometimes|only|further|first|otherwise|generally)\s+)*"
)
_REPORT_VERBS = r"reports?|complains? of|endorses?"
_SAY_VERBS = r"reports?|describes?|mentions?|notes?|states?|endorses?|admits?(?: to)?|recalls?|cites?|complains? of|reveals?"
# Occupations written as bare nouns ("Elementary school teacher.") -> "I am an elementary school teacher."
_JOBS = (
    r"retired|college|high school|elementary|student|engineer|farmer|teacher|nurse|clerk|cashier|accountant"
)
_GERUND_START = r"taking|using|experiencing|having|feeling|living|working|seeing|receiving|attending|trying"
_STATE_START = (
    r"healthy|well|unwell|alert|active|asymptomatic|up[- ]to[- ]date|fully immunized|otherwise healthy"
)
_NO_STRIP = frozenset(
    "was has is does as always sometimes perhaps thus this its yes besides towards afterwards".split()
)
_IRREGULAR = {
    "has": "have",
    "is": "am",
    "does": "do",
    "doesn't": "don't",
    "isn't": "am not",
    "hasn't": "haven't",
}
_VERB3S = (
    r"denies|reports|works|drinks|smokes|has|is|lives|attends|consumes|complains|describes|mentions|notes"
    r"|takes|enjoys|performs|shows|admits|experiences|uses|plays|dresses|stays|exercises|eats|sleeps|feels"
    r"|recalls|endorses|states|presents|wears|abstains|does|seeks|avoids|comments|engages|spends"
)
_PASSIVE_START = (
    r"born|delivered|diagnosed|treated|admitted|hospitali[sz]ed|brought|managed|medicated|enrolled"
)
_PAST_START = (
    r"underwent|stopped|started|had|was|returned|traveled|travelled|went|quit|completed|received|took"
    r"|developed|noticed|experienced|immigrated|met|moved|joined|tried|began|regained"
)


def _conjugate(verb: str) -> str:
    """Third-person singular -> first person ("takes" -> "take", "has" -> "have", "carries" -> "carry")."""
    low = verb.lower()
    if low in _IRREGULAR:
        return _IRREGULAR[low]
    if low in _NO_STRIP or not low.endswith("s") or low.endswith(("ss", "us", "is")):
        return verb
    if low.endswith("ies"):
        return verb[:-3] + "y"
    if low.endswith(("shes", "ches", "xes", "sses")):
        return verb[:-2]
    return verb[:-1]


def _self_verb(rest: str) -> str:
    """First-person form of "<verb phrase>" whose subject was the patient."""
    rules: tuple[tuple[str, str | Callable[[re.Match], str]], ...] = (
        (r"^denies (?:having |experiencing )(any )?", lambda m: f"haven't had {m.group(1) or ''}"),
        (r"^denies (\w+ing)\b", lambda m: f"haven't been {m.group(1)}"),
        (r"^denies (?:any history of )?(any )?", lambda m: f"haven't had {m.group(1) or ''}"),
        (r"^(?:does|did) not report (any )?", lambda m: f"haven't had {m.group(1) or ''}"),
        (rf"^(?:{_SAY_VERBS}) that ", ""),  # the reported clause keeps its own subject
        (rf"^(?:{_SAY_VERBS}) being ", "was "),
        (rf"^(?:{_SAY_VERBS}) (\w+ing)\b", lambda m: f"have been {m.group(1)}"),
        (rf"^(?:{_REPORT_VERBS}) ", "have had "),
        (r"^presents? (?:with|for) ", "have "),
        (r"^presents? to ", "came to "),
        (r"^(\w+)", lambda m: _conjugate(m.group(1))),
    )
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, rest, count=1, flags=re.I)
        if n:
            return new
    return rest


_SELF_SUBJECT = re.compile(
    rf"\b(?:the patient|this patient|patient|she|he)\s+({_ADVERBS})((?:{_VERB3S}|was|had|did|will|would|can|could"
    rf"|may|might|should|must|\w+ed|hasn't|doesn't|isn't|wasn't|didn't|{_SAY_VERBS})\b.*)",
    re.I,
)


def _self_subjects(text: str) -> str:
    """Every "<patient|she|he> <verb> ..." becomes "I <first-person verb> ..."; each pass removes one
    third-person subject, so the loop ends."""
    while m := _SELF_SUBJECT.search(text):
        said_that = re.match(rf"(?:{_SAY_VERBS}) that ", m.group(2), re.I)
        text = text[: m.start()] + ("" if said_that else "I ") + m.group(1) + _self_verb(m.group(2))
    return text


def _continuations(text: str) -> str:
    """Subject-less verbs after a comma or conjunction: "Non-smoker, drinks wine" -> "..., I drink wine"."""
    while m := _CONTINUATION.search(text):
        rest = text[m.end(1) :]
        said_that = re.match(rf"(?:{_SAY_VERBS}) that ", rest, re.I)  # the clause brings its own subject
        text = text[: m.end(1)] + ("" if said_that else "I ") + _self_verb(rest)
    return text


def _pronouns_self(text: str) -> str:
    text = re.sub(r"\b(the patient|patient)\b(’s|'s)?", _patient_ref, text, flags=re.I)
    text = re.sub(r"\b(she's|he's)\b", "I'm", text, flags=re.I)
    text = re.sub(r"\b(himself|herself)\b", "myself", text, flags=re.I)
    text = re.sub(r"\bhis\b", "my", text, flags=re.I)
    text = re.sub(r"\bhim\b", "me", text, flags=re.I)
    # "her" before a noun is possessive ("her hair" -> "my hair"), otherwise an object ("told her")
    text = re.sub(r"\bher\b(?=\s+(?!(?:to|for|with|and|or|in|on|at|from|by|that|the|a|an|she|he|i|it|they|we|you|was|is|up|down|off|out|back|again|now|as)\b)[a-z])",
                  "my", text, flags=re.I)  # fmt: skip
    text = re.sub(r"\bher\b", "me", text, flags=re.I)
    return re.sub(r"\b(she|he)\b", "I", text, flags=re.I)


def _patient_ref(m: re.Match) -> str:
    return "my" if m.group(2) else "I"


def _child_noun(persona: str) -> str:
    return {"male": "my son", "female": "my daughter"}.get(persona.split(":", 1)[1], "my child")


def _rewrite_child(text: str, persona: str) -> str:
    """A parent speaking about the child: the child stays third person, reporters become "I"."""
    child = _child_noun(persona)
    reporter = (
        r"^(?:the |his |her |their )?(?:(?:patient|child|newborn|infant|baby)(?:'s|’s) )?"
        r"(?:mother|father|parents?|mom|dad)\s+(?:also\s+)?(reports?|notes?|mentions?|describes?|says?|states?|recalls?)\s+"
    )
    text = re.sub(reporter + r"that\s+", "", text, flags=re.I)
    # the parent is the speaker: "The mother had an uneventful pregnancy" -> "I had ..."
    text = re.sub(
        r"\b(?:the |his |her )?(?:(?:patient|child|infant|newborn|baby)(?:'s|’s) )?mother\s+"
        r"(?=(?:had|has|was|took|missed|received|used|smoked|drank|did|does)\b)", "I ", text, flags=re.I,
    )  # fmt: skip
    text = re.sub(reporter, lambda m: f"I {_conjugate(m.group(1))} ", text, flags=re.I)
    text = re.sub(r"\b(?:her|his|their) (?:child|baby|infant|newborn)\b", child, text, flags=re.I)
    text = re.sub(r"\bthe (?:patient|child|infant|newborn|baby|boy|girl)(’s|'s)?", lambda m: child + (m.group(1) or ""),
                  text, flags=re.I)  # fmt: skip
    return re.sub(r"^patient(’s|'s)?\b", lambda m: child + (m.group(1) or ""), text, flags=re.I)


def _fragment(text: str, persona: str, category: str = "") -> str:
    """Give a subject to a fact written without one ("Works as a teacher.", "Difficulty climbing stairs")."""
    child = persona != PERSONA_SELF
    subj = {"male": "He", "female": "She"}.get(persona.split(":", 1)[-1], "My child") if child else "I"
    adv = re.match(_ADVERBS, text, re.I)
    head = text[adv.end() if adv else 0 :]
    lead = text[: len(text) - len(head)].lower()
    if re.match(r"(?:non-?smoker|smoker|ex-?smoker|former smoker|current smoker)\b", head, re.I):
        return f"{'He is' if child else 'I am'} a {lead}{lower_first(head)}"
    if child and re.match(r"denies\b", head, re.I):
        return f"{subj} {lead}hasn't had{head[6:]}"
    if re.match(rf"(?:{_VERB3S})\b", head, re.I):
        head = f"{lead}{head[:1].lower()}{head[1:]}"
        return f"{subj} {head}" if child else _self_subjects(f"She {head}")
    be_now = "is" if child else "am"
    if re.match(rf"(?:being|{_GERUND_START}|{_STATE_START})\b", head, re.I):
        return f"{subj} {be_now} {lead}{lower_first(head)}"
    if re.match(rf"(?:{_PASSIVE_START})\b", head, re.I):
        return f"{subj} {be_now if 'currently' in lead else 'was'} {lead}{lower_first(head)}"
    if re.match(rf"(?:{_PAST_START})\b", head, re.I):
        return f"{subj} {lead}{head[:1].lower()}{head[1:]}"
    if re.match(r"(?:no|not|none|never|nothing|negative|unremarkable)\b", text, re.I):
        return text
    if not child and re.match(rf"(?:{_JOBS})\b", text, re.I):
        return f"I am {'an' if text[0].lower() in 'aeiou' else 'a'} {lower_first(text)}"
    text = re.sub(r"^(?:the )?presence of\s+", "", text, flags=re.I)
    if re.search(r"\b(is|are|was|were|has|have|had|do|does|did|reports?|reported)\b|:", text, re.I):
        return text
    if category == "medication":
        return f"{subj} {'takes' if child else 'take'} {lower_first(text)}"
    return f"{subj} {'has' if child else 'have'} {lower_first(text)}"


_CONTINUATION = re.compile(rf"(,\s+|;\s+|\band\s+|\bbut\s+)(?=(?:{_VERB3S})\b)", re.I)
_SECTION = re.compile(r"^(?:general|ent|heent|neurological|cardiovascular|respiratory|other|gi|gu|skin|psychiatric"
                      r"|musculoskeletal|substance use|interests):\s*", re.I)  # fmt: skip
_REPORTER_SELF = re.compile(r"^(?:the )?patient(’s|'s)\s+(?=\w+\s+(?:reports?|notes?|mentions?|says?))", re.I)
_FRAGMENT_START = re.compile(
    rf"(?:{_VERB3S}|{_PASSIVE_START}|{_PAST_START}|being|{_GERUND_START}|{_STATE_START})\b", re.I
)
_STARTS_WITH_SUBJECT = re.compile(r"^(?:I|my|he|she|they|the|this|these|his|her|their|our|we)\b", re.I)


def first_person(text: str, persona: str, category: str = "") -> str:
    """`text` (a case fact, written by an examiner) as the patient (or the child's parent) says it;
    `category` (the fact's) only changes bare medication names ("Insulin" -> "I take insulin")."""
    text = _SECTION.sub("", text.strip().rstrip("."))  # "General: Denies fever" -> "Denies fever"
    if not text:
        return ""
    if persona == PERSONA_SELF:
        text = _REPORTER_SELF.sub("my ", text)  # "The patient's husband reports" -> "my husband reports"
        fragment = _FRAGMENT_START.match(text[re.match(_ADVERBS, text, re.I).end() :])
        has_subject = not fragment and (_SELF_SUBJECT.search(text) or _STARTS_WITH_SUBJECT.match(text))
        text = _self_subjects(text) if has_subject else _fragment(text, persona, category)
        text = _pronouns_self(text)
        if re.match(r"I\b", text):  # the patient is the subject: "..., drinks wine" continues it
            text = _continuations(text)
        # a verb left in the third person ("she believes" -> "I believes") -> "I believe"
        text = re.sub(r"\bI ([a-z]+s)\b", lambda m: "I " + _conjugate(m.group(1)), text)
    else:
        text = _rewrite_child(text, persona)
        if not (_STARTS_WITH_SUBJECT.match(text) or re.match(r"^(?:he|she|my|i)\b", text, re.I)):
            text = _fragment(text, persona, category)
    text = re.sub(r"\bi\b", "I", text)
    text = re.sub(r"\s+", " ", text).strip(" ,;")
    return text[0].upper() + text[1:] + "."


# Words the rewrite and the canned replies add on their own: the factual check must not count
# them as content the patient volunteered.
PERSONA_VOCAB = frozenset(
    keywords(" ".join((*DONT_KNOW, EXAM_REPLY, TEST_REPLY, NOTHING_ELSE, REPEAT_PREFIX)))
    + keywords("hello doctor I'm here because of I've I'd haven't had am my son daughter child baby said")
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
            from m3.embeddings import embed

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
    from m3.embeddings import embed

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
