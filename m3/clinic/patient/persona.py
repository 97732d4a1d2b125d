"""Who speaks and how: the persona, canned replies, the first-person rewrite, opening and interruptions.

    from m3.clinic.patient.persona import first_person, persona_of, PERSONA_SELF
    first_person("She denies any recent trauma.", PERSONA_SELF)   # "I haven't had any recent trauma."
    first_person("Non-smoker, drinks wine occasionally.", PERSONA_SELF)
    # "I am a non-smoker, I drink wine occasionally."

Persona (`persona_of`): adults speak for themselves (PERSONA_SELF: "I've had ..."); for children
under `child_age` a parent speaks ("child:male": "My son has ..."). `first_person` is a small set of
regular expressions: grammatical enough for a simulator, deterministic, and it keeps every content
word and every negation of the fact, which the factual check (`m3.clinic.patient.guards.check_reply`)
relies on. Interruption snippets (INTERRUPTIONS, PARENT_INTERRUPTIONS) are shown to the doctor only;
`m3.clinic.episode` injects them.

Limits: English only; the rewrite leaves some fragments stilted ("I have improvement of symptoms
after rest") and keeps the case's medical words ("I have diplopia"): patients in these cases talk
like their case notes. A child's case written from the mother's view may keep a stray "she".
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from m3.text.lexical import keywords

if TYPE_CHECKING:
    from m3.clinic.cases import ClinicalCase

PERSONA_SELF = "self"

# --- canned replies (none may contain medical content: they are said for every case) -------------
DONT_KNOW = ("I'm not sure, doctor.", "I don't know, doctor.", "I'm not sure about that, I don't really know.")  # fmt: skip
EXAM_REPLY = "You'd have to examine me for that, doctor."
TEST_REPLY = "You'd have to test me for that, doctor. I don't know any results."
NOTHING_ELSE = "Not that I can think of, doctor."
REPEAT_PREFIX = "As I said, "


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
