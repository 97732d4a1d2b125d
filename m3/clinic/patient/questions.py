"""The question rules both backends apply first: what the doctor asks for.

    from m3.clinic.patient.questions import classify
    classify("Do you smoke?")                 # Intent("history", [Topic("smoking", ...)])
    classify("Let me listen to your chest.")  # Intent("exam")

A history question fires the TOPICS whose question pattern matches; a topic decides which case facts
it takes (`Topic.takes`). Requests to examine or test, "anything else?" and the age have their own
intents. Limits: English keyword lists, so an unusual phrasing can miss a topic (retrieval then falls
back to similarity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m3.clinic.cases import HistoryFact


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
